"""``restartable k8s job|indexed-job|statefulset``: print Kubernetes manifests for a restartable job.

::

    restartable k8s job export --image reg/export:1.4 --pvc 1Gi -- python /app/export.py
    restartable k8s indexed-job export --image reg/export:1.4 --store-secret export-db \\
        --completions 8 --parallelism 4 -- python /app/export.py
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
    DEFAULT_GRACE,
    DEFAULT_KUBE_VERSION,
    WorkloadSpec,
    build,
    dump_yaml,
)
from ..kube.rules import enforce

__all__ = ["k8s"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def k8s() -> None:
    """Print Kubernetes manifests (YAML) that run a restartable job safely.

    Jobs get restartPolicy Never, a podFailurePolicy (fail on exit 2/65/77/78, ignore
    evictions), podReplacementPolicy Failed, the pod's identity for the lease, and the
    Job's uid as the run. The store URL stays in a Secret.
    """


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.argument("name"),
        click.option("--image", required=True, help="The container image (with restartable installed)."),
        click.option("--pvc", "pvc", default=None, metavar="SIZE",
                     help="A SQLite store on a PersistentVolumeClaim of this size (1Gi); one pod at a time."),
        click.option("--access-mode", type=click.Choice(ACCESS_MODES), default="ReadWriteOnce", show_default=True,
                     help="The claim's access mode (ReadWriteOncePod where the CSI driver supports it)."),
        click.option("--storage-class", default=None, help="The claim's storage class (default: the cluster's)."),
        click.option("--store-secret", default=None, metavar="SECRET[:KEY]",
                     help="An existing Secret whose KEY (default url) holds the store URL."),
        click.option("--store", "store_url", default=None, metavar="URL",
                     help="A postgresql:// or redis:// store URL: emitted as a Secret beside the workload."),
        click.option("--completions", type=int, default=None, help="Indexed Job: the number of shards."),
        click.option("--parallelism", type=int, default=None,
                     help="Pods at once (more than 1 needs a PostgreSQL or Redis store)."),
        click.option("--grace", type=int, default=DEFAULT_GRACE, show_default=True, metavar="SECONDS",
                     help="terminationGracePeriodSeconds: the longest item plus the final checkpoint."),
        click.option("--backoff-limit", type=int, default=None,
                     help="Retries (per index for an Indexed Job); default 6."),
        click.option("--ttl", type=int, default=None, metavar="SECONDS",
                     help="ttlSecondsAfterFinished: delete the finished Job after this long; default 86400."),
        click.option("--kube-version", default=DEFAULT_KUBE_VERSION, show_default=True,
                     help="The cluster's version: fields it does not enable by default are left out."),
        click.option("--namespace", "-n", default=None, help="Put the objects in this namespace."),
        click.option("--pushgateway", default=None, metavar="HOST:PORT",
                     help="Set RESTARTABLE_PUSHGATEWAY, for restartable.metrics."),
        click.option("--python", default="python", show_default=True,
                     help="StatefulSet: the image's Python, which runs restartable.kube.idle."),
        click.argument("command", nargs=-1, required=True, metavar="-- COMMAND..."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _emit(kind: str, params: dict[str, Any]) -> None:
    command = tuple(params.pop("command"))
    spec = WorkloadSpec(kind=kind, command=command, **params)  # type: ignore[arg-type]
    built = build(spec)
    enforce(built.documents)
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


@k8s.command("statefulset")
@_options
def statefulset_cmd(**params: Any) -> None:
    """A StatefulSet that runs COMMAND once, then stays up idle with a COMPLETED marker on its volume."""
    _emit("statefulset", params)
