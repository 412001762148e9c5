"""Multi-stage pipelines: named stages run in order inside one Job, resumed at the stage and position.

::

    pipe = Pipeline("etl", run="2026-11-27", store="sqlite:///ckpt.db")

    @pipe.stage
    def extract(job):
        for row in job.iterate(source_rows(), every=1000):
            stage_write(row)
        return {"rows": count_rows()}

    @pipe.stage("transform")
    def transform(job, results):
        for f in job.files("staging/*.csv"):
            ...
        return {"from": results["extract"]["rows"]}

    results = pipe.run()    # {"extract": {...}, "transform": {...}}

The contract:

* Stages run in the order they were registered, in ONE Job (one lease, one record).
* Each stage function gets a :class:`StageJob` (the job, whose iterations are named
  after the stage) and, when it takes a second parameter, the results of the
  earlier stages (also ``job.results``). Its return value, a small JSON value, is
  kept in the checkpoint for later stages and for reruns.
* A stage's iterations get their own cursors: the unnamed ones ``"STAGE:0"``,
  ``"STAGE:1"``... in call order, a named one ``"STAGE:NAME"``. A rerun skips the
  finished stages and calls the stage in progress again; its iterations resume at
  their positions. Code of a stage outside its iterations must therefore be safe to
  run again.
* After each stage a checkpoint records it done. A SIGTERM inside an iteration
  stops there, as usual; one during a stage's other code stops at the stage's end.
* The stage list is saved with the run. A rerun whose list differs (a stage added,
  removed, renamed or reordered) is refused with :class:`StagesChanged` (exit 65)
  before anything runs: finish the run with its stages, reset it, or use a new run.
* The pipeline's own cursor, ``"pipeline"``, holds ``stages``, ``done``, ``current``
  and ``results`` (``restartable show`` prints them with each stage's iterations; see
  :func:`describe_stages`).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from ._checkpoint import RUNNING, Checkpoint, dumps
from ._job import Job, run_context
from ._names import check_name
from .errors import StagesChanged, UsageError  # StagesChanged re-exported here for compatibility

__all__ = ["PIPELINE_CURSOR", "Pipeline", "StageJob", "StagesChanged", "describe_stages"]

log = logging.getLogger("restartable")

#: The name of the cursor that records the pipeline's stages.
PIPELINE_CURSOR = "pipeline"
#: A stage result larger than this (as JSON) gets a warning: it is saved with every checkpoint.
LARGE_RESULT = 64 * 1024

F = TypeVar("F", bound=Callable[..., Any])


class _Stage:
    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self.name = name
        self.fn = fn
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
        self.wants_results = len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class StageJob:
    """The job as a stage sees it: every attribute of the :class:`~restartable.Job`, with
    iterations named after the stage (``"STAGE:0"``, ``"STAGE:NAME"``) so that they keep
    their cursors whichever stages ran before them in this process."""

    _NAMED = ("iterate", "files", "batches", "map", "aiterate", "amap")

    def __init__(self, job: Job, stage: str, results: dict[str, Any]) -> None:
        object.__setattr__(self, "_job", job)
        object.__setattr__(self, "stage", stage)
        object.__setattr__(self, "results", results)
        object.__setattr__(self, "_calls", 0)

    def _name(self, name: str | None) -> str:
        if name is None:
            name = str(self._calls)
            object.__setattr__(self, "_calls", self._calls + 1)
        return f"{self.stage}:{name}"

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._job, attr)
        if attr in self._NAMED:

            def named(*args: Any, name: str | None = None, **options: Any) -> Any:
                return value(*args, name=self._name(name), **options)

            named.__doc__ = value.__doc__
            return named
        return value

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._job, attr, value)  # job.state = {...} reaches the job

    def __repr__(self) -> str:
        return f"<StageJob {self.stage!r} of {self._job.label}>"


class Pipeline:
    """Named stages run in order in one resumable Job; see the module docstring.

    ``run``, ``store`` and ``job_options`` are passed to :class:`~restartable.Job`.
    """

    def __init__(self, name: str, *, run: str | None = None, store: Any = None, **job_options: Any) -> None:
        self.name = check_name(name, "job name")
        self._run = run
        self._store = store
        self._options = job_options
        self._stages: list[_Stage] = []
        #: The results of the stages after :meth:`run` (those of earlier processes too).
        self.results: dict[str, Any] = {}

    @property
    def stages(self) -> list[str]:
        return [s.name for s in self._stages]

    @overload
    def stage(self, fn: F) -> F: ...

    @overload
    def stage(self, fn: str | None = None) -> Callable[[F], F]: ...

    def stage(self, fn: Any = None) -> Any:
        """Register a stage: ``@pipe.stage`` (named after the function) or ``@pipe.stage("name")``."""
        if callable(fn):
            return self._add(fn.__name__, fn)
        given = fn

        def register(f: F) -> F:
            return self._add(given if given is not None else f.__name__, f)

        return register

    def _add(self, name: str, fn: F) -> F:
        check_name(name, "stage name")
        if name == PIPELINE_CURSOR or name in self.stages:
            raise UsageError(
                f"pipeline {self.name!r}: a stage named {name!r} "
                + ("is reserved" if name == PIPELINE_CURSOR else "is already registered")
            )
        self._stages.append(_Stage(name, fn))
        return fn

    def run(self) -> dict[str, Any]:
        """Run the stages not yet done, in one Job; return every stage's result by name."""
        with Job(self.name, run=self._run, store=self._store, **self._options) as job:
            return self.run_in(job)

    def run_in(self, job: Job) -> dict[str, Any]:
        """Run the stages inside an entered ``job`` (which must run nothing else unnamed)."""
        if not self._stages:
            raise UsageError(f"pipeline {self.name!r} has no stages: register them with @pipe.stage")
        names = self.stages
        if job.completed:
            pos = job.record.positions.get(PIPELINE_CURSOR, {}) if job.record else {}
            self.results = dict(pos.get("results") or {})
            return self.results
        ctx = run_context(job)
        cursor = ctx.cursor(PIPELINE_CURSOR, total=0)
        started_with = cursor.extra.get("stages")
        if started_with is not None and list(started_with) != names:
            raise StagesChanged(
                f"{job.label} was started with the stages {list(started_with)} but this pipeline has {names}; "
                "changing the stages of a run in flight could skip or repeat work: finish it with the original "
                f"stages, or start over with `restartable reset {job.name} --run {job.run}`, or use a new run id"
            )
        done: list[str] = list(cursor.extra.get("done") or [])
        results: dict[str, Any] = dict(cursor.extra.get("results") or {})
        cursor.extra.update(stages=names, done=done, results=results)
        self.results = results
        resuming = _current_stage(job) if job.resumed else None
        for stage in self._stages:
            if stage.name in done:
                continue
            cursor.extra["current"] = stage.name
            log.info("%s: stage %r%s", job.label, stage.name, " (resuming)" if stage.name == resuming else "")
            ctx.save(RUNNING)  # `show` names the stage in progress
            view = StageJob(job, stage.name, results)
            value = stage.fn(view, results) if stage.wants_results else stage.fn(view)
            text = dumps(value, what=f"the result of stage {stage.name!r}")
            if len(text) > LARGE_RESULT:
                log.warning(
                    "%s: the result of stage %r is %d bytes of JSON; it is saved with every checkpoint, "
                    "keep stage results small (write big data to a file, return its path)",
                    job.label,
                    stage.name,
                    len(text),
                )
            results[stage.name] = value
            done.append(stage.name)
            cursor.extra["current"] = None
            self._stage_boundary(job)
        cursor.finished = True
        job.complete()
        return results

    def _stage_boundary(self, job: Job) -> None:
        """Checkpoint a finished stage; stop here on SIGTERM/SIGINT or fencing."""
        ctx = run_context(job)
        ctx.raise_if_fenced()
        if ctx.signal is not None:
            raise ctx.stop_now()
        ctx.save(RUNNING)


