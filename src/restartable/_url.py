"""Store URLs: parsing, options in the query string, redaction, durations."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, unquote_plus, urlsplit

from .errors import ConfigError

__all__ = ["StoreURL", "parse_store_url", "redact", "secret_values", "parse_duration"]


#: ASCII control characters (C0 and DEL): RFC 3986 allows none of them raw in a URL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store URL.

    ``options`` holds restartable's own query-string options, already removed from
    ``driver_url`` (the URL a driver may see; every other part is kept as written).
    ``display`` is the URL with every secret replaced by ``***`` (see :func:`redact`):
    the only form that may be printed.
    """

    scheme: str
    raw: str
    driver_url: str
    options: dict[str, str] = field(default_factory=dict)
    #: A quick read (``open_store(..., retry=SECONDS)``): the store logs its retries at
    #: DEBUG and counts its ``retry`` budget from the first attempt (see ``_retry``).
    quick: bool = False

    @property
    def display(self) -> str:
        return redact(self.raw)


def parse_store_url(url: str, *, known_options: frozenset[str] = frozenset()) -> StoreURL:
    """Split ``url`` into scheme, driver URL and restartable's options.

    Options named in ``known_options`` are taken out of the query string; every other
    query parameter stays for the driver exactly as written (re-encoding it would
    change what libpq reads: it does not decode ``+`` as a space). A URL without a
    scheme, or with a bad port or bracket, is refused with the accepted forms.
    """
    if not isinstance(url, str) or ("://" not in url and not url.startswith("file:")):
        raise ConfigError(
            f"invalid store URL {redact(str(url))!r}: use sqlite:///path/to.db, file:///abs/dir, "
            "file:rel/dir, postgresql://user@host/db, redis://host:6379/0 or memory://"
        )
    bad = _CONTROL.search(url)
    if bad:
        # urlsplit silently drops tabs and newlines, and a NUL cuts the C string a driver
        # sees (libpq then connects to its defaults, sqlite raises ValueError): refuse.
        raise ConfigError(
            f"invalid store URL {redact(url)!r}: it holds the control character {bad.group()!r} at "
            f"position {bad.start()}: remove it (a URL holds no raw control characters)"
        )
    try:
        parts = urlsplit(url)
        if "," not in parts.netloc:  # libpq's multi-host URLs have several ports
            parts.port  # noqa: B018 - validates the port and brackets now, not in a driver
    except ValueError as exc:
        raise ConfigError(
            f"invalid store URL {redact(url)!r}: {exc}; write it as scheme://user:password@host:port/path "
            "with any '@', ':', '/', '?' or '#' in the password percent-encoded (%40, %3A, %2F, %3F, %23)"
        ) from None
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        # libpq's userinfo ends at the FIRST '@' before the first '/' (a '?' or '#' does
        # not end it); Python's at the last '@' before any '/', '?' or '#'. When the two
        # differ, libpq would connect to a host made of the password's tail (and print
        # it in its error), and our options would be read from the wrong place.
        authority = url.split("://", 1)[1].split("/", 1)[0]
        if authority.count("@") > 1 or ("@" in authority and "@" not in parts.netloc):
            raise ConfigError(
                f"invalid store URL {redact(url)!r}: its user or password holds a raw '@', '?' or '#', "
                "which libpq reads differently: percent-encode them (%40, %3F, %23)"
            )
    # Rebuilt from the text, not with urlunsplit: that drops the '//' of an empty host
    # (postgresql:///db?host=/run/pg, libpq's unix-socket form) and re-encodes the query.
    head, hash_, fragment = url.partition("#")
    base, _, query = head.partition("?")
    ours: dict[str, str] = {}
    theirs: list[str] = []
    for piece in query.split("&") if query else ():
        key, _, value = piece.partition("=")
        if unquote_plus(key) in known_options:
            ours[unquote_plus(key)] = unquote_plus(value)
        elif piece:
            theirs.append(piece)
    driver_url = base + ("?" + "&".join(theirs) if theirs else "") + hash_ + fragment
    return StoreURL(scheme=scheme, raw=url, driver_url=driver_url, options=ours)


