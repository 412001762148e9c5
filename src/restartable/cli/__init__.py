"""The ``restartable`` command line.

Every command takes ``--store URL`` and honours ``$RESTARTABLE_STORE``. A library
error ends in one line on stderr and the documented exit code, never a traceback.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import __version__
from .._entry import report_error
from .._names import check_name
from .._progress import human_duration
from .._url import parse_duration
from ..errors import CheckpointCorrupt, ConfigError, RunLocked, UsageError
from ..stores import open_store
from ..stores.base import Store, Unreadable
from ._report import (
    iso,
    lease_state,
    number,
    plain_status,
    progress_text,
    read_status,
    record_json,
    show_json,
    skipped_of,
    state_text,
    status_json,
    status_rows,
    summarize,
)

__all__ = ["main", "run", "cli"]

STORE_HELP = "Store URL (default: $RESTARTABLE_STORE, else sqlite:///.restartable/checkpoints.db)."
store_option = click.option(
    "--store", "store_url", envvar="RESTARTABLE_STORE", default=None, metavar="URL", help=STORE_HELP
)


#: How long ``status`` and ``show`` wait for an unreachable server by default (seconds).
READ_RETRY_SECONDS = 5.0


def _retry_seconds(ctx: click.Context, param: click.Parameter, value: Any) -> float:
    try:
        return parse_duration(value, "--retry")
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def read_store_options(fn: Any) -> Any:
    """``--store`` and ``--retry`` for the commands that only read (``status``, ``show``).

    They open the store read-only (nothing is created; a missing store is exit 78) and
    give a down server ``--retry`` seconds, not the job's budget, before one line and exit 75.
    """
    fn = click.option(
        "--retry",
        "retry",
        default=READ_RETRY_SECONDS,
        show_default=True,
        metavar="SECONDS",
        callback=_retry_seconds,
        help="How long to wait for an unreachable store server before giving up (30s, 2m). "
        "Only this command's wait: a job keeps its own, longer budget (the URL's retry=, 60s by default).",
    )(fn)
    return store_option(fn)


def _open(store_url: str | None, *, read_only: bool = False, retry: float | None = None) -> Store:
    """The store of ``--store``: read-only for commands that only look, with ``retry`` as their wait."""
    return open_store(store_url, read_only=read_only, retry=retry)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="restartable")
def cli() -> None:
    """Crash-proof batch jobs: inspect, reset and clean up checkpoints, or run the demo.

    Exit codes: 0 ok, 1 the job raised, 2 usage, 65 data error, 75 temporary (retry),
    77 permission denied, 78 configuration, 130/143 interrupted after its checkpoint.
    """


@cli.command()
@read_store_options
@click.option("--job", "job_name", default=None, help="Only this job's runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--shards", is_flag=True, help="List each shard of a sharded run instead of one line per run.")
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Redraw every --interval seconds until Ctrl-C (piped: one table, or one JSON line, each time).",
)
@click.option(
    "--interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(min=0.2),
    help="Seconds between redraws with --watch.",
)
def status(
    store_url: str | None,
    retry: float,
    job_name: str | None,
    as_json: bool,
    shards: bool,
    watch: bool,
    interval: float,
) -> None:
    """Every run: state, progress, rate, ETA, last save and lease; a run nobody works on shows as stalled.

    A run saved as running whose owner is provably dead or whose lease expired is
    ``stalled`` (with the age of its last save, and no rate or ETA). With --watch the
    table is redrawn in place until Ctrl-C, which exits 0.
    """
    if job_name is not None:
        check_name(job_name, "job name")
    with _open(store_url, read_only=True, retry=retry) as store:
        if watch:
            _watch(store, job_name=job_name, as_json=as_json, shards=shards, interval=interval)
            return
        read = read_status(store, job=job_name)
        rows = status_rows(read, shards=shards)
        bad = read.unreadable
        if as_json:
            click.echo(json.dumps(status_json(store.display, rows, bad), indent=2))
        elif not rows and not bad:
            click.echo(f"no runs in {store.display}")
        else:
            _status_table(store, rows, bad)
        if bad:
            raise _unreadable_error(store, bad)


def _watch(store: Store, *, job_name: str | None, as_json: bool, shards: bool, interval: float) -> None:
    """``status --watch``: redraw until Ctrl-C (SIGINT ends it with exit 0, no traceback).

    On a terminal the table is redrawn in place (rich Live); piped, each interval prints
    a new table, or one JSON document per line with --json, so ``tail -f``-style readers
    and ``jq`` see whole documents. A store that cannot be read is shown as such and
    retried at the next interval: a watch outlives a server restart.
    """
    import time

    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    from ..errors import RestartableError

    console = Console()
    live_mode = _stdout_is_terminal() and not as_json

    def frame() -> Any:
        stamp = time.strftime("%H:%M:%S")
        try:
            read = read_status(store, job=job_name)
        except RestartableError as exc:
            if as_json:
                return json.dumps({"store": store.display, "error": str(exc)})
            if not live_mode:
                return f"# {stamp} {store.display} cannot be read: {exc}"
            return Text(f"{stamp}  {store.display} cannot be read: {exc}", style="bold red")
        rows = status_rows(read, shards=shards)
        if as_json:
            return json.dumps(status_json(store.display, rows, read.unreadable))
        if not live_mode:  # piped: the plain lines of `status`, under a comment line that dates them
            return "\n".join([f"# runs in {store.display} at {stamp}", *plain_status(rows, read.unreadable)])
        if not rows and not read.unreadable:
            return Text(f"{stamp}  no runs in {store.display}")
        return Group(
            _status_renderable(store, rows, read.unreadable, title_suffix=f" at {stamp}"),
            Text(f"every {interval:g}s; Ctrl-C to stop", style="dim"),
        )

    try:
        if live_mode:
            with Live(frame(), console=console, auto_refresh=False, transient=False) as live:
                while True:
                    time.sleep(interval)
                    live.update(frame(), refresh=True)
        else:
            while True:
                out = frame()
                click.echo(out)
                sys.stdout.flush()
                time.sleep(interval)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: exit 0


def _unreadable_error(store: Store, bad: list[Unreadable]) -> CheckpointCorrupt:
    """One error for the runs ``status`` could not read, listed after the ones it could."""
    if len(bad) == 1:
        return bad[0][2]
    names = ", ".join(f"job {j} run {r}" for j, r, _ in bad[:5]) + (", ..." if len(bad) > 5 else "")
    return CheckpointCorrupt(
        f"{len(bad)} runs in {store.display} have no readable checkpoint ({names}): "
        "`restartable show JOB --run RUN` gives each one's error; restore the store from a "
        "backup, or `restartable reset JOB --run RUN` to start that run over"
    )


def _status_renderable(store: Store, rows: list[Any], bad: list[Unreadable], *, title_suffix: str = "") -> Any:
    """The runs as a rich table, the unreadable ones last; stalled runs in red, with no rate or ETA."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"runs in {escape(store.display)}{escape(title_suffix)}", title_justify="left")
    # "saved": what the last checkpoint holds (a job's progress bar counts items done).
    for col in ("job", "run", "status", "saved", "rate", "ETA", "last save", "owner / lease"):
        table.add_column(col, overflow="fold")
    for r in rows:
        lease = "" if r.lease in ("free", "held") else f" [bold red]{r.lease.upper()}[/]"
        state = escape(state_text(r))
        if r.now_state in ("stalled", "failed"):
            state = f"[bold red]{state}[/]"
        table.add_row(
            escape(r.job),
            escape(r.run),
            state,
            progress_text(r),
            f"{r.rate:,.0f}/s" if r.rate else "",
            human_duration(r.eta) if r.eta is not None else "",
            f"{human_duration(r.age)} ago",
            escape(r.owner if r.lease != "free" else "") + lease,
        )
    for job, run, _ in bad:
        table.add_row(escape(job), escape(run), "[bold red]UNREADABLE[/]", "", "", "", "", "")
    return table


