"""`restartable serve` in a real browser: Debian's Chromium driven by Playwright.

One server (a real `restartable serve` subprocess) and one SQLite store serve the whole
module: finished runs written here, live runs by real worker processes (tests/procs.py)
that sleep per item. The browser must see the runs, see progress move without a
reload, see a run killed with SIGKILL turn `stalled`, and show hostile strings as text
without ever running them. The API, the metrics and the HTTP rules are checked over
plain HTTP against the same server.

Outside CI a missing Chromium or Playwright skips (with the reason); with CI=true it fails.

``python tests/web/test_browser.py docs/img`` writes the documentation's screenshots.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ci_env import unavailable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/: procs, conftest
from procs import Spawner, Worker, clean_env, wait_items, write_worker  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
HOSTILE = "<script>alert(1)</script>"
ODD_JOB, ODD_RUN = "odd.job_-1..x", "r-2026.12.04_a..b"
TIMING = {
    "rate_per_second",
    "eta_seconds",
    "seconds_since_update",
    "last_save_age_seconds",
    "lease_age_seconds",
    "lease_expires_in_seconds",
}


@dataclass
class Site:
    """The module's store, its worker processes and the `restartable serve` serving it."""

    root: Path
    store: str
    url: str = ""
    proc: subprocess.Popen[str] | None = None
    workers: dict[str, Worker] = field(default_factory=dict)

    def get(self, path: str, *, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()


def make_store(root: Path) -> str:
    """Finished runs of every kind: completed, failed with dead letters, a shard set partly done, hostile."""
    from restartable import Job

    url = f"sqlite:///{root}/ckpt.db"
    with Job("nightly-export", run="2026-12-03", store=url, progress=False) as job:
        list(job.iterate(range(5_000), every=500))

    def boom(i: int) -> int:
        if i % 97 == 13:
            raise ValueError(f"row {i}: <b>bad</b> value")
        return i

    with Job("thumbnails", run="batch-7", store=url, progress=False) as job:
        list(job.map(boom, range(400), on_error="skip", workers=2, every=50))
    for i, fail in ((0, False), (1, True)):
        try:
            with Job("reindex", run="2026-12-04", store=url, progress=False, shard=(i, 3)) as job:
                for n in job.iterate(range(1_000), every=100):
                    if fail and n == 420:
                        raise RuntimeError("disk full")
        except RuntimeError:
            pass
    with Job(ODD_JOB, run=ODD_RUN, store=url, progress=False) as job:
        job.state["note"] = HOSTILE
        job.state["html"] = '<img src=x onerror="alert(2)">'
        job.state[HOSTILE] = "a key holding markup"
        list(job.iterate(range(50), every=10))
    return url


def start_serve(store: str, *args: str) -> tuple[subprocess.Popen[str], str]:
    """`restartable serve` on a free port; returns the process and its base URL once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "restartable.cli", "serve", "--store", store, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"(http://\S+?)/ reading", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise AssertionError(f"restartable serve did not start: {''.join(lines)}{proc.stderr.read()}")


def stop_serve(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    pytest.importorskip("starlette", reason="pip install 'restartable[web]'")
    root = tmp_path_factory.mktemp("serve")
    site = Site(root=root, store=make_store(root))
    with Spawner(write_worker(root)) as spawn:
        cfg = {"store": site.store, "n": 1_000_000, "sleep": 0.01, "every": 5, "lease_seconds": 60}
        for job, run in (("ingest", "live"), ("ingest", "doomed")):
            w = spawn({**cfg, "job": job, "run": run, "log": str(root / f"{run}.log")})
            w.started()
            site.workers[run] = w
        for run in site.workers:
            wait_items(root / f"{run}.log", 20)
        site.proc, site.url = start_serve(site.store, "--interval", "0.3")
        try:
            yield site
        finally:
            assert stop_serve(site.proc) == 0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.dialogs = []  # every alert()/confirm() the page tries
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    context.close()


def row(page: Any, run: str) -> Any:
    return page.locator("#runs tr", has=page.locator("td.name", has_text=re.compile(rf"^{re.escape(run)}$")))


def wait_for(check: Any, timeout: float = 8.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


# -- in the browser ---------------------------------------------------------------------------


def test_the_runs_page_shows_every_run_and_progress_moves_without_a_reload(site: Site, page: Any) -> None:
    response = page.goto(site.url + "/")
    assert response.status == 200
    page.evaluate("window.__notReloaded = true")
    for run in ("2026-12-03", "batch-7", "live", "doomed", ODD_RUN):
        assert row(page, run).count() == 1, run
    assert "2/3 shards done" not in page.content()  # one completed, one failed: "1/3"
    group = page.locator("#runs tr.group")
    assert group.count() == 1 and "1/3 shards done" in group.inner_text()
    assert page.locator("#runs tr.shard").count() == 2  # the shards, grouped under their run
    assert "dead letters" in row(page, "batch-7").inner_text()

    def done() -> int:
        text = row(page, "live").locator(".ptext").inner_text()
        return int(text.split("/")[0].replace(",", ""))

    first = done()
    wait_for(lambda: done() > first, what="the live run's progress to move")
    assert page.evaluate("window.__notReloaded") is True  # the same document: updated by the script
    assert "running" in row(page, "live").locator(".badge").inner_text()
    assert "/s" in row(page, "live").inner_text()
    assert page.errors == [] and page.dialogs == []


def test_a_run_killed_with_sigkill_turns_stalled_on_the_open_page(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    badge = row(page, "doomed").locator(".badge")
    assert badge.inner_text().startswith("running")
    page.evaluate("window.__notReloaded = true")
    site.workers["doomed"].proc.kill()
    killed = time.monotonic()
    wait_for(lambda: badge.inner_text().startswith("stalled"), what="the killed run to show stalled")
    took = time.monotonic() - killed
    text = row(page, "doomed").inner_text()
    assert "last save" in text and "owner dead" in text
    cells = row(page, "doomed").locator("td")
    assert cells.nth(4).inner_text() == "" and cells.nth(5).inner_text() == ""  # no rate, no ETA
    assert page.evaluate("window.__notReloaded") is True
    assert took < 5, took


def test_hostile_strings_are_shown_as_text_and_never_run(site: Site, page: Any) -> None:
    page.goto(site.url + "/")
    link = row(page, ODD_RUN).locator("a")
    assert link.inner_text() == ODD_RUN and row(page, ODD_RUN).locator("td.job").inner_text() == ODD_JOB
    link.click()
    page.wait_for_url(re.compile(r"/runs/"))
    state = page.locator("#state-json")
    assert HOSTILE in state.inner_text() and "<img src=x onerror=" in state.inner_text()
    assert state.is_visible()
    page.wait_for_timeout(800)  # two refreshes: the script rewrites the state from the API
    assert HOSTILE in page.locator("#state-json").inner_text()
    assert page.locator("script").count() == 1  # ours, from /static: nothing from the job became a script
    assert page.locator("#state-json img").count() == 0
    assert page.dialogs == [] and page.errors == []
    page.goto(site.url + "/runs/thumbnails/batch-7")
    assert "<b>bad</b>" in page.locator("[data-rows=skipped]").inner_text()  # dead letters, as text
    assert page.locator("[data-rows=skipped] b").count() == 0


def test_a_run_page_draws_its_chart_and_keeps_it_current(site: Site, page: Any) -> None:
    page.goto(site.url + "/runs/ingest/live")
    line = page.locator("#progress-line")
    first = line.get_attribute("points")
    assert first and len(first.split()) >= 2
    done = page.locator("[data-field=progress]")
    before = done.inner_text()
    wait_for(lambda: done.inner_text() != before, what="the run page's progress to move")
    wait_for(lambda: line.get_attribute("points") != first, what="the chart to grow")
    assert page.locator("[data-rows=saves] tr").count() >= 2
    assert page.locator("[data-rows=iterations] tr").count() == 1


# -- over HTTP ----------------------------------------------------------------------------------


def test_every_answer_carries_the_csp_and_no_inline_script_or_style(site: Site) -> None:
    for path in ("/", "/runs/ingest/live", "/api/runs", "/metrics", "/static/app.js", "/nope"):
        _, headers, body = site.get(path)
        assert headers["content-security-policy"].startswith("default-src 'self'"), path
        assert headers["x-content-type-options"] == "nosniff"
        if path in ("/", "/runs/ingest/live"):
            html = body.decode()
            assert re.search(r"<script(?![^>]*\bsrc=)", html) is None  # no inline script
            assert "<style" not in html and " style=" not in html  # no inline style
            assert re.search(r"\son[a-z]+=", html) is None  # no inline handlers


def strip(run: dict[str, Any]) -> dict[str, Any]:
    """A run of status --json without the fields that change with the moment it was read."""
    out = {k: v for k, v in run.items() if k not in TIMING}
    if "shards" in out:
        out["shards"] = [strip(s) for s in out["shards"]]
    return out


def test_api_runs_is_status_json(site: Site) -> None:
    status, _, body = site.get("/api/runs")
    assert status == 200
    api = json.loads(body)
    out = subprocess.run(
        [sys.executable, "-m", "restartable.cli", "status", "--json", "--store", site.store],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert api["store"] == cli["store"] and api["unreadable"] == cli["unreadable"]
    assert [(r["job"], r["run"]) for r in api["runs"]] == [(r["job"], r["run"]) for r in cli["runs"]]
    for a, c in zip(api["runs"], cli["runs"]):
        assert a.keys() == c.keys()
        if a["state"] != "running" and c["state"] != "running":  # finished or stalled: nothing moves
            assert strip(a) == strip(c), a["run"]
    status, _, body = site.get("/api/runs/thumbnails/batch-7")
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "restartable.cli",
            "show",
            "thumbnails",
            "--run",
            "batch-7",
            "--json",
            "--store",
            site.store,
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    one, two = json.loads(body), json.loads(shown.stdout)
    for doc in (one, two):
        for k in TIMING:
            doc["summary"].pop(k)
    assert status == 200 and one == two
    assert site.get("/api/runs/thumbnails/no-such-run")[0] == 404


def test_metrics_parse_as_prometheus_text(site: Site) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = site.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    done = {s.labels["run"]: s.value for s in families["restartable_run_items_done"].samples}
    assert done["live"] > 0 and done["2026-12-03"] == 5_000
    states = {(s.labels["run"], s.labels["state"]): s.value for s in families["restartable_run_state"].samples}
    assert states[("live", "running")] == 1.0 and states[("live", "stalled")] == 0.0
    assert families["restartable_serve_store_up"].samples[0].value == 1.0
    assert "restartable_run_last_save_age_seconds" in families and "restartable_run_lease_age_seconds" in families


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_nothing_but_get_is_answered(site: Site, method: str) -> None:
    for path in ("/", "/api/runs", "/api/runs/ingest/live", "/metrics", "/static/app.js"):
        status, headers, _ = site.get(path, method=method)
        assert status == 405 and headers["allow"] == "GET, HEAD", (method, path)


def test_a_token_guards_every_path_and_a_public_address_warns(site: Site) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "restartable.cli", "serve", "--store", site.store, "--port", "0", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(RESTARTABLE_SERVE_TOKEN="s3cret-t0ken"),
    )
    try:
        assert proc.stderr is not None
        warning = proc.stderr.readline()
        assert "WARNING" in warning and "not loopback" in warning and "token" in warning
        url = re.search(r"http://\S+?:(\d+)/", proc.stderr.readline())
        assert url
        base = f"http://127.0.0.1:{url.group(1)}"

        def get(path: str, headers: dict[str, str] | None = None) -> int:
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(base + path, headers=headers or {}), timeout=10
                ) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        for path in ("/", "/api/runs", "/metrics", "/static/app.js", "/runs/ingest/live"):
            assert get(path) == 401
            assert get(path, {"Authorization": "Bearer wrong"}) == 401
            assert get(path, {"Authorization": "Bearer s3cret-t0ken"}) == 200
            assert get(path + "?token=s3cret-t0ken") == 200
        assert stop_serve(proc) == 0
        assert "s3cret-t0ken" not in (proc.stderr.read() or "")
    finally:
        if proc.poll() is None:
            proc.kill()


# -- the documentation's screenshots -----------------------------------------------------------


def screenshots(directory: Path) -> None:
    """Write serve-runs.png and serve-run.png into ``directory`` from a fresh store with live runs."""
    import tempfile

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, Spawner(write_worker(Path(tmp))) as spawn:
        root = Path(tmp)
        store = make_store(root)
        cfg = {"store": store, "n": 200_000, "sleep": 0.004, "every": 50, "lease_seconds": 60}
        for job, run in (("ingest", "2026-12-04"), ("ingest", "2026-12-04-eu")):
            spawn({**cfg, "job": job, "run": run, "log": str(root / f"{run}.log")}).started()
        time.sleep(4)
        spawn.workers[1].proc.kill()
        proc, url = start_serve(store, "--interval", "1")
        try:
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                pg = b.new_page(viewport={"width": 1540, "height": 470})
                time.sleep(6)
                pg.goto(url + "/")
                pg.wait_for_timeout(1500)
                pg.screenshot(path=str(directory / "serve-runs.png"), full_page=True)
                pg.set_viewport_size({"width": 1100, "height": 900})
                pg.goto(url + "/runs/ingest/2026-12-04")
                pg.wait_for_timeout(1500)
                pg.screenshot(path=str(directory / "serve-run.png"), full_page=False)
                b.close()
        finally:
            stop_serve(proc)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
    out.mkdir(parents=True, exist_ok=True)
    screenshots(out)
    print(f"wrote {out}/serve-runs.png and {out}/serve-run.png")
