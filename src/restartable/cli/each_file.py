"""``restartable each-file``: run a command once per input file, resumably, for any language.

::

    restartable each-file 'data/input/*.csv' -- ./process-file.sh {} data/output/{name}
    restartable each-file -j 4 -o 'out/{stem}.json' 'in/*.csv' -- convert {} {out}

It replaces the article's bash loop over ``*.done`` marker files, with the same
inputs and outputs, and the semantics of ``job.files``
(:mod:`restartable._sources.files`): files in sorted order, a marker per file in the
job's store written when its command exits 0, changed files processed again.

* Placeholders in the command: ``{}`` the input path, ``{name}`` its file name,
  ``{stem}`` the name without its extension, ``{out}`` the temp output path (with
  ``-o``); arguments are otherwise passed as they are. The command runs without a
  shell (use ``sh -c '...' _ {}`` for one), with stdin from /dev/null.
* ``-o TEMPLATE`` names the final output (``{}``, ``{name}``, ``{stem}``); the command
  writes ``{out}``, a hidden temp file beside it, renamed into place (after an fsync)
  only when the command exits 0, so a killed command never leaves a partial output
  under the final name.
* ``-j N`` runs N commands at once; each file is marked when its command finishes
  (its output rename and marker are written while the next command already runs,
  so their fsyncs add nothing to a file's time). With N > 1 each output line is
  prefixed with ``[file name]``.
* Failures: ``--attempts`` tries per file, at least ``--backoff`` seconds before the
  second, doubled after (with jitter, at most 60 s: :mod:`restartable._retry`). Then ``--on-error stop`` (default, as the bash loop) launches
  nothing more, lets the running commands finish and exits 1; ``skip`` records the
  file (``restartable show`` lists it) and goes on, up to ``--skip-budget`` files
  (exit 65 beyond).
* Each command runs in its own session and process group, with
  ``RESTARTABLE_EACH_FILE_<token>=1`` in its environment. When the runner ends, killed
  with SIGKILL or not, a helper process (the reaper) SIGKILLs the commands' groups and
  then every process whose environment carries the token: a command started an instant
  before the runner died, a script's background child still running after the script
  exited, a child that moved to its own session. Nothing the commands started survives
  the runner to race its rerun (except a process that cleared its environment, as
  ``env -i`` does). Without the reaper (it could not start), a command gets SIGKILL when
  the runner dies (Linux ``PR_SET_PDEATHSIG``), its children do not.
* SIGTERM/SIGINT: no new file is launched, the signal is forwarded to the running
  commands' process groups, the runner waits up to ``--grace`` seconds (then
  SIGKILLs them), checkpoints and exits 143/130; a rerun does the rest.
* The job is named ``each-file-<8 hex>`` from the pattern, the command and the output
  template unless ``--job`` names it. A run that completed does nothing until
  ``restartable reset`` (or a new ``--run``); it says so, and how many files match
  that it did not do. For a directory that keeps receiving files, use ``--marker-dir``
  (markers that outlive the run's record) or a run id per batch.
"""

import hashlib
import json
import logging
from collections.abc import Sequence

import click

from .._concurrency.processes import (
    DEFAULT_GRACE,
    CommandFailed,
    check_command,
    fill,
    remove_stale_temps,
    run_commands,
)
from .._job import Job, run_context
from .._retry import DEFAULT_BACKOFF_SECONDS
from .._sources.files import FileSet
from ..errors import RestartableError

__all__ = ["CommandFailed", "default_job_name", "each_file", "fill"]

log = logging.getLogger("restartable")


def default_job_name(pattern: str, command: Sequence[str], output: str | None) -> str:
    """``each-file-<8 hex>``: stable for the same pattern, command and output template."""
    digest = hashlib.sha256(json.dumps([pattern, list(command), output]).encode()).hexdigest()
    return f"each-file-{digest[:8]}"