def _stdout_is_terminal() -> bool:
    """Whether a person reads stdout: the rich table then, plain lines for a pipe or a file."""
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout: not a terminal
        return False


def _status_table(store: Store, rows: list[Any], bad: list[Unreadable]) -> None:
    """The runs, the unreadable ones last: a rich table on a terminal, else one tab-separated line each.

    The table fits the terminal's width (cells fold inside their column). Piped, no line
    is ever wrapped or cut, so ``grep``, ``awk -F'\t'`` and ``sort`` see each run whole
    (see :func:`~restartable.cli._report.plain_status`).
    """
    if not _stdout_is_terminal():
        for line in plain_status(rows, bad):
            click.echo(line)
        return
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    table = _status_renderable(store, rows, bad)
    natural = Measurement.get(console, console.options.update_width(10_000), table).maximum
    if natural <= console.width:
        console.print(table)
    else:  # too narrow for the table without folding numbers apart: one block per run
        console.print(_status_blocks(store, rows, bad))


def _status_blocks(store: Store, rows: list[Any], bad: list[Unreadable]) -> Any:
    """The runs for a narrow terminal: a heading line per run, then its fields one per line."""
    from rich.markup import escape
    from rich.text import Text

    lines = [f"[italic]runs in {escape(store.display)}[/]"]
    for r in rows:
        state = escape(state_text(r))
        if r.now_state in ("stalled", "failed"):
            state = f"[bold red]{state}[/]"
        lines.append(f"[bold]{escape(r.job)}[/] {escape(r.run)}")
        lines.append(f"  status     {state}")
        lines.append(f"  saved      {progress_text(r)}")
        if r.rate:
            lines.append(f"  rate       {r.rate:,.0f}/s   ETA {human_duration(r.eta) if r.eta is not None else '?'}")
        lines.append(f"  last save  {human_duration(r.age)} ago")
        if r.lease != "free":
            lines.append(f"  owner      {escape(r.owner)} ({escape(r.lease)})")
    for job, run, _ in bad:
        lines.append(f"[bold]{escape(job)}[/] {escape(run)}")
        lines.append("  status     [bold red]UNREADABLE[/]")
    return Text.from_markup("\n".join(lines), overflow="fold")


