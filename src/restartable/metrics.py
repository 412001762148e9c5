"""Prometheus metrics for batch jobs, pushed to a Pushgateway (``pip install 'restartable[metrics]'``).

::

    import restartable
    from restartable import metrics

    with metrics.attach(restartable.Job("nightly-export")) as job:   # RESTARTABLE_PUSHGATEWAY=host:9091
        for item in job.iterate(items):
            process(item)

A batch job is gone before Prometheus could scrape it, so it pushes. Following the
Prometheus conventions for batch jobs and the Pushgateway:

* What is pushed (the same names from every job; the job is a label):

  ``restartable_items_processed_total``           counter: items done in the current run
  ``restartable_duration_seconds``                gauge: the run's duration so far, from its first
                                                  start (every pod of it) to the last checkpoint
  ``restartable_last_success_timestamp_seconds``  gauge: when the job last completed a run, in
                                                  Unix seconds; pushed ONLY on success
  ``restartable_run_info{run=...}``               gauge 1: which run the other values describe

* When: at checkpoints, at most every ``interval`` seconds (default 15,
  ``$RESTARTABLE_PUSH_INTERVAL``), and once when the job's block has ended, with the final
  record. A push never fails the job: an unreachable gateway is a warning.
* Grouping: by ``job`` (the job's name) alone, plus ``shard="i-of-n"`` for a shard of an
  Indexed Job (its pods must not overwrite each other). No ``instance`` label: a batch
  job's pod is not an instance worth a series, and a per-pod group would stay in the
  gateway forever. The run is not in the grouping key either, for the same reason: it
  is the ``run`` label of ``restartable_run_info``.
* Pushes are POSTs (``pushadd``): they replace the metrics of these names in the group
  and leave the others, so a failed or interrupted run keeps the last success pushed
  by an earlier run, which is what an alert on "no success for 26 hours" needs.

Enabled by ``RESTARTABLE_PUSHGATEWAY=host:port`` (or ``gateway=``); without it
``attach`` only runs the job. ``attach`` wraps a Job that is not yet entered, because
the last success is known only after the Job's block has saved its final record.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from ._checkpoint import COMPLETED
from .errors import MissingDriver, UsageError

__all__ = ["DEFAULT_INTERVAL", "ENV_GATEWAY", "ENV_INTERVAL", "Pusher", "attach"]

log = logging.getLogger("restartable")

ENV_GATEWAY = "RESTARTABLE_PUSHGATEWAY"
ENV_INTERVAL = "RESTARTABLE_PUSH_INTERVAL"
DEFAULT_INTERVAL = 15.0
_TIMEOUT = 3.0  # seconds per push: a slow gateway must not hold up checkpoints for long

_HELP = {
    "items": "Items done in the current run of the job (restartable).",
    "duration": "Seconds from the run's first start to its last checkpoint, over every attempt.",
    "success": "Unix time at which the job last completed a run.",
    "info": "The run the job's other metrics describe.",
}


def attach(job: Any, *, gateway: str | None = None, interval: float | None = None) -> Pusher:
    """Wrap ``job`` (not yet entered) so that it pushes metrics; use the result in a ``with``."""
    return Pusher(job, gateway=gateway, interval=interval)


class Pusher:
    """The context manager returned by :func:`attach`: enters the job, pushes, exits the job, pushes."""

    def __init__(self, job: Any, *, gateway: str | None = None, interval: float | None = None) -> None:
        if getattr(job, "_entered", False):
            raise UsageError(
                f"{job.label}: metrics.attach() wraps a Job that is not started yet: "
                "`with metrics.attach(Job(...)) as job:`"
            )
        self.job = job
        self.gateway = gateway or os.environ.get(ENV_GATEWAY) or None
        env_interval = os.environ.get(ENV_INTERVAL)
        self.interval = float(interval if interval is not None else env_interval or DEFAULT_INTERVAL)
        self.pushes = 0
        self.failures = 0
        self._last = float("-inf")
        self._inflight: threading.Thread | None = None
        #: (seconds since the run's start by the store's clock, time.monotonic() then): see _since_start.
        self._anchor: tuple[float, float] | None = None
        if self.gateway is not None:
            try:
                import prometheus_client  # noqa: F401
            except ImportError:
                raise MissingDriver(
                    f"{ENV_GATEWAY} is set but prometheus-client is not installed: pip install 'restartable[metrics]'"
                ) from None

    @property
    def enabled(self) -> bool:
        return self.gateway is not None

    def grouping(self) -> dict[str, str]:
        shard = getattr(self.job, "shard", None)
        return {"shard": f"{shard[0]}-of-{shard[1]}"} if shard else {}

    def __enter__(self) -> Any:
        job = self.job.__enter__()
        if self.enabled:
            self._since_start()  # anchor the duration now, not at the first checkpoint inside a transaction
            job.on_checkpoint(self._on_checkpoint)
        return job

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> Any:
        try:
            return self.job.__exit__(exc_type, exc, tb)
        finally:
            if self.enabled and self.job.record is not None:
                self.push(final=True)

    def _on_checkpoint(self) -> None:
        # Called before each save, maybe inside the caller's open transaction: take the values
        # now and push from a thread, so a slow gateway never holds a checkpoint up.
        if time.monotonic() - self._last < self.interval or (self._inflight and self._inflight.is_alive()):
            return
        self._last = time.monotonic()
        families = self._families(final=False)
        self._inflight = threading.Thread(
            target=self._send, args=(families, False), daemon=True, name=f"restartable-metrics-{self.job.name}"
        )
        self._inflight.start()

    def push(self, *, final: bool) -> bool:
        """Push now (the final push reads the saved record); False when the push failed."""
        if self._inflight is not None:
            self._inflight.join(_TIMEOUT + 1)  # keep the pushes in order
        self._last = time.monotonic()
        return self._send(self._families(final=final), final)

    def _families(self, *, final: bool) -> _Families:
        job, rec = self.job, self.job.record
        if final:
            done = rec.done
            duration = max(0.0, rec.updated - rec.started)
        else:
            done_fn = getattr(job, "_done", None)  # the count about to be saved, not the last one
            done = done_fn() if done_fn is not None else rec.done
            duration = self._since_start()
        success = rec.updated if final and rec.status == COMPLETED else None
        return _Families(done=done, duration=duration, success=success, run=job.run)

    def _since_start(self) -> float:
        """Seconds since the run's first start: the store's clock once, then the monotonic clock.

        ``started`` was stamped by the store's clock (the server's, for PostgreSQL and
        Redis), which this machine's wall clock may differ from by any skew, and a wall
        clock steps (NTP, a resumed VM). So the store is asked for its time once, when the
        job starts, and the monotonic time elapsed since is added to that. A store that
        cannot answer then falls back to this machine's clock: metrics never fail a job.
        """
        if self._anchor is None:
            started = self.job.record.started
            try:
                now = self.job.store.now()
            except Exception as exc:  # noqa: BLE001 - best effort, like every push
                log.warning(
                    "%s: reading the store's clock for the duration metric failed (%s); using this machine's clock",
                    self.job.label,
                    exc,
                )
                now = time.time()
            self._anchor = (max(0.0, now - started), time.monotonic())
        base, at = self._anchor
        return base + (time.monotonic() - at)

    def _send(self, families: _Families, final: bool) -> bool:
        from prometheus_client import CollectorRegistry, pushadd_to_gateway

        job = self.job
        registry = CollectorRegistry(auto_describe=False)
        registry.register(families)
        assert self.gateway is not None
        try:
            pushadd_to_gateway(
                self.gateway, job=job.name, registry=registry, grouping_key=self.grouping(), timeout=_TIMEOUT
            )
        except Exception as exc:  # noqa: BLE001 - metrics are best effort: never fail the job
            self.failures += 1
            if self.failures == 1 or final:
                log.warning("%s: pushing metrics to %s failed (%s); the job goes on", job.label, self.gateway, exc)
            return False
        self.pushes += 1
        return True


class _Families:
    """A one-shot collector of the metric families of one push (no ``_created`` series)."""

    def __init__(self, *, done: int, duration: float, success: float | None, run: str) -> None:
        self._values = (done, duration, success, run)

    def collect(self) -> list[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        done, duration, success, run = self._values
        families: list[Any] = [
            CounterMetricFamily("restartable_items_processed", _HELP["items"], value=done),
            GaugeMetricFamily("restartable_duration_seconds", _HELP["duration"], value=duration),
        ]
        info = GaugeMetricFamily("restartable_run_info", _HELP["info"], labels=["run"])
        info.add_metric([run], 1)
        families.append(info)
        if success is not None:
            families.append(
                GaugeMetricFamily("restartable_last_success_timestamp_seconds", _HELP["success"], value=success)
            )
        return families
