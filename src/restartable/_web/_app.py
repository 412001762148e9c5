"""The Starlette app of ``restartable serve``: pages, JSON API, Prometheus metrics, and the guard around them.

Routes (GET and HEAD only; any other method is answered 405 before routing):

``/``                          the runs page (updated by ``/static/app.js`` from ``/api/runs``)
``/runs/{job}/{run}``          one run's page (updated from ``/api/runs/{job}/{run}/view``)
``/api/runs``                  exactly what ``restartable status --json`` prints (503 when the store
                               cannot be read, with ``{"store", "error"}``)
``/api/runs/{job}/{run}``      exactly what ``restartable show JOB --run RUN --json`` prints
``/api/runs/{job}/{run}/view`` the run page's fields, formatted, and its chart's geometry
``/metrics``                   Prometheus text: running, stalled and recently finished runs only
``/static/...``                the stylesheet and the script (no inline script or style anywhere)

Every response carries ``Content-Security-Policy: default-src 'self'`` (plus tighter
directives), so even a string that escaped escaping could not run; every string from
a job reaches the page through Jinja2's autoescape or the script's ``textContent``.
With a token, every request needs ``Authorization: Bearer T`` or ``?token=T``.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from restartable.cli._report import (
    STATES,
    RunSummary,
    human_duration,
    iso,
    iterations,
    lease_text,
    progress_text,
    show_json,
    skipped_items,
    stages_of,
    state_text,
)

from ._snapshot import Refresher, Snapshot, chart

_HERE = Path(__file__).parent

#: Finished runs stay in /metrics this long after their last save, so series end instead of growing forever.
RECENT_SECONDS = 3600.0

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),  # a ?token= must not leak through a Referer
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class Guard:
    """ASGI middleware: only GET/HEAD, the token when one is set, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, *, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in _HEADERS if h[0] not in names]
            await send(message)

        if scope["method"] not in ("GET", "HEAD"):
            await _plain(
                send_with_headers,
                405,
                "restartable serve is read-only: only GET and HEAD\n",
                [(b"allow", b"GET, HEAD")],
            )
            return
        if self.token is not None and not self._authorized(scope):
            await _plain(
                send_with_headers,
                401,
                "a token is required: send 'Authorization: Bearer TOKEN' or add ?token=TOKEN\n",
                [(b"www-authenticate", b'Bearer realm="restartable"')],
            )
            return
        await self.app(scope, receive, send_with_headers)

    def _authorized(self, scope: Scope) -> bool:
        assert self.token is not None
        offered: list[bytes] = []
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization" and value[:7].lower() == b"bearer ":
                offered.append(value[7:].strip())
        for value in parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", []):
            offered.append(value.encode("latin-1", "replace"))
        # compare_digest: the time taken does not tell how much of a guess was right.
        return any(hmac.compare_digest(o, self.token) for o in offered)


