"""Store URLs: parsing, options in the query string, redaction, durations."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigError

__all__ = ["StoreURL", "parse_store_url", "redact", "parse_duration"]


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.

    ``options`` holds restartable's own query-string options, already removed from
    ``driver_url`` (the URL a driver may see). ``display`` is the URL with any
    password replaced by ``***``: the only form that may be printed.
    """

    scheme: str
    raw: str
    driver_url: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return redact(self.raw)


def parse_store_url(url: str, *, known_options: frozenset[str] = frozenset()) -> StoreURL:
    """Split ``url`` into scheme, driver URL and restartable's options.

    Options named in ``known_options`` are taken out of the query string; the rest
    stays for the driver. A URL without a scheme is refused with the accepted forms.
    """
    if not isinstance(url, str) or "://" not in url and not url.startswith("file:"):
        raise ConfigError(
            f"invalid store URL {redact(str(url))!r}: use sqlite:///path/to.db, file:///abs/dir, "
            "file:rel/dir, postgresql://user@host/db, redis://host:6379/0 or memory://"
        )
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # libpq's multi-host URLs have several ports
            parts.port  # noqa: B018 - validates the port and brackets now, not in a driver
    except ValueError as exc:
        raise ConfigError(f"invalid store URL {redact(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in known_options:
            ours[key] = value
        else:
            theirs.append((key, value))
    driver_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), parts.fragment))
    return StoreURL(scheme=scheme, raw=url, driver_url=driver_url, options=ours)


_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@?#]*:)(?P<pw>[^@/?#]*)(?=@)", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token)=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """Return ``url`` with any password (in the userinfo or the query) replaced by ``***``."""
    url = _PASSWORD.sub(lambda m: m.group("head") + "***", url)
    return _QUERY_SECRET.sub(lambda m: m.group("head") + "***", url)


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", re.IGNORECASE)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: str | float | int, what: str = "duration") -> float:
    """Seconds from ``7d``, ``12h``, ``30m``, ``45s``, ``250ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"invalid {what} {value!r}: use a number of seconds or 30s, 10m, 12h, 7d")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"invalid {what} {value!r}: it must not be negative")
        return float(value)
    m = _DURATION.fullmatch(str(value))
    if not m:
        raise ConfigError(f"invalid {what} {value!r}: use a number of seconds or 30s, 10m, 12h, 7d")
    unit = m.group(2).lower() if m.group(2) else None
    return float(m.group(1)) * _UNIT[unit]
