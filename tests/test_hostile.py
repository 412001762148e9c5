"""Hostile inputs as properties: each one works, or is refused with a clear library error.

Never a traceback, a silent skip, or a checkpoint that cannot be read back:

- job names and run ids (random text, path tricks, the file store's own suffixes) through
  ``Job(...)`` on the sqlite and file stores: refused by the one name grammar, or the run
  round-trips under exactly that name;
- store URLs (random strings, near-misses) through ``open_store`` and the CLI: a
  ConfigError naming the accepted forms (exit 78), never another exception;
- state values (deep nesting, cycles, huge strings and ints, lone surrogates, bytes,
  NaN, non-string keys, keys shaped like the codec's tags, -0.0): ``job.state``
  round-trips exactly through a save and a fresh load, or the save raises
  StateNotSerializable naming the key and the last good checkpoint survives.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from restartable import Job
from restartable._checkpoint import MAX_DEPTH
from restartable._names import _NAME
from restartable.errors import ConfigError, RestartableError, StateNotSerializable, UsageError
from restartable.stores import open_store

KINDS = ["sqlite", "file"]


@contextlib.contextmanager
def _store_url(kind: str) -> Iterator[str]:
    """A fresh local store (hypothesis examples cannot share pytest's function-scoped tmp_path)."""
    with tempfile.TemporaryDirectory(prefix="rt-hostile-") as d:
        yield f"sqlite:///{d}/ckpt.db" if kind == "sqlite" else f"file://{d}/ckpt"


def _job(name: str, url: str, run: str | None = None) -> Job:
    return Job(name, run=run, store=url, progress=False, handle_signals=False)


# -- job names and run ids -----------------------------------------------------------------------

LOOKALIKES = [
    "x.ckpt",
    "x.ckpt.prev",
    "x.prev",
    "x.tmp",
    "x.lock",
    "x.shard-0-of-2",
    "x.ckpt.0123456789abcdef.tmp",
    "x..epoch-floor",
    "runs",
    "x" * 128,
]
NASTY = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "a\\b",
    ".x",
    "-x",
    "_x",
    "x\x00",
    "x\n",
    "x" * 129,
    "ｘ",
    "x\u200b",
    "\udcff",
    "x y",
    "x'",
    "con",
    "NUL",
    "x:y",
    "*",
    "x%2F",
]
names = st.sampled_from(LOOKALIKES + NASTY) | st.text(max_size=12) | st.from_regex(_NAME, fullmatch=True)


@pytest.mark.parametrize("kind", KINDS)
@given(job_name=names, run=names)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(job_name="x.ckpt", run="x.ckpt.prev")
@example(job_name="..", run="x")
@example(job_name="x", run="x" * 129)
def test_a_name_is_refused_by_the_grammar_or_round_trips(kind: str, job_name: str, run: str) -> None:
    valid = _NAME.fullmatch(job_name) is not None and _NAME.fullmatch(run) is not None
    with _store_url(kind) as url:
        if not valid:
            with pytest.raises(UsageError, match="invalid (job name|run)"):
                with _job(job_name, url, run) as job:
                    pass
            with open_store(url) as store:
                assert store.list_runs() == []  # nothing written under a refused name
            return
        with _job(job_name, url, run) as job:
            job.state["me"] = [job_name, run]
            for _ in job.iterate(range(3)):
                pass
        with open_store(url) as store:
            rec = store.load(job_name, run)
            assert rec is not None and rec.status == "completed" and rec.state["me"] == [job_name, run]
            assert [(r.job, r.run) for r in store.list_runs()] == [(job_name, run)]


@pytest.mark.parametrize("kind", KINDS)
def test_runs_named_like_the_stores_own_files_stay_apart(kind: str) -> None:
    """Run ids that look like a file store's suffixes (or a shard's) are runs of their own."""
    with _store_url(kind) as url:
        for i, run in enumerate(["x", *LOOKALIKES]):
            with _job("x.ckpt", url, run) as job:
                job.state["i"] = i
                for _ in job.iterate(range(i)):
                    pass
        with open_store(url) as store:
            got = {r.run: (r.state["i"], r.done) for r in store.list_runs("x.ckpt")}
    assert got == {run: (i, i) for i, run in enumerate(["x", *LOOKALIKES])}