def _current_stage(job: Job) -> str | None:
    """The stage that was in progress when the run's last checkpoint was saved."""
    pos = job.record.positions.get(PIPELINE_CURSOR, {}) if job.record else {}
    current = pos.get("current")
    return current if isinstance(current, str) else None


def describe_stages(rec: Checkpoint) -> Iterator[str]:
    """Lines for ``restartable show``: each stage, its status and its iterations' progress.

    Yields nothing for a run that is not a pipeline.
    """
    pos = rec.positions.get(PIPELINE_CURSOR)
    if not isinstance(pos, dict) or not isinstance(pos.get("stages"), list):
        return
    done = set(pos.get("done") or [])
    results = pos.get("results") or {}
    current = pos.get("current")
    for stage in pos["stages"]:
        status = "done" if stage in done else "in progress" if stage == current else "pending"
        line = f"  stage {stage!r}: {status}"
        if stage in results:
            text = dumps(results[stage])
            line += f"  result {text if len(text) <= 80 else text[:77] + '...'}"
        yield line
        for name, p in rec.positions.items():
            if name.startswith(f"{stage}:"):
                total = p.get("total")
                yield (
                    f"    iteration {name!r}: {p.get('offset', 0):,}"
                    + (f"/{total:,}" if total else "")
                    + ("  finished" if p.get("finished") else "")
                )