async def _plain(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# -- views: what the templates and the script show, formatted once ---------------------------------


def run_href(job: str, run: str) -> str:
    return f"/runs/{quote(job, safe='')}/{quote(run, safe='')}"


def row_view(s: RunSummary) -> dict[str, Any]:
    """One line of the runs page (the script builds the same from ``/api/runs``)."""
    return {
        "job": s.job,
        "run": s.run,
        "href": run_href(s.job, s.run) if s.shards_total is None else "",
        "state": s.now_state,
        "state_text": state_text(s),
        "done": s.done,
        "total": s.total,
        "progress": progress_text(s),
        "rate": f"{s.rate:,.1f}/s" if s.rate else "",
        "eta": human_duration(s.eta) if s.eta is not None else "",
        "last_save": f"{human_duration(s.age)} ago",
        "owner": s.owner if s.lease != "free" else "",
        "lease": lease_text(s),
        "lease_bad": s.lease in ("stale", "dead owner"),
        "shards": [row_view(x) for x in s.shards],
    }


def run_view(snap: Snapshot, job: str, run: str) -> dict[str, Any] | None:
    """Everything the run page shows, as text and numbers, or None when the store has no such run."""
    rec = snap.record(job, run)
    if rec is None or snap.read is None:
        return None
    history = snap.history(job, run)
    summary = next((r for r in snap.runs if r.job == job and r.run == run), None)
    if summary is None:  # pragma: no cover - runs and records come from the same read
        return None
    state = json.dumps(show_json(rec, [], snap.read.now)["state"], indent=2, ensure_ascii=False)
    if len(state) > 20_000:
        state = state[:20_000] + "\n... (cut at 20,000 characters: /api/runs/JOB/RUN has all of it)"
    return {
        "job": job,
        "run": run,
        "fields": {
            "state": summary.now_state,
            "state_text": state_text(summary),
            "status": rec.status,
            "epoch": str(rec.epoch),
            "progress": progress_text(summary),
            "rate": f"{summary.rate:,.1f} items/s" if summary.rate else "",
            "eta": human_duration(summary.eta) if summary.eta is not None else "",
            "started": iso(rec.started) if rec.started else "",
            "last_save": f"{iso(rec.updated)} ({human_duration(summary.age)} ago)",
            "owner": summary.owner or "none",
            "lease": lease_text(summary),
            "done": str(summary.done),
            "total": str(summary.total or ""),
            "skipped": f"{summary.dead_letters:,} dead letters, {summary.failed_files:,} failed files",
        },
        "percent": (100.0 * summary.done / summary.total) if summary.total else None,
        "chart": chart(snap.series.get((job, run), ())),
        "iterations": [
            [
                i["name"],
                i["stage"] or "",
                f"{i['offset']:,}" + (f"/{i['total']:,}" if i["total"] else ""),
                "finished" if i["finished"] else "",
                f"{i['dead']:,}",
                f"{i['failed']:,}",
            ]
            for i in iterations(rec)
        ],
        "stages": [[s["name"], s["status"]] for s in stages_of(rec)],
        "skipped": [[s["iteration"], s["kind"], s["key"], _short(s["value"])] for s in skipped_items(rec)],
        "saves": [[iso(h.at), h.status, f"{h.done:,}", f"{h.failed:,}", str(h.epoch)] for h in history[:20]],
        "state_json": state,
    }


def _short(value: Any, width: int = 300) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- metrics ---------------------------------------------------------------------------------------


def metrics_text(snap: Snapshot, *, recent: float = RECENT_SECONDS, now: float | None = None) -> bytes:
    """The snapshot in Prometheus text format, with prometheus_client's own writer.

    Per run (``job``, ``run`` labels): items done and total, rate, last-save age,
    lease age, and the state as a state set (one series per state, 1 for the current
    one). Only runs that are running or stalled, or finished within ``recent`` seconds,
    are exported, so the number of series follows the work, not the store's history.
    """
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    class _Collector:
        def collect(self) -> Any:
            labels = ["job", "run"]
            done = GaugeMetricFamily("restartable_run_items_done", "Items done, as last saved.", labels=labels)
            total = GaugeMetricFamily("restartable_run_items_total", "Items in the run, when known.", labels=labels)
            rate = GaugeMetricFamily(
                "restartable_run_rate_items_per_second",
                "Items per second over the recent saves (0 when nobody works on it).",
                labels=labels,
            )
            age = GaugeMetricFamily(
                "restartable_run_last_save_age_seconds", "Seconds since the last save.", labels=labels
            )
            lease = GaugeMetricFamily(
                "restartable_run_lease_age_seconds",
                "Seconds since the lease was last renewed (runs holding a lease).",
                labels=labels,
            )
            state = GaugeMetricFamily(
                "restartable_run_state", "1 for the run's current state.", labels=[*labels, "state"]
            )
            skipped = GaugeMetricFamily(
                "restartable_run_skipped_items", "Dead letters and failed files.", labels=[*labels, "kind"]
            )
            for s in snap.runs:
                if s.now_state not in ("running", "stalled") and s.age > recent:
                    continue
                key = [s.job, s.run]
                done.add_metric(key, s.done)
                if s.total is not None:
                    total.add_metric(key, s.total)
                rate.add_metric(key, s.rate or 0.0)
                age.add_metric(key, s.age)
                if s.lease_age is not None:
                    lease.add_metric(key, s.lease_age)
                for st in STATES:
                    state.add_metric([*key, st], 1.0 if s.now_state == st else 0.0)
                skipped.add_metric([*key, "dead_letter"], s.dead_letters)
                skipped.add_metric([*key, "failed_file"], s.failed_files)
            up = GaugeMetricFamily("restartable_serve_store_up", "1 when the last read of the store succeeded.")
            up.add_metric([], 0.0 if snap.error is not None or snap.read is None else 1.0)
            read_age = GaugeMetricFamily(
                "restartable_serve_last_read_age_seconds", "Seconds since the store was last read successfully."
            )
            if snap.reads:
                read_age.add_metric([], max(0.0, (now if now is not None else time.time()) - snap.read_at))
            yield from (done, total, rate, age, lease, state, skipped, up, read_age)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())  # type: ignore[arg-type]
    return generate_latest(registry)


# -- the app ---------------------------------------------------------------------------------------