def _run_names(store: Store, job: str) -> list[str]:
    """The job's runs, those whose checkpoint cannot be read included (show and reset name them)."""
    bad: list[Unreadable] = []
    return sorted([r.run for r in store.list_runs(job, corrupt=bad)] + [run for _, run, _ in bad])


def _pick_run(store: Store, job: str, run: str | None) -> str:
    if run is not None:
        return check_name(run, "run")
    runs = _run_names(store, job)
    if not runs:
        raise UsageError(f"no runs of job {job!r} in {store.display}")
    if len(runs) == 1:
        return runs[0]
    if "default" in runs:
        return "default"
    raise UsageError(
        f"job {job!r} has {len(runs)} runs in {store.display} ({', '.join(runs[:8])}"
        f"{', ...' if len(runs) > 8 else ''}): choose one with --run"
    )


@cli.command()
@read_store_options
@click.argument("job", required=False)
@click.option("--run", default=None, help="Which run (needed when the job has several).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--history", "limit", default=10, show_default=True, help="How many recent saves to list.")
@click.option(
    "--raw",
    "raw_path",
    default=None,
    metavar="PATH",
    help="Print one file-store record file (any layout) as one JSON document, and nothing else.",
)
def show(
    store_url: str | None,
    retry: float,
    job: str | None,
    run: str | None,
    as_json: bool,
    limit: int,
    raw_path: str | None,
) -> None:
    """One run's record and its recent history; piped, numbers are plain integers.

    ``--raw PATH`` reads one file-store record file itself (no store is opened) and
    prints it as one JSON document, for ``jq``.
    """
    if raw_path is not None:
        _show_raw(raw_path)
        return
    if job is None:
        raise UsageError("show needs a JOB (or --raw PATH): `restartable show JOB [--run RUN]`")
    check_name(job, "job name")
    with _open(store_url, read_only=True, retry=retry) as store:
        if run is not None and store.load(job, check_name(run, "run")) is None:
            from .._shard import parse_shard_run

            shard_runs = [r for r in store.list_runs(job) if (p := parse_shard_run(r.run)) and p[0] == run]
            if shard_runs:
                for rec in shard_runs:
                    _show_one(store, rec, as_json=as_json, limit=limit)
                return
        run = _pick_run(store, job, run)
        loaded = store.load(job, run)
        if loaded is None:
            raise UsageError(f"no run {run!r} of job {job!r} in {store.display}")
        _show_one(store, loaded, as_json=as_json, limit=limit)


