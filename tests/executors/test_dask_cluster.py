"""The test cluster itself (:mod:`daskcluster`): it starts, computes, loses a worker, and leaves no process."""

from __future__ import annotations

import time
from pathlib import Path

from daskcluster import Clusters, alive


def test_cluster_starts_computes_loses_a_worker_and_cleans_up(tmp_path: Path) -> None:
    with Clusters(tmp_path) as clusters:
        cluster = clusters()
        from distributed import Client

        with Client(cluster.address, timeout=10, set_as_default=False) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            assert client.submit(pow, 2, 10, pure=False).result(timeout=30) == 1024
            cluster.kill_worker(0)
            deadline = time.monotonic() + 30
            while len(client.scheduler_info()["workers"]) != 1:
                assert time.monotonic() < deadline, "the scheduler never noticed the lost worker"
                time.sleep(0.1)
            assert client.submit(pow, 3, 3, pure=False).result(timeout=30) == 27
        pids = [m.pid for m in cluster.members]
    # Clusters.close asserted it; check once more from outside.
    assert not [p for p in pids if alive(p)]
