"""The app of `restartable serve` in-process: one store read per interval, a broken store shown as such, series bounded.

The browser tests (test_browser.py) run the real server; these drive the app through
Starlette's TestClient with a store wrapped to count (and to break) its calls.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("starlette", reason="pip install 'restartable[web]'")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx (pip install -e '.[dev]')")

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient  # noqa: E402

from restartable import HistoryEntry, Job  # noqa: E402
from restartable._web import Refresher, create_app  # noqa: E402
from restartable._web._server import is_loopback, open_read_only, serve_retry  # noqa: E402
from restartable._web._snapshot import SERIES_POINTS, merge_series  # noqa: E402
from restartable.errors import StoreNotFound, StoreUnavailable  # noqa: E402
from restartable.stores import Store, open_store  # noqa: E402

WRITES = ("acquire", "save", "renew", "delete", "mark", "restore", "cleanup")


class Watched:
    """A store whose calls are counted; ``down`` makes every read fail as a lost server does."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.calls: dict[str, int] = {}
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.store, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            assert name not in WRITES, f"restartable serve called {name}: it must never write"
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.down and name != "close":
                raise StoreUnavailable(f"listing runs in {self.store.display}: connection refused")
            return target(*args, **kwargs)

        return call


@pytest.fixture
def watched(tmp_path) -> Watched:
    url = f"sqlite:///{tmp_path}/ckpt.db"
    for run in ("a", "b", "c"):
        with Job("job", run=run, store=url, progress=False) as job:
            list(job.iterate(range(30), every=10))
    return Watched(open_store(url))


def client_for(watched: Watched, **options: Any) -> tuple[TestClient, Refresher]:
    refresher = Refresher(lambda: watched, display="sqlite:///x.db", interval=60.0)  # type: ignore[arg-type, return-value]
    refresher.refresh()
    return TestClient(create_app(refresher, start=False, **options)), refresher


def test_the_store_is_read_once_per_refresh_whatever_the_number_of_requests(watched: Watched) -> None:
    client, refresher = client_for(watched)
    reads = dict(watched.calls)
    assert reads["list_runs"] == 1 and reads["history"] == 3
    for _ in range(20):
        for path in ("/", "/api/runs", "/runs/job/a", "/api/runs/job/a", "/api/runs/job/a/view", "/metrics"):
            assert client.get(path).status_code == 200, path
    assert watched.calls == reads  # 120 requests, no store call: every answer came from the snapshot
    refresher.refresh()
    assert watched.calls["list_runs"] == 2
    assert watched.calls["history"] == 3  # nothing was saved: the histories read last time still hold


def test_a_store_that_cannot_be_read_is_a_banner_on_the_page_and_503_from_the_api(watched: Watched) -> None:
    client, refresher = client_for(watched)
    watched.down = True
    refresher.refresh()
    page = client.get("/")
    assert page.status_code == 200
    assert "the store cannot be read" in page.text and "connection refused" in page.text
    assert "job" in page.text  # the last good read is still shown, said to be old
    api = client.get("/api/runs")
    assert api.status_code == 503 and "connection refused" in api.json()["error"]
    assert client.get("/api/runs/job/a").status_code == 503
    assert client.get("/runs/job/a").status_code == 200
    assert "restartable_serve_store_up 0.0" in client.get("/metrics").text
    watched.down = False
    refresher.refresh()
    assert client.get("/api/runs").status_code == 200 and 'id="banner" hidden' in client.get("/").text


def test_a_store_never_read_is_served_as_such(watched: Watched) -> None:
    watched.down = True
    client, _ = client_for(watched)
    assert client.get("/").status_code == 200 and "cannot be read" in client.get("/").text
    assert client.get("/api/runs").status_code == 503


def test_secrets_in_errors_are_redacted(watched: Watched) -> None:
    client, refresher = client_for(watched)
    watched.down = True
    watched.store.display = "postgresql://app:hunter2@db/prod"  # type: ignore[misc]
    refresher.refresh()
    assert "hunter2" not in client.get("/").text and "hunter2" not in client.get("/api/runs").text


def test_old_finished_runs_leave_the_metrics(watched: Watched) -> None:
    client, _ = client_for(watched)
    assert 'run="a"' in client.get("/metrics").text
    from restartable._web._app import metrics_text

    _, refresher = client_for(watched)
    assert b'run="a"' not in metrics_text(refresher.snapshot, recent=-1.0)


def test_the_public_address_check() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("::")


def test_network_stores_get_a_short_retry_budget_whatever_the_url_says(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    assert serve_retry(2) == 6.0 and serve_retry(1) == 5.0
    # A Redis store connects lazily: no server is needed to see its budget.
    for url in ("redis://h:6379/0", "redis://h:6379/0?retry=60s"):
        with open_read_only(url, 2) as store:
            assert store.retry_seconds == 6.0 and store.read_only
    with pytest.raises(StoreNotFound):  # read-only: a missing SQLite store is never created
        open_read_only(f"sqlite:///{tmp_path}/none.db", 2)
    assert list(tmp_path.iterdir()) == []


@given(st.lists(st.lists(st.integers(1, 50), min_size=1, max_size=50), min_size=1, max_size=40))
@settings(max_examples=100, deadline=None)
def test_a_series_stays_bounded_ordered_and_spans_the_whole_run(batches: list[list[int]]) -> None:
    """Each refresh merges the last 50 saves (newest first, overlapping the last read): any number of
    refreshes keeps at most SERIES_POINTS points, in time order, from the first save seen to the newest."""
    points: tuple[tuple[float, int, int], ...] = ()
    at, done, seen = 0.0, 0, []
    for batch in batches:
        for gap in batch:
            at += gap
            done += gap
            seen.append((at, done, 1))
        history = [HistoryEntry(at=t, epoch=e, status="running", done=d) for t, d, e in reversed(seen[-50:])]
        points = merge_series(points, history)
        assert len(points) <= SERIES_POINTS
        assert [p[0] for p in points] == sorted({p[0] for p in points})
        assert points[-1] == seen[-1]
    first_seen = seen[max(0, len(batches[0]) - 50)]
    assert points[0] == first_seen
