"""PostgreSQL's errors, translated in one place for the store, the keyset source and the queue.

:func:`classify` sorts a psycopg error into what the caller can do about it:

* ``"denied"`` — authentication or privileges (SQLSTATE class 28, ``InsufficientPrivilege``,
  or libpq's own words while connecting): :class:`~restartable.errors.PermissionDenied`;
* ``"config"`` — the database does not exist, or the URL is wrong (3D000, libpq's words):
  :class:`~restartable.errors.ConfigError`;
* ``"transient"`` — the connection was lost, the server is restarting: retried by
  :func:`restartable._retry.call_with_retry` within the store's budget;
* ``None`` — anything else: the caller decides (a missing table, bad SQL of the caller).

Every message that reaches the user goes through :func:`scrub` first: a password never
appears in an error, a log line or an exception's cause.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlsplit

__all__ = ["AUTH_FAILURES", "CONFIG_FAILURES", "Kind", "classify", "scrub", "secrets_of"]

Kind = Literal["denied", "config", "transient"]

AUTH_FAILURES = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "no password supplied",
    "permission denied",
    'role "',
)
# "bad value for": psycopg's own check of connect_timeout (?connect_timeout=abc).
CONFIG_FAILURES = ("does not exist", "invalid ", "unsupported ", "unrecognized ", "certificate", "bad value for")


def classify(
    exc: BaseException, pg: Any, message: str, *, connecting: bool, transient: tuple[type[BaseException], ...]
) -> Kind | None:
    """What ``exc`` (a psycopg error; ``pg`` is the psycopg module) means; see the module docstring.

    ``message`` is the scrubbed text to match libpq's words in; ``connecting``: the error
    came from opening a connection (libpq reports those without a SQLSTATE).
    """
    sqlstate = getattr(exc, "sqlstate", None) or ""
    lowered = message.lower()
    libpq = connecting and sqlstate == ""
    if (
        isinstance(exc, pg.errors.InsufficientPrivilege)
        or sqlstate.startswith("28")
        or (libpq and any(p in lowered for p in AUTH_FAILURES))
    ):
        return "denied"
    if sqlstate == "3D000" or (libpq and any(p in lowered for p in CONFIG_FAILURES)):
        return "config"
    if isinstance(exc, transient):
        return "transient"
    return None


def secrets_of(url: str) -> tuple[str, ...]:
    """The password of ``url`` as written and decoded, from the userinfo or the query."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found.append(parts.password)
        from .._url import secret_values  # every secret parameter (sslpassword...), not only password

        found.extend(secret_values(url))
    except ValueError:
        pass
    found += [unquote(s) for s in found]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
