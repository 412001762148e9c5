"""The one grammar for job names, run ids and other names that reach a path or a query."""

from __future__ import annotations

import re

from .errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

GRAMMAR = "[A-Za-z0-9][A-Za-z0-9._-]{0,127}"


def check_name(value: object, what: str = "job name") -> str:
    """Return ``value`` if it matches the name grammar, else raise :class:`UsageError`.

    The grammar excludes separators and a leading dot, so a valid name can never
    traverse a path (``..``) or break out of a quoted value.
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise UsageError(
            f"invalid {what} {value!r}: use 1-128 characters from letters, digits, '.', '_' "
            f"and '-', starting with a letter or digit ({GRAMMAR})"
        )
    return value