# -- store URLs ------------------------------------------------------------------------------------

NEAR_MISSES = [
    "sqlite://relative",
    "sqlite://host/x.db",
    "sqlite:",
    "sqlite:///x.db?journal=wal",
    "file:",
    "file://",
    "file://otherhost/x",
    "file:///x?ttl=1",
    "memory:",
    "postgresql://host:99999/db",
    "postgresql://[::1/db",
    "postgresql://u:p@[zz]/db",
    "redis://[::1",
    "redis://[::1]:99999/0",
    "ftp://x",
    "http://[::1:80/",
    " ",
    "nonsense",
    "unix:///tmp/x.sock",
    "redis+sentinel://h/0",
    "redis://127.0.0.1:1/0?bogus=1",
    "redis://127.0.0.1:1/0?db=x",
    "redis://127.0.0.1:1/0?ttl=-1",
    "redis://127.0.0.1:1/0?retry=soon",
    "postgresql://127.0.0.1:1/db?bogus=1",
    "postgresql://127.0.0.1:1/db?schema=",
    "postgresql://127.0.0.1:1/db?retry=-5",
    "postgresql://127.0.0.1:1/db?history=x",
    "postgresql://127.0.0.1:1/db?schema=x%22;DROP",
    "sqlite:///a\x00b.db",
    "file:///tmp/a\x00b",
    "postgresql://\x00@127.0.0.1:1/db",
    "redis://h/0?prefix=a\x00",
    "postgresql://u:p@ss@127.0.0.1:1/db",
    "redis://h\n/0",
    "rediss://127.0.0.1:1/0?ssl_cert_reqs=bogus",
]
#: Where the drivers are installed, the postgresql/redis near-misses need them to answer.
_NEEDS = {"postgresql": "psycopg", "redis": "redis"}


def _needs_driver(url: str) -> None:
    for prefix, module in _NEEDS.items():
        if url.startswith(prefix):
            pytest.importorskip(module, reason=f"{module} is not installed")


