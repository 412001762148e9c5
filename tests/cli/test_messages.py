"""Messages that say what happened: fencing by a reset vs by a newer runner, and values cut cleanly.

* A runner whose run was reset (its record deleted) is told so, not that "a newer runner
  owns the run" (there may be none); "newer runner" is said only when the store holds a
  newer epoch. Checked on the embedded stores and on a real one from the CLI's reset.
* A value cut short in a message ends with an ellipsis at a clean boundary, never
  inside a number: one helper (``restartable._text.clip``) does every cut.
"""

from __future__ import annotations

import time
from collections import deque
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from restartable import Job
from restartable._checkpoint import _short
from restartable._proc import current_owner
from restartable._text import ELLIPSIS, clip, short_repr
from restartable.errors import Fenced, StateNotSerializable
from restartable.stores import open_store


@pytest.fixture(params=["sqlite", "file", "memory"])
def url(request, tmp_path) -> str:
    return {
        "sqlite": f"sqlite:///{tmp_path}/c.db",
        "file": f"file://{tmp_path}/store",
        "memory": "memory://",
    }[request.param]


def test_a_runner_whose_run_was_reset_is_told_so(url):
    with open_store(url) as store:
        held = store.acquire("j", "r", owner=current_owner(), lease_seconds=60)
        assert store.delete("j", "r")  # `restartable reset --force`
        with pytest.raises(Fenced) as caught:
            store.save(held.replace(done=5), lease_seconds=60)
    text = str(caught.value)
    assert "the run was reset (or deleted) while this runner worked; it stops without saving" in text
    assert "newer runner" not in text and "fenced off" in text


def test_newer_runner_is_said_only_when_a_newer_epoch_holds_the_run(url):
    with open_store(url) as store:
        old = store.acquire("j", "r", owner=current_owner(), lease_seconds=0.05)
        time.sleep(0.2)  # the lease expires: a second runner takes the run over
        new = store.acquire("j", "r", owner=current_owner(), lease_seconds=60)
        assert new.epoch > old.epoch
        with pytest.raises(Fenced) as caught:
            store.save(old.replace(done=5), lease_seconds=60)
    assert f"a newer runner (epoch {new.epoch}) owns the run" in str(caught.value)
    assert "reset" not in str(caught.value)


def test_a_job_reset_by_the_cli_while_it_runs_says_reset(tmp_path, capsys):
    from restartable.cli import main

    url = f"sqlite:///{tmp_path}/c.db"
    with pytest.raises(Fenced) as caught:
        with Job("busy", store=url, progress=False) as job:
            for i in job.iterate(range(100), every=1):
                if i == 3:
                    assert main(["reset", "busy", "--force", "--store", url]) == 0
    assert "was reset (or deleted) while this runner worked" in str(caught.value)
    assert "newer runner" not in str(caught.value)


# -- values cut short ----------------------------------------------------------------------


def test_a_cut_ends_with_an_ellipsis_between_tokens():
    numbers = "{" + ", ".join(str(i) for i in range(100)) + "}"
    cut = clip(numbers, 40)
    assert cut.endswith(ELLIPSIS) and len(cut) <= 40
    head = cut[: -len(ELLIPSIS)]
    assert numbers.startswith(head) and numbers[len(head)] in ", "  # the next character is a separator
    assert clip("short", 40) == "short"


@given(
    text=st.lists(st.integers(0, 10**9), min_size=1, max_size=60).map(lambda xs: "[" + ", ".join(map(str, xs)) + "]"),
    width=st.integers(8, 120),
)
@settings(max_examples=300, deadline=None)
def test_no_cut_ever_ends_inside_a_number(text, width):
    cut = clip(text, width)
    assert len(cut) <= width
    if cut == text:
        return
    head = cut[: -len(ELLIPSIS)]
    assert cut.endswith(ELLIPSIS) and text.startswith(head)
    if head[-1:].isdigit():  # it ends on a digit: the number there must be whole
        assert not text[len(head)].isdigit(), (text, cut)


def test_the_short_repr_of_messages_cuts_cleanly():
    class Wide:
        def __repr__(self) -> str:
            return "Wide(" + repr(set(range(40))) + ")"

    for value in (Wide(), "word " * 40, deque(range(100)), 10**80, Decimal("1." + "3" * 90)):
        text = short_repr(value)
        assert "..." in text or text.endswith(ELLIPSIS) or text.startswith("<int of"), text
        if text.endswith(ELLIPSIS):
            head = text[: -len(ELLIPSIS)]
            full = repr(value)
            assert full.startswith(head) and not (head[-1].isdigit() and full[len(head)].isdigit()), text
    assert short_repr(10**80) == "<int of 81 digits>"
    assert _short(Wide()) == short_repr(Wide())


def test_a_state_error_names_the_value_cut_cleanly(tmp_path):
    class Odd:
        def __repr__(self) -> str:
            return "Odd({" + ", ".join(str(i) for i in range(40)) + "})"

    with pytest.raises(StateNotSerializable) as caught:
        with Job("odd", store=f"sqlite:///{tmp_path}/c.db", progress=False) as job:
            job.state["x"] = Odd()
            list(job.iterate(range(3), every=1))
    message = str(caught.value)
    assert f"{ELLIPSIS})" in message or "...})" in message, message