@click.command("each-file", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("pattern")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--store",
    "store_url",
    envvar="RESTARTABLE_STORE",
    default=None,
    metavar="URL",
    help="Store URL (default: $RESTARTABLE_STORE, else sqlite:///.restartable/checkpoints.db).",
)
@click.option("--job", "job_name", default=None, help="Job name (default: each-file-<hash of pattern and command>).")
@click.option("--run", default=None, help="Run id (default: $RESTARTABLE_RUN, else 'default').")
@click.option(
    "-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 1024), help="Files processed in parallel."
)
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="TEMPLATE",
    help="Final output path, e.g. 'out/{name}'; the command writes {out}, renamed into place on success.",
)
@click.option("--attempts", default=1, show_default=True, type=click.IntRange(1), help="Tries per file.")
@click.option(
    "--backoff",
    default=DEFAULT_BACKOFF_SECONDS,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds before the second try, doubled after each.",
)
@click.option(
    "--on-error",
    type=click.Choice(["stop", "skip"]),
    default="stop",
    show_default=True,
    help="After the last failed try: stop the run, or skip the file and go on.",
)
@click.option(
    "--skip-budget", type=click.IntRange(0), default=None, help="Most files that may be skipped (exit 65 beyond)."
)
@click.option(
    "--marker-dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Also write (and honour) <dir>/<file>.done markers, as the bash loop does.",
)
@click.option("--no-recheck", is_flag=True, help="Do not process again a done file whose size or mtime changed.")
@click.option("--allow-empty", is_flag=True, help="Accept a pattern that matches no file.")
@click.option(
    "--grace",
    default=DEFAULT_GRACE,
    show_default=True,
    type=click.FloatRange(0),
    help="On SIGTERM, seconds to wait for running commands before killing them.",
)
@click.option("--progress/--no-progress", default=False, show_default=True, help="Show a progress bar on stderr.")
def each_file(
    pattern: str,
    command: tuple[str, ...],
    store_url: str | None,
    job_name: str | None,
    run: str | None,
    jobs: int,
    output: str | None,
    attempts: int,
    backoff: float,
    on_error: str,
    skip_budget: int | None,
    marker_dir: str | None,
    no_recheck: bool,
    allow_empty: bool,
    grace: float,
    progress: bool,
) -> None:
    """Run a command once per file of PATTERN (a glob or a directory), resuming where it stopped.

    \b
    restartable each-file 'data/input/*.csv' -- ./process-file.sh {} data/output/{name}
    restartable each-file -j 4 -o 'out/{stem}.json' 'in/*.csv' -- convert {} {out}

    Placeholders: {} the input path, {name} its file name, {stem} without extension,
    {out} the temp output (with -o). A file is done when its command exits 0; a rerun
    skips done files and redoes changed ones. SIGTERM: no new launches, the signal is
    forwarded, running commands get --grace seconds, exit 143.
    """
    argv = list(command)
    check_command(argv, output)
    if job_name is None:
        job_name = default_job_name(pattern, argv, output)
        click.echo(f"restartable: each-file job {job_name} (name it with --job)", err=True)
    settings = {"pattern": pattern, "command": argv, "output": output}
    with Job(job_name, run=run, store=store_url, progress=progress) as job:
        if job.completed:
            _report_completed(job, pattern, marker_dir, not no_recheck)
            return
        previous = job.state.get("each_file")
        if previous is not None and previous != settings:
            log.warning(
                "%s was started with %s; continuing with %s (the done files stay done)", job.label, previous, settings
            )
        job.state["each_file"] = settings
        ctx = run_context(job)
        fs = FileSet(
            ctx,
            pattern,
            name="files",
            recheck=not no_recheck,
            marker_dir=marker_dir,
            allow_empty=allow_empty,
            skip_budget=skip_budget if on_error == "skip" else None,
            label=f"{job.label} each-file {pattern!r}",
        )
        if output is not None:
            remove_stale_temps(fs, output)
        done_now = run_commands(
            ctx,
            fs,
            argv,
            output=output,
            jobs=jobs,
            attempts=attempts,
            backoff=backoff,
            on_error=on_error,
            grace=grace,
            progress=progress,
        )
        total, failed = fs.cursor.total or 0, len(fs.failed)
        click.echo(
            f"restartable: each-file: {fs.cursor.offset:,}/{total:,} files done ({done_now:,} in this "
            f"run)" + (f", {failed} failed and skipped: {', '.join(sorted(fs.failed)[:5])}" if failed else ""),
            err=True,
        )


def _report_completed(job: Job, pattern: str, marker_dir: str | None, recheck: bool) -> None:
    """A completed run does nothing; say how many matching files it did not do."""
    try:
        fs = FileSet(
            run_context(job),
            pattern,
            name="files",
            recheck=recheck,
            marker_dir=marker_dir,
            allow_empty=True,
            skip_budget=None,
        )
        todo = len(fs.pending)
    except RestartableError:
        todo = 0
    extra = (
        (
            f"; {todo} matching file(s) are not done (new or changed): `restartable reset {job.name}"
            f"{'' if job.run == 'default' else ' --run ' + job.run}` or a new --run processes them"
        )
        if todo
        else ""
    )
    click.echo(f"restartable: {job.label} is already complete{extra}", err=True)