@pytest.mark.parametrize("url", NEAR_MISSES)
def test_near_miss_urls_are_config_errors(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_driver(url)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        open_store(url).close()
    text = str(err.value)
    assert text.strip() and "\n" not in text.strip(), text  # one line (each names its fix)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://relative",
        "file:",
        "postgresql://host:99999/db",
        "redis://[::1",
        "ftp://x",
        "redis://h\n/0",
        "postgresql://127.0.0.1:1/db?bogus=1",
    ],
)
def test_cli_near_miss_urls_one_line_exit_78(url: str, tmp_path: Path) -> None:
    _needs_driver(url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESTARTABLE_")}
    done = subprocess.run(
        [sys.executable, "-m", "restartable.cli", "status", "--store", url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 78, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


_tails = st.text(max_size=30).filter(lambda s: ".." not in s)


@given(
    st.one_of(
        st.text(max_size=40),
        st.tuples(
            st.sampled_from(
                [
                    "sqlite:",
                    "sqlite:/",
                    "sqlite://",
                    "file:",
                    "file:/",
                    "memory:",
                    "memory://",
                    "redis://",
                    "rediss://",
                    "SQLITE://",
                    "x://",
                    "://",
                    "",
                ]
            ),
            _tails,
        ).map("".join),
    )
)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example("redis://h/0?prefix=a\x00")
@example("sqlite:///\x00")
def test_random_urls_open_or_are_refused_clearly(url: str) -> None:
    """Whatever the text, open_store opens a store or raises a library error (no network: lazy or local)."""
    if url.startswith(("sqlite:///", "SQLITE:///")) and url[10:11] == "/":
        return  # an absolute path outside the test's directory: not written by a property test
    with tempfile.TemporaryDirectory(prefix="rt-url-") as d, contextlib.chdir(d):
        if url.lower().startswith(("redis", "rediss")):
            pytest.importorskip("redis")
        try:
            store = open_store(url or "memory://")
        except RestartableError as exc:
            assert str(exc).strip() and "\n" not in str(exc), str(exc)
            return
        store.close()


# -- state values ------------------------------------------------------------------------------------


def _nest(depth: int, kind: str) -> Any:
    v: Any = 1
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v} if kind == "dict" else (v,) if kind == "tuple" else {"$tuple": v}
    return v


def _same(a: Any, b: Any) -> bool:
    """Exact equality: types too (1 != 1.0 != True), the sign of zero, tuples apart from lists."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return bool(a == b)


_odd_text = st.text(max_size=8) | st.sampled_from(["\udcff", "\ud800", "a\x00b", "\U0010ffff", "é" * 3])
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**200),
    st.floats(),
    st.sampled_from([-0.0, 0.0, 1e308, 5e-324]),
    _odd_text,
    st.binary(max_size=8) | st.just(b"\xff\xfe"),
    st.sampled_from([{1}, frozenset(), object()]),
)
_keys = _odd_text | st.sampled_from(["$tuple", "$dict", "$bytes", "$date", "$", "$$tuple", "__tuple__"]) | st.integers()
_values = st.recursive(
    _leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.tuples(inner, inner), st.dictionaries(_keys, inner, max_size=3)
    ),
    max_leaves=12,
)
#: Values hypothesis cannot print (too deep, cyclic, too many digits) travel as recipes.
_recipes = st.one_of(
    st.tuples(
        st.just("deep"),
        st.sampled_from([MAX_DEPTH - 3, MAX_DEPTH - 1, MAX_DEPTH, 900, 10_000]),
        st.sampled_from(["list", "dict", "tuple", "tag"]),
    ),
    st.tuples(st.just("digits"), st.sampled_from([4299, 4300, 4301, 5000])),
    st.just(("cycle",)),
)


def _build(spec: tuple[Any, ...]) -> Any:
    if spec[0] == "value":
        return spec[1]
    if spec[0] == "deep":
        return _nest(spec[1], spec[2])
    if spec[0] == "digits":
        return [10 ** (spec[1] - 1)]
    loop: list[Any] = [1]
    loop.append(loop)
    return loop


@pytest.mark.parametrize("kind", KINDS)
@given(spec=_values.map(lambda v: ("value", v)) | _recipes)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(spec=("deep", 10_000, "list"))
@example(spec=("deep", 10_000, "dict"))
@example(spec=("cycle",))
@example(spec=("digits", 5000))
@example(spec=("value", {"$tuple": [1, 2]}))
@example(spec=("value", {"$dict": {"a": 1}, "b": {"$bytes": "AA=="}}))
@example(spec=("value", float("nan")))
@example(spec=("value", {1: "x"}))
def test_state_round_trips_exactly_or_is_refused_and_the_last_good_survives(kind: str, spec: tuple[Any, ...]) -> None:
    value = _build(spec)
    with _store_url(kind) as url:
        with _job("state", url, "r") as job:
            job.state["good"] = "before"
            job.checkpoint()
            job.state["v"] = value
            try:
                job.checkpoint()
            except StateNotSerializable as exc:
                assert "job.state['v']" in str(exc) and len(str(exc)) < 700, str(exc)
                refused = True
                del job.state["v"]
            else:
                refused = False
        with open_store(url) as store:
            rec = store.load("state", "r")
        assert rec is not None and rec.state["good"] == "before"
        if refused:
            assert "v" not in rec.state
        else:
            assert _same(rec.state["v"], value)


@pytest.mark.parametrize("kind", KINDS)
def test_a_50mb_string_round_trips(kind: str) -> None:
    blob = "é" + "x" * (50 * 1024 * 1024)
    with _store_url(kind) as url:
        with _job("big", url, "r") as job:
            job.state["blob"] = blob
            job.checkpoint()
        with open_store(url) as store:
            rec = store.load("big", "r")
    assert rec is not None and rec.state["blob"] == blob


def test_a_too_deep_state_names_the_key_and_the_limit() -> None:
    with _store_url("sqlite") as url:
        with _job("deep", url, "r") as job:
            job.state["ok"] = _nest(MAX_DEPTH - 2, "list")  # the state dict is one level itself
            job.checkpoint()
            job.state["deep"] = _nest(10_000, "dict")
            with pytest.raises(StateNotSerializable, match=rf"job.state\['deep'\].*nested deeper than {MAX_DEPTH}"):
                job.checkpoint()
            del job.state["deep"]
        with open_store(url) as store:
            rec = store.load("deep", "r")
    assert rec is not None and _same(rec.state["ok"], _nest(MAX_DEPTH - 2, "list"))