def _show_raw(path: str) -> None:
    """``show --raw PATH``: the record file as one JSON document (read by the file store's own reader)."""
    from ..stores import file as file_store

    raw_record = getattr(file_store, "raw_record", None)
    if raw_record is None:  # the reader of record files arrives with the file store's new layout
        raise UsageError("show --raw is not available in this build of restartable")
    click.echo(json.dumps(raw_record(path), indent=2, ensure_ascii=False))


def _short(value: Any, width: int = 160) -> str:
    """A value of the record as JSON text, cut cleanly (never mid-number) with an ellipsis."""
    from .._checkpoint import encode_value
    from .._text import clip

    return clip(json.dumps(encode_value(value), ensure_ascii=False), width)


#: What ``show`` says next to the record's epoch and each iteration's name.
EPOCH_WORDS = "the runner generation that wrote it: microseconds at the run's creation, +1 at each takeover"
ITERATION_WORDS = "each a pass over one input, named by name= or by its order in the job"


def _show_one(store: Store, rec: Any, *, as_json: bool, limit: int) -> None:
    """Print one run's record and recent history (text or JSON).

    On a terminal numbers have thousands separators; piped they are plain integers. The
    counts are items *saved* (what the checkpoint holds), and the epoch and iterations
    are explained in words next to their values.
    """
    job, run = rec.job, rec.run
    history = store.history(job, run, limit=max(limit, 2))
    now = store.now()
    summary = summarize(rec, history, now)
    if as_json:  # the same document as the web page's /api/runs/JOB/RUN
        click.echo(json.dumps(show_json(rec, history, now, limit=limit), indent=2, ensure_ascii=False))
        return
    from .._text import clip

    plain = not _stdout_is_terminal()

    def num(n: int) -> str:
        return number(n, plain=plain)

    click.echo(f"job {rec.job}  run {rec.run}  ({store.display})")
    click.echo(f"  status    {rec.status}")
    click.echo(f"  epoch     {rec.epoch}  ({EPOCH_WORDS})")
    failed = f"   failed {num(rec.failed)}" if rec.failed else ""
    click.echo(f"  saved     {progress_text(summary, plain=plain)}{failed}")
    if summary.rate:
        rate = f"{summary.rate:.1f}" if plain else f"{summary.rate:,.1f}"
        click.echo(f"  rate      {rate} items/s   ETA {human_duration(summary.eta)}")
    click.echo(f"  started   {iso(rec.started)}   updated {iso(rec.updated)} ({human_duration(summary.age)} ago)")
    if rec.owner:
        click.echo(
            f"  owner     {rec.owner.describe()}   lease {summary.lease}"
            + (f" until {iso(rec.lease_expires)}" if rec.lease_expires else "")
        )
    from .._pipeline import PIPELINE_CURSOR, describe_stages

    stages = rec.positions.get(PIPELINE_CURSOR, {}).get("stages") or []
    explained = False
    for name, pos in rec.positions.items():
        if name == PIPELINE_CURSOR or any(name.startswith(f"{stage}:") for stage in stages):
            continue  # printed with its stage below
        if not explained:
            click.echo(f"  iterations ({ITERATION_WORDS}):")
            explained = True
        total = pos.get("total")
        click.echo(
            f"  iteration {name!r}: {num(pos.get('offset', 0))}"
            + (f"/{num(total)}" if total else "")
            + " saved"
            + ("  finished" if pos.get("finished") else "")
        )
        for key, value in pos.items():
            if key in ("offset", "finished", "total") or value in (None, [], {}):
                continue
            if isinstance(value, dict):  # e.g. dead letters or failed files: one per line
                click.echo(f"    {key} ({num(len(value))}):")
                for k, v in list(value.items())[:20]:
                    click.echo(f"      {k}: {_short(v)}")
                if len(value) > 20:
                    click.echo(f"      … {num(len(value) - 20)} more (--json shows all)")
            else:
                click.echo(f"    {key}: {_short(value)}")
    for line in describe_stages(rec):
        click.echo(line)
    if rec.state:
        click.echo(f"  state     {clip(json.dumps(record_json(rec)['state'], ensure_ascii=False), 200)}")
    if history:
        click.echo("  recent saves (newest first):")
        for h in history[:limit]:
            click.echo(f"    {iso(h.at)}  {h.status:<11} {num(h.done):>12} saved  epoch {h.epoch}")