def create_app(refresher: Refresher, *, token: str | None = None, start: bool = True) -> ASGIApp:
    """The ASGI app serving ``refresher``'s snapshots; with ``start`` its thread runs with the app's lifespan."""
    import contextlib

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles
    from starlette.templating import Jinja2Templates

    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    assert templates.env.autoescape  # every {{ }} is escaped: job strings never become markup

    def page_context(request: Request) -> dict[str, Any]:
        snap = refresher.snapshot
        token = request.query_params.get("token")
        return {
            "snap": snap,
            "display": snap.display,
            "interval": refresher.interval,
            "q": f"?token={quote(token, safe='')}" if token else "",
            "banner": _banner(snap, refresher),
        }

    async def runs_page(request: Request) -> Response:
        ctx = page_context(request)
        ctx["rows"] = [row_view(r) for r in ctx["snap"].rows]
        ctx["counts"] = {st: sum(r.now_state == st for r in ctx["snap"].rows) for st in STATES}
        return templates.TemplateResponse(request, "runs.html", ctx)

    async def run_page(request: Request) -> Response:
        ctx = page_context(request)
        job, run = request.path_params["job"], request.path_params["run"]
        ctx["view"] = run_view(ctx["snap"], job, run)
        ctx["job"], ctx["run"] = job, run
        # Still a page (the run may appear at the next read, or the store may be down): 404 only for a
        # store that was read and has no such run.
        code = 404 if ctx["view"] is None and ctx["snap"].read is not None and not ctx["banner"] else 200
        return templates.TemplateResponse(request, "run.html", ctx, status_code=code)

    def unavailable() -> JSONResponse | None:
        snap = refresher.snapshot
        message = _banner(snap, refresher)
        if message:
            return JSONResponse({"store": snap.display, "error": message}, status_code=503)
        return None

    async def api_runs(request: Request) -> Response:
        return unavailable() or JSONResponse(refresher.snapshot.document)

    def _one(request: Request) -> tuple[Snapshot, Any, str, str]:
        snap = refresher.snapshot
        job, run = request.path_params["job"], request.path_params["run"]
        return snap, snap.record(job, run), job, run

    async def api_run(request: Request) -> Response:
        if (down := unavailable()) is not None:
            return down
        snap, rec, job, run = _one(request)
        if rec is None or snap.read is None:
            return JSONResponse({"error": f"no run {run!r} of job {job!r} in {snap.display}"}, status_code=404)
        return JSONResponse(show_json(rec, snap.history(job, run), snap.read.now))

    async def api_view(request: Request) -> Response:
        snap = refresher.snapshot
        view = run_view(snap, request.path_params["job"], request.path_params["run"])
        banner = _banner(snap, refresher)
        if view is None:
            return JSONResponse(
                {"error": banner or "no such run in the store", "store": snap.display},
                status_code=503 if banner else 404,
            )
        return JSONResponse({"view": view, "error": banner or None}, status_code=503 if banner else 200)

    async def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics_text(refresher.snapshot), media_type=CONTENT_TYPE_LATEST)

    async def health(request: Request) -> Response:
        return PlainTextResponse(
            "ok\n" if not _banner(refresher.snapshot, refresher) else "store unreadable\n",
            status_code=200 if not _banner(refresher.snapshot, refresher) else 503,
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        if start:
            refresher.start()
        try:
            yield
        finally:
            if start:
                refresher.stop()

    routes = [
        Route("/", runs_page, methods=["GET"]),
        Route("/runs/{job}/{run}", run_page, methods=["GET"]),
        Route("/api/runs", api_runs, methods=["GET"]),
        Route("/api/runs/{job}/{run}", api_run, methods=["GET"]),
        Route("/api/runs/{job}/{run}/view", api_view, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    return Guard(app, token=token)


def _banner(snap: Snapshot, refresher: Refresher) -> str:
    """Why the data shown is not current, or "" when it is."""
    if snap.error is not None:
        since = f" (since {iso(snap.error_since)})" if snap.error_since else ""
        shown = f"; showing the read of {iso(snap.read_at)}" if snap.reads else ""
        return f"the store cannot be read{since}: {snap.error}{shown}"
    flight = refresher.in_flight_since
    if flight is not None and time.time() - flight > max(10.0, 5 * refresher.interval):
        return f"the store has not answered for {human_duration(time.time() - flight)}" + (
            f"; showing the read of {iso(snap.read_at)}" if snap.reads else ""
        )
    if snap.read is None:
        return "reading the store for the first time..."
    return ""


__all__ = ["create_app", "metrics_text", "run_view", "row_view", "Guard", "CSP", "RECENT_SECONDS"]
