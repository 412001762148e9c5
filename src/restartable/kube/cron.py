"""A CronJob's schedule and time zone, checked as the API server and the controller do.

The schema types ``schedule`` and ``timeZone`` as plain strings, so a typo is accepted
by ``kubectl apply --dry-run=client`` and fails only at the API server, or worse, never
fires. ``check_schedule`` accepts what the CronJob controller's parser (robfig/cron's
standard parser) accepts, minus what Kubernetes refuses on top:

* five fields (minute hour day-of-month month day-of-week), each a comma list of ``*``,
  ``?``, ``N`` or ``N-M``, optionally ``/STEP``, with month and weekday names
  (``JAN``..``DEC``, ``SUN``..``SAT``); or one of the macros ``@yearly``, ``@annually``,
  ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``, ``@hourly``;
* no ``TZ=`` or ``CRON_TZ=`` prefix: Kubernetes refuses it since 1.27 in favour of
  ``spec.timeZone``.

``check_time_zone`` wants an IANA name (``Europe/Paris``): the controller loads it with
Go's ``time.LoadLocation``, which knows no ``Local`` meaning the node's zone.
"""

from __future__ import annotations

import re

from ..errors import UsageError

__all__ = ["MACROS", "check_schedule", "check_time_zone"]

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))
_NAMES = {
    3: {
        m: i + 1
        for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
    },
    4: {d: i for i, d in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))},
}
_EXAMPLE = "use 5 fields such as '30 2 * * *' (02:30 every day) or a macro such as @daily"


def _value(text: str, index: int) -> int:
    _name, low, high = _FIELDS[index]
    names = _NAMES.get(index, {})
    if text.lower() in names:
        return names[text.lower()]
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"{text!r} is not a number{' or a name' if names else ''}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _check_field(text: str, index: int) -> None:
    for part in text.split(","):
        rng, slash, step = part.partition("/")
        if slash and (not step.isdigit() or not step.isascii() or int(step) < 1):
            raise ValueError(f"the step in {part!r} must be a positive number")
        if rng in ("*", "?"):
            continue
        start, dash, end = rng.partition("-")
        first = _value(start, index)
        if dash:
            if _value(end, index) < first:
                raise ValueError(f"the range {rng!r} ends before it begins")


def check_schedule(schedule: str) -> str:
    """``schedule`` stripped, or UsageError saying what is wrong with it and how to write it."""
    text = " ".join(str(schedule).split())
    if not text:
        raise UsageError(f"empty --schedule: {_EXAMPLE}")
    if re.match(r"(CRON_)?TZ=", text):
        raise UsageError(
            f"invalid --schedule {schedule!r}: Kubernetes refuses TZ= and CRON_TZ= in a schedule; "
            "give the zone with --time-zone (spec.timeZone) instead"
        )
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise UsageError(f"invalid --schedule {schedule!r}: the macros are {', '.join(MACROS)}")
        return text.lower()
    fields = text.split(" ")
    if len(fields) != 5:
        raise UsageError(
            f"invalid --schedule {schedule!r}: {len(fields)} fields, {_EXAMPLE} (minute hour "
            "day-of-month month day-of-week; Kubernetes has no seconds field)"
        )
    for i, field in enumerate(fields):
        try:
            _check_field(field, i)
        except ValueError as exc:
            raise UsageError(f"invalid --schedule {schedule!r}: {_FIELDS[i][0]} field {field!r}: {exc}") from None
    return text


def check_time_zone(zone: str) -> str:
    """``zone`` if it is an IANA time zone name this machine knows, else UsageError."""
    import zoneinfo

    if str(zone).lower() in ("local", "localtime") or not zone:
        raise UsageError(
            f"invalid --time-zone {zone!r}: give an explicit IANA name such as Europe/Paris or "
            "Etc/UTC (the controller's 'Local' is whatever zone the node runs in)"
        )
    known = zoneinfo.available_timezones()
    if not known:
        raise UsageError("cannot check --time-zone: this machine has no time zone database; pip install tzdata")
    if zone not in known:
        close = sorted(z for z in known if z.lower() == zone.lower())
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UsageError(
            f"unknown --time-zone {zone!r}{hint}: use an IANA name such as America/New_York, as "
            "listed in the tz database"
        )
    return zone
