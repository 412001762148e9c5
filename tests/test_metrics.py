"""Metrics pushed to a real Pushgateway (Debian's prometheus-pushgateway), started by the test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ci_env import unavailable
from restartable import Job
from restartable.errors import UsageError
from restartable.metrics import Pusher, attach


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pushgateway() -> Iterator[str]:
    binary = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if binary is None:
        unavailable("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway)")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        [binary, f"--web.listen-address={address}", "--persistence.file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://{address}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "the pushgateway exited"
            assert time.monotonic() < deadline, "the pushgateway did not become ready"
            time.sleep(0.05)
        yield address
    finally:
        proc.terminate()
        proc.wait(10)


def _groups(address: str) -> list[dict[str, Any]]:
    """The gateway's groups: ``{"labels": {...}, "metrics": {name: [(labels, value), ...]}}``."""
    with urllib.request.urlopen(f"http://{address}/api/v1/metrics", timeout=5) as r:
        data = json.load(r)["data"]
    groups = []
    for group in data:
        metrics: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, family in group.items():
            if not isinstance(family, dict) or "metrics" not in family:
                continue
            for m in family["metrics"]:
                metrics.setdefault(name, []).append((m.get("labels", {}), float(m["value"])))
        groups.append({"labels": group["labels"], "metrics": metrics})
    return groups


def _group(address: str, **labels: str) -> dict[str, Any] | None:
    for group in _groups(address):
        if group["labels"] == labels:
            return group
    return None


def _value(group: dict[str, Any], name: str) -> float | None:
    samples = group["metrics"].get(name)
    return samples[0][1] if samples else None


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/ckpt.db"


def test_a_successful_run_pushes_items_duration_and_last_success(
    pushgateway: str, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RESTARTABLE_PUSHGATEWAY", pushgateway)
    with attach(Job("export-ok", run="r1", store=store, progress=False)) as job:
        for _ in job.iterate(range(50), every=10):
            pass
    rec = job.record
    group = _group(pushgateway, job="export-ok")  # grouped by job alone: no instance
    assert group is not None
    assert _value(group, "restartable_items_processed_total") == 50
    assert _value(group, "restartable_last_success_timestamp_seconds") == pytest.approx(rec.updated, abs=1e-3)
    assert _value(group, "restartable_duration_seconds") == pytest.approx(rec.updated - rec.started, abs=1e-3)
    assert group["metrics"]["restartable_run_info"][0][0]["run"] == "r1"
    assert all(labels.get("instance", "") == "" for samples in group["metrics"].values() for labels, _ in samples)


def test_pushes_arrive_at_checkpoints_without_a_success(pushgateway: str, store: str) -> None:
    seen: list[float | None] = []
    with attach(Job("export-mid", store=store, progress=False), gateway=pushgateway, interval=0) as job:
        for i in job.iterate(range(40), every=10):
            if i == 25:
                time.sleep(0.3)  # the checkpoint at 20 pushed from a thread: let it land
                group = _group(pushgateway, job="export-mid")
                assert group is not None
                seen.append(_value(group, "restartable_items_processed_total"))
                assert _value(group, "restartable_last_success_timestamp_seconds") is None
    assert seen in ([10.0], [20.0])  # a checkpoint's count (one while another push was in flight is skipped)
    group = _group(pushgateway, job="export-mid")
    assert group is not None and _value(group, "restartable_items_processed_total") == 40


def test_a_failed_run_keeps_the_last_success_of_an_earlier_one(pushgateway: str, store: str) -> None:
    with attach(Job("export-fail", run="good", store=store, progress=False), gateway=pushgateway) as job:
        for _ in job.iterate(range(5)):
            pass
    first = _group(pushgateway, job="export-fail")
    assert first is not None
    success = _value(first, "restartable_last_success_timestamp_seconds")
    assert success is not None
    with (
        pytest.raises(RuntimeError),
        attach(Job("export-fail", run="bad", store=store, progress=False), gateway=pushgateway) as job,
    ):
        for i in job.iterate(range(10), every=1):
            if i == 7:
                raise RuntimeError("the job's own bug")
    after = _group(pushgateway, job="export-fail")
    assert after is not None
    assert _value(after, "restartable_items_processed_total") == 7  # the failed run's progress
    assert _value(after, "restartable_last_success_timestamp_seconds") == success  # untouched
    assert after["metrics"]["restartable_run_info"][0][0]["run"] == "bad"


def test_shards_push_to_their_own_groups(pushgateway: str, store: str) -> None:
    for index in (0, 1):
        with attach(Job("export-sharded", store=store, shard=(index, 2), progress=False), gateway=pushgateway) as job:
            for _ in job.iterate(range(10), shard="auto"):
                pass
    for index in (0, 1):
        group = _group(pushgateway, job="export-sharded", shard=f"{index}-of-2")
        assert group is not None and _value(group, "restartable_items_processed_total") == 5


def test_without_a_gateway_or_with_a_dead_one_the_job_just_runs(
    store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("RESTARTABLE_PUSHGATEWAY", raising=False)
    pusher = attach(Job("plain", store=store, progress=False))
    assert not pusher.enabled
    with pusher as job:
        for _ in job.iterate(range(3)):
            pass
    assert job.completed and pusher.pushes == 0
    dead = Pusher(Job("dead-gw", store=store, progress=False), gateway=f"127.0.0.1:{_free_port()}", interval=0)
    with dead as job:
        for _ in job.iterate(range(3), every=1):
            pass
    assert job.completed and dead.pushes == 0 and dead.failures >= 1
    assert "pushing metrics" in caplog.text
    with Job("entered", store=store, progress=False) as job, pytest.raises(UsageError, match="not started yet"):
        attach(job)
