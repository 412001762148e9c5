"""Values cut short for a message: one helper, so no message ever ends mid-number.

A value shown in an error message or in ``restartable show`` must be bounded, but a
plain slice (``text[:80]``) or :mod:`reprlib`'s middle cut (``'{0, 1, 2, 3...8, 19, 2'``)
can end inside a number, which reads like corrupted data. :func:`clip` cuts at the end
of the last whole token that fits and marks the cut with an ellipsis (``…``), so the
reader sees that the text goes on; :func:`short_repr` is a bounded ``repr`` built on it.
"""

from __future__ import annotations

import reprlib

#: What marks a cut. One character, so a clipped text is never longer than its width.
ELLIPSIS = "…"

#: Characters that belong to one token (a number, a word, a dotted name): never cut between two.
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")


def _in_token(ch: str) -> bool:
    return ch in _TOKEN or (ch.isalnum() and not ch.isascii())


def clip(text: str, width: int = 80) -> str:
    """``text`` if it fits in ``width`` characters, else its start cut at a clean boundary plus ``…``.

    The cut falls between two tokens (never inside a number or a word), and separators
    before it (``", "``, ``": "``) are dropped, so ``[0, 1, 2, 3, 4, 5]`` at width 12 is
    ``[0, 1, 2, 3…`` and never ``[0, 1, 2, 3, 4`` (is that 4 or 42?). The result is at most
    ``width`` characters. A token that does not fit is left out whole (``Decimal('…``); only
    a text that is one single token longer than ``width`` is cut inside it, as nothing else
    would show any of it (:func:`short_repr` describes a long int by its digits instead).

    >>> clip("[0, 1, 2, 3, 4, 5]", 12)
    '[0, 1, 2, 3…'
    >>> clip("short", 12)
    'short'
    """
    if width < 2:
        raise ValueError(f"width must be at least 2, not {width}")
    if len(text) <= width:
        return text
    room = width - len(ELLIPSIS)
    cut = room
    # text[cut] exists (len(text) > width >= room): a cut is clean unless it splits a token.
    while cut > 0 and _in_token(text[cut - 1]) and _in_token(text[cut]):
        cut -= 1
    if cut == 0:  # the text is one token longer than the width: nothing clean to keep, cut inside it
        cut = room
    head = text[:cut].rstrip(" ,;:=\t\n")
    return (head or text[:room]) + ELLIPSIS


class _Repr(reprlib.Repr):
    """:class:`reprlib.Repr` with every cut made by :func:`clip` (at the end, between tokens)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = 60
        self.maxother = 60
        self.maxlong = 40

    def repr_str(self, x: str, level: int) -> str:
        return clip(repr(x), self.maxstring)

    def repr_int(self, x: int, level: int) -> str:
        try:
            text = repr(x)
        except ValueError:  # more digits than this interpreter converts
            return f"<int of more than {self.maxlong} digits>"
        if len(text) <= self.maxlong:
            return text
        return f"<int of {len(text.lstrip('-'))} digits>"  # any cut of a number misleads

    def repr_instance(self, x: object, level: int) -> str:
        try:
            text = repr(x)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not break the message about it
            return f"<{type(x).__name__}>"
        return clip(text, self.maxother)


_REPR = _Repr()


def short_repr(value: object) -> str:
    """A ``repr`` for a message: bounded in length and depth, cut cleanly with ``…``, never raising.

    Containers are shown by their first items and an ellipsis (``{0, 1, 2, 3, 4, 5, ...}``,
    as :mod:`reprlib` does); long strings and objects are cut by :func:`clip`; an int too
    long to show is described by its number of digits instead of being cut.
    """
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


__all__ = ["ELLIPSIS", "clip", "short_repr"]