#: Parameter names whose value is a secret, in a URL's query or a keyword/value DSN.
#: libpq marks password, sslpassword and oauth_client_secret secret ("*" in the
#: dispchar of PQconndefaults) and scram_client_key/scram_server_key debug-only ("D"):
#: all are credentials. redis-py hands every query parameter to its connection, where
#: password and ssl_password (the client key's passphrase) are secrets. The rest are
#: the names other tools give credentials. Paths (passfile, sslkey, ssl_keyfile) and
#: user names stay visible: they are what a reader needs to fix a refused login.
_SECRET_PARAMS = frozenset(
    {
        "password",
        "sslpassword",
        "oauth_client_secret",
        "scram_client_key",
        "scram_server_key",
        "ssl_password",
        "pass",
        "passwd",
        "pwd",
        "secret",
        "token",
        "auth",
        "api_key",
        "apikey",
        "access_key",
        "secret_key",
        "private_key",
        "access_token",
        "auth_token",
        "client_secret",
        "credentials",
    }
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
#: A parameter name at the start of the text or after a separator of a query or a DSN.
_PARAM = re.compile(r"(?:(?<=[?&#;,\s])|^)(?P<key>[^\s=&?#;,]+)[ \t]*=[ \t]*")
#: The end of an unquoted value: the next query parameter, or the next DSN keyword.
_VALUE_END = re.compile(r"[&\s]")


def _is_secret_param(name: str) -> bool:
    # libpq and redis-py percent-decode parameter names: pass%77ord= is a password too.
    n = unquote_plus(name).strip().lower().replace("-", "_")
    return n in _SECRET_PARAMS or any(w in n for w in _SECRET_WORDS)


def _host_colon(authority: str) -> int:
    """The index of the ':' before a port in ``authority`` (after any IPv6 brackets), or -1."""
    if authority.startswith("["):
        close = authority.find("]")
        return -1 if close < 0 else authority.find(":", close)
    return authority.find(":")


def _secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the secrets of ``text`` (one URL or DSN, or a message quoting some) are.

    1. The password of every ``scheme://user:password@host`` in ``text``: from the
       ':' after the user to the LAST '@' of the text, so a raw '@', '/', '?', '#'
       or even ``x://`` in a password never shows a piece of it (in a message quoting
       several URLs, the hosts between are hidden too).
    2. The value of every parameter named like a secret (:data:`_SECRET_PARAMS`),
       after '?', '&', '#', ';' or whitespace (a URL query, a keyword/value DSN): a
       quoted value to its closing quote, else up to the next '&' or whitespace.
    """
    spans: list[tuple[int, int]] = []
    consumed = 0
    for m in _SCHEME.finditer(text):
        if m.start() < consumed:
            continue  # inside a password already hidden
        start = m.end()
        # The ':' after the user lies before the first '/', '?' or '#' (a user name has
        # none of them raw); the password runs from it to the LAST '@' of the text (not
        # of this URL: a raw password may hold an "x://" that looks like the next one).
        # libpq ends the userinfo at the first '@' before the first '/', Python and
        # redis-py at the last '@' before any '/', '?' or '#'; a password typed with a
        # raw '@', '/', '?' or '#' ends it elsewhere still: going to the last '@'
        # hides the password under every reading, at the cost of hiding more when a
        # path or query holds an unencoded '@' too.
        stops = [j for j in (text.find(c, start) for c in "/?#") if j >= 0]
        colon = _host_colon(text[start : min(stops) if stops else len(text)])
        if colon < 0:
            continue
        last_at = text.rfind("@", start + colon)
        if last_at >= 0:
            spans.append((start + colon + 1, last_at))
            consumed = last_at
    for m in _PARAM.finditer(text):
        if not _is_secret_param(m.group("key")):
            continue
        v = m.end()
        if text[v : v + 1] in ("'", '"'):
            quote, i = text[v], v + 1
            while i < len(text) and text[i] != quote:
                i += 2 if text[i] == "\\" else 1
            spans.append((v, min(i + 1, len(text))))
        else:
            stop = _VALUE_END.search(text, v)
            spans.append((v, stop.start() if stop else len(text)))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(s for s in spans if s[1] > s[0]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def redact(url: str) -> str:
    """Return ``url`` with every secret replaced by ``***``; a URL without one is unchanged.

    Secrets are the password of the userinfo (``user:***@host``: the user stays
    visible) and the value of any parameter named like a secret, in the query or in a
    keyword/value DSN (``password``, ``sslpassword``, ``ssl_password``, ``token``,
    ``api_key``... see :data:`_SECRET_PARAMS`). Works on a message quoting URLs too.
    Over-redacting is preferred to a leak: an unencoded '@' in the path or query of a
    URL whose authority has a ':' (``host:5432/db?application_name=me@x``) hides the
    text from that ':' up to it, since a password typed with a raw '/' looks the same.
    """
    out: list[str] = []
    pos = 0
    for a, b in _secret_spans(url):
        out += [url[pos:a], "***"]
        pos = b
    out.append(url[pos:])
    return "".join(out)


def secret_values(url: str) -> tuple[str, ...]:
    """The secrets of ``url`` as written and percent-decoded, longest first.

    For scrubbing text a driver produced from the URL (an error message may echo the
    password it was given, decoded): replace each of these with ``***``.
    """
    found: set[str] = set()
    for a, b in _secret_spans(url):
        raw = url[a:b]
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]
        found.update({raw, unquote(raw), unquote_plus(raw)})
    return tuple(sorted((s for s in found if s), key=len, reverse=True))


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