@cli.command()
@store_option
@click.argument("job")
@click.option("--run", default=None, help="Which run (needed when the job has several).")
@click.option("--all-runs", is_flag=True, help="Reset every run of the job.")
@click.option("--force", is_flag=True, help="Reset even while a live runner holds the lease (it will be fenced).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the runs reset, and their count.")
def reset(store_url: str | None, job: str, run: str | None, all_runs: bool, force: bool, as_json: bool) -> None:
    """Delete a run's checkpoint, so the next run starts from the beginning.

    With --json, one document on stdout even when an error stops it part way (the error
    is then on stderr with its exit code): ``{"store", "job", "reset": [{"run", "status",
    "done", "unreadable"}], "count", "not_reset": [{"run", "reason"}]}``.
    """
    check_name(job, "job name")
    done: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    display = ""
    try:
        with _open(store_url) as store:
            display = store.display
            runs = _run_names(store, job) if all_runs else [_pick_run(store, job, run)]
            now = store.now()
            for r in runs:
                try:
                    rec = store.load(job, r)
                except CheckpointCorrupt:
                    # Unreadable: no runner can hold it either (none can load it). Resetting is the fix
                    # the error names, so it must work: delete whatever is there.
                    store.delete(job, r)
                    done.append({"run": r, "status": None, "done": None, "unreadable": True})
                    if not as_json:
                        click.echo(f"reset job {job} run {r} (its checkpoint was unreadable)")
                    continue
                if rec is None:
                    raise UsageError(f"no run {r!r} of job {job!r} in {store.display}")
                if not force and lease_state(rec, now) == "held":
                    owner = rec.owner.describe() if rec.owner else "unknown owner"
                    raise RunLocked(
                        f"job {job!r} run {r!r} is running ({owner}); "
                        "stop it first, or pass --force (the runner is then fenced off and stops)"
                    )
                if store.delete(job, r, epoch=rec.epoch):
                    done.append({"run": r, "status": rec.status, "done": rec.done, "unreadable": False})
                    if not as_json:
                        click.echo(f"reset job {job} run {r} (was {rec.status}, {rec.done:,} saved)")
                else:  # its epoch moved between the read and the delete: a runner took it over
                    reason = "a runner took the run over while it was being reset: run reset again"
                    missed.append({"run": r, "reason": reason})
                    if not as_json:
                        click.echo(f"did not reset job {job} run {r}: {reason}")
    finally:
        if as_json and display:
            doc = {"store": display, "job": job, "reset": done, "count": len(done), "not_reset": missed}
            click.echo(json.dumps(doc, indent=2))


