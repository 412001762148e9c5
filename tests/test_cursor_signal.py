"""A signal at any line of ``Cursor.position()`` never moves the saved position past the item in flight.

A signal handler runs in the main thread between two bytecodes, so it can land
between any two lines of ``position()``. Instead of hoping a real signal hits the
window, a tracing hook runs the handler's work (``stop_soon``) right before each
line in turn, and the result must always be the exact number of done items.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

import pytest

from restartable._cursor import Cursor

OFFSET = 1_000
HANDED = 23  # items handed out of the chunk: the 23rd is in flight, 22 are done


def _cursor() -> Cursor:
    cur = Cursor("0", offset=OFFSET, total=None, finished=False)
    it = iter(list(range(64)))
    for _ in range(HANDED):
        next(it)
    cur.chunk = it
    return cur


def _lines_of_position() -> list[int]:
    code = Cursor.position.__code__
    return sorted({line for _, _, line in code.co_lines() if line is not None and line > code.co_firstlineno})


def _position_with_handler_before(line: int) -> tuple[int, bool]:
    """Run position() with stop_soon fired just before ``line``; return (result, fired)."""
    cur = _cursor()
    fired = False
    code = Cursor.position.__code__

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal fired
        if event == "line" and frame.f_lineno == line and not fired:
            fired = True
            cur.stop_soon()
        return local

    def global_(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is code else None

    sys.settrace(global_)
    try:
        result = cur.position()
    finally:
        sys.settrace(None)
    return result, fired


@pytest.mark.parametrize("line", _lines_of_position())
def test_handler_at_any_line_keeps_the_exact_position(line: int) -> None:
    result, _ = _position_with_handler_before(line)
    assert result == OFFSET + HANDED - 1


def test_the_handler_fired_on_the_lines_that_run() -> None:
    # The test above proves nothing if the hook never fired: at least the lines up to the
    # first return must have run it.
    fired = [line for line in _lines_of_position() if _position_with_handler_before(line)[1]]
    assert len(fired) >= 3


def test_after_the_handler_position_stays_put() -> None:
    cur = _cursor()
    cur.stop_soon()
    assert cur.position() == OFFSET + HANDED - 1
    assert cur.stop_index == HANDED
