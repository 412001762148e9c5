"""``restartable k8s job|indexed-job|cronjob|statefulset``: print Kubernetes manifests for a restartable job.

::

    restartable k8s job export --image reg/export:1.4 --pvc 1Gi -- python /app/export.py
    restartable k8s indexed-job export --image reg/export:1.4 --store-secret export-db \\
        --completions 8 --parallelism 4 -- python /app/export.py
    restartable k8s cronjob nightly-export --schedule '30 2 * * *' --time-zone Europe/Paris \\
        --image reg/export:1.4 --pvc 1Gi -- python /app/export.py
    restartable k8s statefulset export --image reg/export:1.4 --pvc 10Gi -- python /app/export.py

The YAML goes to stdout (pipe it to ``kubectl apply -f -``), notes and warnings to
stderr. The manifests are built as data (:mod:`restartable.kube.manifests`) and checked
with our rules (:mod:`restartable.kube.rules`) before they are printed. See
docs/kubernetes.md for what each field is for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..kube.manifests import (
    ACCESS_MODES,
    DEFAULT_CPU,
    DEFAULT_GRACE,
    DEFAULT_KUBE_VERSION,
    DEFAULT_MEMORY,
    DEFAULT_STARTING_DEADLINE,
    DEFAULT_UID,
    WorkloadSpec,
    build,
    dump_yaml,
)
from ..kube.patch import load_patch

__all__ = ["k8s"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def k8s() -> None:
    """Print Kubernetes manifests (YAML) that run a restartable job safely.

    Jobs get restartPolicy Never, a podFailurePolicy (fail on exit 2/65/77/78, ignore
    evictions), podReplacementPolicy Failed, the pod's identity for the lease, and the
    Job's uid as the run. The store URL stays in a Secret. Pods meet Pod Security
    "restricted" (--no-restricted to opt out) and request --cpu/--memory.
    Pipe the output to `kubectl apply -f -`.
    """


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("name"),
        click.option("--image", required=True, help="The container image (with restartable installed)."),
        click.option(
            "--pvc",
            "pvc",
            default=None,
            metavar="SIZE",
            help="A SQLite store on a PersistentVolumeClaim of this size (1Gi); one pod at a time.",
        ),
        click.option(
            "--access-mode",
            type=click.Choice(ACCESS_MODES),
            default="ReadWriteOnce",
            show_default=True,
            help="The claim's access mode (ReadWriteOncePod where the CSI driver supports it).",
        ),
        click.option("--storage-class", default=None, help="The claim's storage class (default: the cluster's)."),
        click.option(
            "--store-secret",
            default=None,
            metavar="SECRET[:KEY]",
            help="An existing Secret whose KEY (default url) holds the store URL.",
        ),
        click.option(
            "--store",
            "store_url",
            default=None,
            metavar="URL",
            help="A postgresql:// or redis:// store URL: emitted as a Secret beside the workload.",
        ),
        click.option("--completions", type=int, default=None, help="Indexed Job: the number of shards."),
        click.option(
            "--parallelism",
            type=int,
            default=None,
            help="Pods at once (more than 1 needs a PostgreSQL or Redis store).",
        ),
        click.option(
            "--grace",
            type=int,
            default=DEFAULT_GRACE,
            show_default=True,
            metavar="SECONDS",
            help="terminationGracePeriodSeconds: the longest item plus the final checkpoint.",
        ),
        click.option(
            "--backoff-limit", type=int, default=None, help="Retries (per index for an Indexed Job); default 6."
        ),
        click.option(
            "--ttl",
            type=int,
            default=None,
            metavar="SECONDS",
            help="ttlSecondsAfterFinished: delete the finished Job after this long; default 86400 "
            "(CronJob: none, its history limits apply).",
        ),
        click.option(
            "--kube-version",
            default=DEFAULT_KUBE_VERSION,
            show_default=True,
            help="The cluster's version: fields it does not enable by default are left out.",
        ),
        click.option("--namespace", "-n", default=None, help="Put the objects in this namespace."),
        click.option(
            "--pushgateway",
            default=None,
            metavar="HOST:PORT",
            help="Set RESTARTABLE_PUSHGATEWAY, for restartable.metrics.",
        ),
        click.option(
            "--python",
            default="python",
            show_default=True,
            help="StatefulSet: the image's Python, which runs restartable.kube.idle.",
        ),
        click.option(
            "--no-wrap",
            "wrap",
            is_flag=True,
            default=True,
            flag_value=False,
            help="Keep `python SCRIPT.py` as is instead of `python -m restartable run SCRIPT.py`.",
        ),
        # Pod Security.
        click.option(
            "--no-restricted",
            "restricted",
            is_flag=True,
            default=True,
            flag_value=False,
            help='Leave out the securityContext of Pod Security "restricted" (for images that must run '
            'as root); the pods then meet "baseline" only.',
        ),
        click.option(
            "--writable-root",
            "read_only_root",
            is_flag=True,
            default=True,
            flag_value=False,
            help="Keep the container's root filesystem writable (it is read-only, with /tmp an emptyDir).",
        ),
        click.option(
            "--run-as-user",
            type=int,
            default=DEFAULT_UID,
            show_default=True,
            metavar="UID",
            help="The non-root user the job runs as.",
        ),
        click.option("--run-as-group", type=int, default=None, metavar="GID", help="Its group; default: UID."),
        click.option(
            "--fs-group",
            type=int,
            default=None,
            metavar="GID",
            help="The group that owns the volume's files; default: the group.",
        ),
        # Resources and scheduling.
        click.option(
            "--cpu", default=DEFAULT_CPU, show_default=True, help="CPU request (no limit unless --cpu-limit)."
        ),
        click.option(
            "--memory",
            default=DEFAULT_MEMORY,
            show_default=True,
            help="Memory request, and limit unless --memory-limit.",
        ),
        click.option("--cpu-limit", default=None, help="CPU limit (throttles the job; none by default)."),
        click.option("--memory-limit", default=None, help="Memory limit (default: the request)."),
        click.option(
            "--active-deadline",
            type=int,
            default=None,
            metavar="SECONDS",
            help="Jobs: activeDeadlineSeconds, the longest a Job may run.",
        ),
        click.option("--priority-class", default=None, metavar="NAME", help="The pods' PriorityClass."),
        click.option(
            "--queue",
            default=None,
            metavar="NAME",
            help="Jobs: a Kueue LocalQueue; the Job is created suspended, for Kueue to admit.",
        ),
        click.option(
            "--patch",
            "patch_file",
            default=None,
            metavar="FILE",
            help="A JSON merge patch (YAML or JSON) applied to the workload, then checked again.",
        ),
        click.argument("command", nargs=-1, required=True, metavar="-- COMMAND..."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _emit(kind: str, params: dict[str, Any]) -> None:
    command = tuple(params.pop("command"))
    patch_file = params.pop("patch_file")
    patch = load_patch(patch_file) if patch_file is not None else None
    spec = WorkloadSpec(kind=kind, command=command, patch=patch, **params)  # type: ignore[arg-type]
    built = build(spec)  # checked by our rules and the Pod Security level (and the schema, with --patch)
    text = dump_yaml(built.documents)
    for warning in built.warnings:
        click.echo(f"restartable: warning: {warning}", err=True)
    click.echo(text, nl=False)


@k8s.command("job")
@_options
def job_cmd(**params: Any) -> None:
    """A Job: one pod at a time runs COMMAND to completion, resuming after any restart.

    With --parallelism P > 1 (a PostgreSQL or Redis store), P pods run at once: the
    work-queue pattern, for a command built on restartable.queue.WorkQueue.
    """
    _emit("job", params)


@k8s.command("indexed-job")
@_options
def indexed_job_cmd(**params: Any) -> None:
    """An Indexed Job: --completions shards, each with its own checkpoint (Job(shard="auto"))."""
    _emit("indexed-job", params)


@k8s.command("cronjob")
@click.option(
    "--schedule",
    required=True,
    metavar="CRON",
    help="Five cron fields ('30 2 * * *') or a macro (@daily); no TZ= (use --time-zone).",
)
@click.option("--time-zone", default=None, metavar="TZ", help="An IANA zone for the schedule (Europe/Paris).")
@click.option(
    "--starting-deadline",
    type=int,
    default=None,
    metavar="SECONDS",
    help=f"How late a run may still start; default {DEFAULT_STARTING_DEADLINE}.",
)
@click.option("--successful-history", type=int, default=None, metavar="N", help="Succeeded Jobs kept; default 3.")
@click.option("--failed-history", type=int, default=None, metavar="N", help="Failed Jobs kept; default 3.")
@_options
def cronjob_cmd(**params: Any) -> None:
    """A CronJob: each scheduled Job runs COMMAND like `k8s job`, concurrencyPolicy Forbid.

    RESTARTABLE_RUN is each Job's uid: a night's pod retries resume its run, the next
    night's Job starts a new one.
    """
    _emit("cronjob", params)


@k8s.command("statefulset")
@_options
def statefulset_cmd(**params: Any) -> None:
    """A StatefulSet that runs COMMAND once, then stays up idle with a COMPLETED marker on its volume."""
    _emit("statefulset", params)