@cli.command()
@store_option
@click.argument("job")
@click.option("--run", default=None, help="Which run (needed when the job has several).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the run reopened and what it skipped.")
def reopen(store_url: str | None, job: str, run: str | None, as_json: bool) -> None:
    """Mark a completed run interrupted, keeping its positions, so a rerun can do more work.

    For reprocessing what a completed run skipped: rerun it with ``retry_dead=True``
    (``job.map``/``job.amap`` dead letters); skipped files are retried by any rerun.
    --json prints ``{"store", "job", "run", "status", "was", "done", "dead_letters",
    "failed_files", "skipped"}``.
    """
    from .._checkpoint import COMPLETED, INTERRUPTED
    from .._proc import current_owner

    check_name(job, "job name")
    with _open(store_url) as store:
        run = _pick_run(store, job, run)
        rec = store.load(job, run)
        if rec is None:
            raise UsageError(f"no run {run!r} of job {job!r} in {store.display}")
        if rec.status != COMPLETED:
            raise UsageError(f"job {job!r} run {run!r} is {rec.status}, not completed: a rerun resumes it as it is")
        held = store.acquire(job, run, owner=current_owner(), lease_seconds=30)
        store.save(held.replace(status=INTERRUPTED), lease_seconds=None)
        dead, failed = skipped_of(rec)
        if as_json:
            doc = {
                "store": store.display,
                "job": job,
                "run": run,
                "status": INTERRUPTED,
                "was": COMPLETED,
                "done": rec.done,
                "dead_letters": dead,
                "failed_files": failed,
                "skipped": dead + failed,
            }
            click.echo(json.dumps(doc, indent=2))
            return
        click.echo(
            f"reopened job {job} run {run} ({rec.done:,} saved, {dead + failed:,} skipped): rerun it to continue"
        )


@cli.command()
@store_option
@click.option("--older-than", default="7d", show_default=True, help="Age of completed runs to delete (30m, 12h, 7d).")
@click.option("--job", "job_name", default=None, help="Only this job's runs.")
@click.option("--dry-run", is_flag=True, help="List what would be deleted.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: the runs deleted (or that would be).")
def cleanup(store_url: str | None, older_than: str, job_name: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete completed runs last updated before --older-than. Never touches unfinished runs.

    --json prints ``{"store", "older_than", "older_than_seconds", "job", "dry_run",
    "runs": [{"job", "run", "updated"}], "count"}``; with --dry-run, ``runs`` are the ones
    that would be deleted and nothing is.
    """
    try:
        seconds = parse_duration(older_than, "--older-than")
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if job_name is not None:
        check_name(job_name, "job name")
    with _open(store_url) as store:
        if dry_run:
            cutoff = store.now() - seconds
            victims = [
                r for r in store.list_runs(job_name, corrupt=[]) if r.status == "completed" and r.updated <= cutoff
            ]
        else:
            victims = store.cleanup(older_than=seconds, job=job_name)
        if as_json:
            doc = {
                "store": store.display,
                "older_than": older_than,
                "older_than_seconds": seconds,
                "job": job_name,
                "dry_run": dry_run,
                "runs": [{"job": r.job, "run": r.run, "updated": iso(r.updated)} for r in victims],
                "count": len(victims),
            }
            click.echo(json.dumps(doc, indent=2))
            return
        verb = "would delete" if dry_run else "deleted"
        for r in victims:
            click.echo(f"{verb} job {r.job} run {r.run} (completed {iso(r.updated)})")
        click.echo(f"{verb} {len(victims)} completed run(s) older than {older_than} in {store.display}")


def _register_optional() -> None:
    """Commands that live in their own modules (each registers one click command)."""
    import importlib

    for module, attr in (
        ("demo", "demo"),
        ("each_file", "each_file"),
        ("k8s", "k8s"),
        ("run_script", "run"),
        ("serve", "serve"),
    ):
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{module}":
                continue  # not built yet
            raise
        cli.add_command(getattr(mod, attr))


_register_optional()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the documented exit code."""
    try:
        cli.main(args=argv, prog_name="restartable", standalone_mode=False)
    except click.exceptions.Abort:
        sys.stderr.write("restartable: aborted\n")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except BaseException as exc:  # noqa: BLE001 - every outcome maps to a documented code
        code = report_error(exc)
    else:
        code = 0
    return code


def run() -> None:
    """The console script: run the CLI and exit with its code."""
    sys.exit(main())
