"""Kubernetes manifests for a restartable job, built as data and dumped as YAML.

::

    built = build(WorkloadSpec(kind="indexed-job", name="export", image="reg/export:1.4",
                               command=("python", "/app/export.py"), store_secret="export-db",
                               completions=8, parallelism=4))
    print(dump_yaml(built.documents))

Four shapes (``kind``):

``job``          one pod at a time runs the command to completion (``--parallelism P``
                 is the work-queue pattern: P pods pulling from :mod:`restartable.queue`).
``indexed-job``  ``completions`` shards; each pod gets ``JOB_COMPLETION_INDEX`` and the
                 manifest sets ``RESTARTABLE_SHARDS``, so ``Job(shard="auto")`` keeps one
                 checkpoint per shard.
``cronjob``      a Job per schedule (``schedule``, ``time_zone``): the same Job as
                 ``job``, ``concurrencyPolicy: Forbid``; each Job's uid is its run, so a
                 night's pod retries resume and the next night starts fresh.
``statefulset``  the article's shape, improved: the command runs under
                 ``python -m restartable.kube.idle``, which leaves a COMPLETED marker on the
                 volume and idles instead of restarting in a loop; a readiness probe
                 reports done.

The contract of what is generated (checked again by :mod:`restartable.kube.rules`):

* Jobs: ``restartPolicy: Never`` and a ``podFailurePolicy`` that fails the Job (the index,
  for an Indexed Job) on the permanent exit codes 2, 65, 77, 78 and ignores disruptions
  (eviction, preemption, node drain: the ``DisruptionTarget`` condition), so they do not
  count against the backoff limit; ``podReplacementPolicy: Failed`` (no replacement pod
  while the old one still terminates); ``backoffLimit`` or ``backoffLimitPerIndex``;
  ``ttlSecondsAfterFinished``.
* Pods: ``terminationGracePeriodSeconds`` sized for the final checkpoint (the longest
  item plus the save), ``terminationMessagePolicy: FallbackToLogsOnError``, the pod's
  name, uid and node through the downward API (the lease owner), and for Jobs
  ``RESTARTABLE_RUN`` = the Job's uid: a restarted pod resumes the run, the next Job
  starts a new one.
* The command is exec form, verbatim: every ``$`` is doubled so that Kubernetes'
  ``$(VAR)`` expansion leaves it alone.
* The store URL never appears in the pod spec: ``RESTARTABLE_STORE`` comes from a Secret
  (``store_secret``, or one emitted beside the workload for ``store_url``), or is the
  path of a SQLite file on the claim (``pvc``), which holds no credentials.
* A SQLite store (``pvc``) serves one pod at a time: more than one pod at once needs a
  PostgreSQL or Redis store (UsageError otherwise).
* Pod Security "restricted" unless ``restricted=False``: a non-root user (``run_as_user``,
  default 65532), ``fsGroup`` so it can write the volume, ``seccompProfile:
  RuntimeDefault``, no privilege escalation, every capability dropped; beyond the
  profile, a read-only root filesystem with an ``emptyDir`` at ``/tmp`` (``TMPDIR``).
  :mod:`restartable.kube.podsecurity` checks it.
* Resources: ``cpu`` and ``memory`` requests (default 100m and 256Mi), a memory limit
  equal to the request, no CPU limit unless asked (a CPU limit throttles; a memory limit
  keeps one pod from pushing the node out of memory).
* A ``python SCRIPT.py ARGS`` command runs as ``python -m restartable run SCRIPT.py ARGS``
  (``wrap=False`` keeps it verbatim): every library error, even one raised before the
  script creates its Job, ends with its documented exit code for the failure policy.
* Names: per kind, the longest name whose derived names and labels a cluster accepts
  (:mod:`restartable.kube.limits`).
* ``patch``: a JSON merge patch applied to the workload, then checked again
  (:mod:`restartable.kube.patch`).

Per-version fields: ``kube_version`` (default :data:`DEFAULT_KUBE_VERSION`, at least
:data:`MIN_KUBE_VERSION`) omits what the target version does not enable by default
and says so in ``Built.warnings``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .._entry import PERMANENT_CODES
from ..errors import MissingDriver, UsageError
from .cron import check_schedule, check_time_zone
from .limits import max_name_length, name_limit_reason, parse_quantity
from .patch import apply_to_workload, validate_schema

__all__ = [
    "CONTAINER",
    "DATA_DIR",
    "DEFAULT_CPU",
    "DEFAULT_MEMORY",
    "DEFAULT_STARTING_DEADLINE",
    "DEFAULT_UID",
    "DEFAULT_KUBE_VERSION",
    "MARKER",
    "MIN_KUBE_VERSION",
    "QUEUE_LABEL",
    "Built",
    "WorkloadSpec",
    "build",
    "dump_yaml",
    "parse_kube_version",
]

Kind = Literal["job", "indexed-job", "cronjob", "statefulset"]
KINDS: tuple[str, ...] = ("job", "indexed-job", "cronjob", "statefulset")

#: The version whose features are assumed when none is given.
DEFAULT_KUBE_VERSION = "1.31"
#: The oldest version we generate for: ``batch.kubernetes.io/controller-uid`` exists from 1.27.
MIN_KUBE_VERSION = "1.27"
_MIN = (1, 27)
#: Minor versions from which a field is enabled by default (beta or GA), and what omits it.
_PER_VERSION = (1, 29)  # podReplacementPolicy (beta 1.29, GA 1.34), backoffLimitPerIndex + FailIndex (GA 1.33)
_SERVICE_NAME_OPTIONAL = (1, 33)  # StatefulSet.spec.serviceName is required by the schema before 1.33

CONTAINER = "main"
DATA_DIR = "/data"
MARKER = f"{DATA_DIR}/COMPLETED"
SQLITE_URL = f"sqlite:///{DATA_DIR}/checkpoints.db"
DEFAULT_GRACE = 60
DEFAULT_BACKOFF = 6
DEFAULT_TTL = 86400
ACCESS_MODES = ("ReadWriteOnce", "ReadWriteOncePod")
#: Requests: enough for a Python process and its batch, small enough to schedule anywhere.
DEFAULT_CPU = "100m"
DEFAULT_MEMORY = "256Mi"
#: The non-root user, group and fsGroup: "nonroot" in distroless images, unused elsewhere.
DEFAULT_UID = 65532
#: How late a CronJob's run may still start (controller down, previous run still going).
DEFAULT_STARTING_DEADLINE = 3600
DEFAULT_SUCCESSFUL_HISTORY = 3
DEFAULT_FAILED_HISTORY = 3
TMP_DIR = "/tmp"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_PYTHON = re.compile(r"python(\d+(\.\d+)?)?")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_QUANTITY = re.compile(r"\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+:\d{1,5}")
_SHARED_SCHEMES = ("postgresql", "postgres", "redis", "rediss")


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """What to generate. ``None`` options take the kind's default (or are refused where meaningless).

    Exactly one of ``pvc`` (a size such as ``1Gi``), ``store_secret`` (``SECRET`` or
    ``SECRET:KEY``, key default ``url``) and ``store_url`` is required. ``schedule`` is
    required for a CronJob and refused elsewhere; ``run_as_group`` and ``fs_group``
    default to ``run_as_user``; ``memory_limit`` defaults to ``memory``; ``patch`` is a
    parsed JSON merge patch (:func:`restartable.kube.patch.load_patch`).
    """

    kind: Kind
    name: str
    image: str
    command: tuple[str, ...]
    pvc: str | None = None
    access_mode: str = "ReadWriteOnce"
    storage_class: str | None = None
    store_secret: str | None = None
    store_url: str | None = None
    completions: int | None = None
    parallelism: int | None = None
    grace: int = DEFAULT_GRACE
    backoff_limit: int | None = None
    ttl: int | None = None
    kube_version: str = DEFAULT_KUBE_VERSION
    namespace: str | None = None
    pushgateway: str | None = None
    python: str = "python"
    wrap: bool = True
    # CronJob only.
    schedule: str | None = None
    time_zone: str | None = None
    starting_deadline: int | None = None
    successful_history: int | None = None
    failed_history: int | None = None
    # Pod Security.
    restricted: bool = True
    read_only_root: bool = True
    run_as_user: int = DEFAULT_UID
    run_as_group: int | None = None
    fs_group: int | None = None
    # Resources and scheduling.
    cpu: str = DEFAULT_CPU
    memory: str = DEFAULT_MEMORY
    cpu_limit: str | None = None
    memory_limit: str | None = None
    active_deadline: int | None = None
    priority_class: str | None = None
    queue: str | None = None
    patch: dict[str, Any] | None = None

    @property
    def pod_security(self) -> Literal["baseline", "restricted"]:
        """The Pod Security level the pods are generated for, and checked against."""
        return "restricted" if self.restricted else "baseline"


@dataclass
class Built:
    """The generated objects (``documents``, in apply order) and notes for stderr (``warnings``)."""

    documents: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def parse_kube_version(text: str) -> tuple[int, int]:
    """``(1, 31)`` from ``1.31``, ``v1.31`` or ``1.31.2``; UsageError below MIN_KUBE_VERSION."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?", str(text).strip())
    if not m:
        raise UsageError(f"invalid Kubernetes version {text!r}: use MAJOR.MINOR, such as {DEFAULT_KUBE_VERSION}")
    version = (int(m.group(1)), int(m.group(2)))
    if version < _MIN:
        raise UsageError(
            f"Kubernetes {text} is too old: the manifests need {MIN_KUBE_VERSION} or newer (the "
            "Job's batch.kubernetes.io/controller-uid label, podFailurePolicy)"
        )
    return version


def build(spec: WorkloadSpec) -> Built:
    """The manifests for ``spec``: an optional Secret, a PVC for a Job, then the workload.

    Every result passes :func:`restartable.kube.rules.enforce` at ``spec.pod_security``
    (UsageError otherwise); with a ``patch``, the patched workload must also pass the
    Kubernetes schema of ``kube_version`` (which needs kubernetes-validate).
    """
    from .rules import enforce  # rules imports nothing from here; deferred to keep the layers clear

    version = parse_kube_version(spec.kube_version)
    parallelism = _check(spec)
    built = Built(documents=[])
    secret_ref = _store_secret_ref(spec, built)
    if spec.kind == "statefulset":
        built.documents.append(_statefulset(spec, version, secret_ref, built))
    else:
        if spec.pvc is not None:
            built.documents.append(_pvc(spec))
        job = _job(spec, version, secret_ref, parallelism, built)
        built.documents.append(_cronjob(spec, job) if spec.kind == "cronjob" else job)
    if spec.patch is not None:
        built.documents = apply_to_workload(built.documents, spec.patch)
        built.warnings.extend(validate_schema(built.documents, f"{version[0]}.{version[1]}"))
    enforce(built.documents, pod_security=spec.pod_security)
    return built


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    """Multi-document YAML (PyYAML's safe dumper, keys in the order built)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDriver(
            "printing Kubernetes manifests needs PyYAML: pip install 'restartable[kube]' (or pip install PyYAML)"
        ) from None
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=120)


# -- checks -------------------------------------------------------------------------


def _check(spec: WorkloadSpec) -> int:
    """Refuse what cannot work; return the parallelism to generate (1 for a StatefulSet)."""
    if spec.kind not in KINDS:
        raise UsageError(f"unknown kind {spec.kind!r}: use one of {', '.join(KINDS)}")
    if not _DNS_LABEL.fullmatch(spec.name):
        raise UsageError(
            f"invalid name {spec.name!r}: use lowercase letters, digits and '-', starting and ending "
            "with a letter or digit (a DNS label: it names the pods too)"
        )
    completions = spec.completions if isinstance(spec.completions, int) else None
    if len(spec.name) > max_name_length(spec.kind, completions):
        raise UsageError(
            f"name {spec.name!r} is too long ({len(spec.name)} characters): {name_limit_reason(spec.kind, completions)}"
        )
    if spec.namespace is not None and (len(spec.namespace) > 63 or not _DNS_LABEL.fullmatch(spec.namespace)):
        raise UsageError(f"invalid namespace {spec.namespace!r}: a DNS label")
    if not spec.image or any(c.isspace() for c in spec.image):
        raise UsageError(f"invalid image {spec.image!r}")
    if not spec.command or any(not isinstance(a, str) for a in spec.command):
        raise UsageError("no command: give it after `--`, in exec form: -- python /app/job.py ARGS")
    stores = [o for o in (spec.pvc, spec.store_secret, spec.store_url) if o is not None]
    if len(stores) != 1:
        raise UsageError(
            "choose exactly one store: --pvc SIZE (SQLite on a volume), --store-secret SECRET[:KEY] "
            "(an existing Secret holding the URL) or --store URL (a Secret is emitted for it)"
        )
    if spec.access_mode not in ACCESS_MODES:
        raise UsageError(f"invalid access mode {spec.access_mode!r}: use {' or '.join(ACCESS_MODES)}")
    if spec.pvc is not None and not _QUANTITY.fullmatch(spec.pvc):
        raise UsageError(f"invalid volume size {spec.pvc!r}: use a Kubernetes quantity such as 1Gi or 500Mi")
    if spec.pvc is None and (spec.access_mode != "ReadWriteOnce" or spec.storage_class is not None):
        raise UsageError("--access-mode and --storage-class describe the --pvc volume: add --pvc SIZE")
    if spec.storage_class is not None and not _DNS_SUBDOMAIN.fullmatch(spec.storage_class):
        raise UsageError(f"invalid storage class {spec.storage_class!r}")
    if spec.store_url is not None:
        scheme = spec.store_url.split("://", 1)[0].lower() if "://" in spec.store_url else ""
        if scheme in ("sqlite", "file"):
            raise UsageError(
                "a local store inside a pod needs a volume: use --pvc SIZE (SQLite on the claim), "
                "or a PostgreSQL or Redis URL"
            )
        if scheme not in _SHARED_SCHEMES:
            raise UsageError("--store takes a postgresql:// or redis:// URL (a memory:// store dies with the pod)")
    if spec.grace < 1:
        raise UsageError(f"--grace must be at least 1 second, not {spec.grace}")
    if spec.pushgateway is not None and not _HOST_PORT.fullmatch(spec.pushgateway):
        raise UsageError(f"invalid Pushgateway {spec.pushgateway!r}: use HOST:PORT")
    _check_security(spec)
    _check_resources(spec)
    _check_cron(spec)
    if spec.patch is not None and not isinstance(spec.patch, dict):
        raise UsageError("--patch must be a mapping (a JSON merge patch of the workload)")
    for what, value in (
        ("--completions", spec.completions),
        ("--parallelism", spec.parallelism),
        ("--backoff-limit", spec.backoff_limit),
        ("--ttl", spec.ttl),
    ):
        if value is not None and (
            not isinstance(value, int) or value < (0 if what in ("--backoff-limit", "--ttl") else 1)
        ):
            raise UsageError(f"invalid {what} {value!r}")
    if spec.kind == "statefulset":
        given = [
            w
            for w, v in (
                ("--completions", spec.completions),
                ("--parallelism", spec.parallelism),
                ("--backoff-limit", spec.backoff_limit),
                ("--ttl", spec.ttl),
                ("--active-deadline", spec.active_deadline),
                ("--queue", spec.queue),
            )
            if v is not None
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} belong to Jobs: a StatefulSet runs one pod, restarted by the "
                "kubelet, and stays up when done"
            )
        return 1
    if spec.kind in ("job", "cronjob") and spec.completions not in (None, 1):
        raise UsageError(
            "a Job runs the command once to completion: for N shards use `restartable k8s indexed-job --completions N`"
        )
    if spec.kind == "indexed-job":
        if spec.completions is None:
            raise UsageError("an Indexed Job needs --completions N: the number of shards")
        if spec.completions > 100_000:
            raise UsageError("an Indexed Job has at most 100000 completions")
    local = spec.pvc is not None
    default = 1 if spec.kind in ("job", "cronjob") or local else (spec.completions or 1)
    parallelism = spec.parallelism if spec.parallelism is not None else default
    if local and parallelism > 1:
        raise UsageError(
            f"--parallelism {parallelism} with --pvc: a SQLite store on a volume serves one pod at a time "
            "(a ReadWriteOnce volume cannot follow pods onto other nodes, and SQLite must not be shared over a "
            "network filesystem). Use a PostgreSQL or Redis store (--store-secret SECRET or --store "
            "postgresql://...), or --parallelism 1"
        )
    return parallelism


def _check_security(spec: WorkloadSpec) -> None:
    for what, value in (
        ("--run-as-user", spec.run_as_user),
        ("--run-as-group", spec.run_as_group),
        ("--fs-group", spec.fs_group),
    ):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 2**31 - 1:
            raise UsageError(f"invalid {what} {value!r}: a numeric id from 1 to 2147483647")
        if value == 0 and spec.restricted:
            raise UsageError(
                f'{what} 0 is root, which Pod Security "restricted" refuses: pick a non-root id '
                "(the default is 65532), or add --no-restricted for an image that must run as root"
            )
    if not spec.restricted:
        changed = [
            w
            for w, v, d in (
                ("--run-as-user", spec.run_as_user, DEFAULT_UID),
                ("--run-as-group", spec.run_as_group, None),
                ("--fs-group", spec.fs_group, None),
            )
            if v != d
        ]
        if changed:
            raise UsageError(
                f"{', '.join(changed)} set the pod's securityContext, which --no-restricted leaves out "
                "(the image's own user runs the job): drop one or the other"
            )


def _check_resources(spec: WorkloadSpec) -> None:
    cpu = parse_quantity(spec.cpu, what="--cpu", memory=False)
    memory = parse_quantity(spec.memory, what="--memory", memory=True)
    if spec.cpu_limit is not None and parse_quantity(spec.cpu_limit, what="--cpu-limit", memory=False) < cpu:
        raise UsageError(
            f"--cpu-limit {spec.cpu_limit} is below the request --cpu {spec.cpu}: the API server "
            "refuses a limit under its request"
        )
    if spec.memory_limit is not None and parse_quantity(spec.memory_limit, what="--memory-limit", memory=True) < memory:
        raise UsageError(
            f"--memory-limit {spec.memory_limit} is below the request --memory {spec.memory}: the API "
            "server refuses a limit under its request"
        )
    if spec.active_deadline is not None and (not isinstance(spec.active_deadline, int) or spec.active_deadline < 1):
        raise UsageError(f"invalid --active-deadline {spec.active_deadline!r}: a number of seconds, at least 1")
    if spec.priority_class is not None and (
        len(spec.priority_class) > 253 or not _DNS_SUBDOMAIN.fullmatch(spec.priority_class)
    ):
        raise UsageError(
            f"invalid --priority-class {spec.priority_class!r}: the name of a PriorityClass (lowercase "
            "letters, digits, '-' and '.')"
        )
    if spec.queue is not None and (len(spec.queue) > 63 or not _DNS_LABEL.fullmatch(spec.queue)):
        raise UsageError(
            f"invalid --queue {spec.queue!r}: the name of a Kueue LocalQueue in the namespace (a "
            "label value: at most 63 lowercase letters, digits and '-')"
        )


def _check_cron(spec: WorkloadSpec) -> None:
    cron_only = [
        w
        for w, v in (
            ("--schedule", spec.schedule),
            ("--time-zone", spec.time_zone),
            ("--starting-deadline", spec.starting_deadline),
            ("--successful-history", spec.successful_history),
            ("--failed-history", spec.failed_history),
        )
        if v is not None
    ]
    if spec.kind != "cronjob":
        if cron_only:
            raise UsageError(f"{', '.join(cron_only)} belong to CronJobs: use `restartable k8s cronjob`")
        return
    if spec.schedule is None:
        raise UsageError("a CronJob needs --schedule CRON, such as '30 2 * * *' (02:30 every day) or @daily")
    check_schedule(spec.schedule)
    if spec.time_zone is not None:
        check_time_zone(spec.time_zone)
    if spec.starting_deadline is not None and (
        not isinstance(spec.starting_deadline, int) or spec.starting_deadline < 10
    ):
        raise UsageError(
            f"invalid --starting-deadline {spec.starting_deadline!r}: at least 10 seconds (the "
            "controller looks every 10 s, so a shorter deadline can skip every run)"
        )
    for what, value in (("--successful-history", spec.successful_history), ("--failed-history", spec.failed_history)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise UsageError(f"invalid {what} {value!r}: a number of finished Jobs to keep, 0 or more")


# -- objects ------------------------------------------------------------------------------


def _labels(spec: WorkloadSpec) -> dict[str, str]:
    """The recommended app.kubernetes.io labels (version from the image tag when it is a valid label value)."""
    labels = {
        "app.kubernetes.io/name": spec.name,
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "batch",
    }
    tail = spec.image.rsplit("/", 1)[-1]
    if ":" in tail and "@" not in tail:
        tag = tail.split(":", 1)[1]
        if _LABEL_VALUE.fullmatch(tag):
            labels["app.kubernetes.io/version"] = tag
    labels["app.kubernetes.io/managed-by"] = "restartable"
    return labels


def _metadata(spec: WorkloadSpec, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if spec.namespace is not None:
        meta["namespace"] = spec.namespace
    meta["labels"] = _labels(spec)
    return meta


def _store_secret_ref(spec: WorkloadSpec, built: Built) -> dict[str, str] | None:
    """The secretKeyRef for RESTARTABLE_STORE (emitting the Secret for ``store_url``), or None for ``pvc``."""
    if spec.store_secret is not None:
        name, _, key = spec.store_secret.partition(":")
        key = key or "url"
        if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name) or not _SECRET_KEY.fullmatch(key):
            raise UsageError(
                f"invalid --store-secret {spec.store_secret!r}: use SECRET or SECRET:KEY (a Secret in "
                "the same namespace whose KEY holds the store URL)"
            )
        return {"name": name, "key": key}
    if spec.store_url is not None:
        name = f"{spec.name}-store"
        built.documents.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": _metadata(spec, name),
                "type": "Opaque",
                "stringData": {"url": spec.store_url},
            }
        )
        built.warnings.append(
            f"the Secret {name!r} in this output holds the store URL with its credentials in plain text: do not "
            "commit or share it; better create the Secret yourself (kubectl create secret generic "
            f"{name} --from-literal=url=...) and pass --store-secret {name}"
        )
        return {"name": name, "key": "url"}
    return None


def _pvc(spec: WorkloadSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(spec, f"{spec.name}-checkpoints"),
        "spec": _claim_spec(spec),
    }


def _claim_spec(spec: WorkloadSpec) -> dict[str, Any]:
    claim: dict[str, Any] = {"accessModes": [spec.access_mode], "resources": {"requests": {"storage": spec.pvc}}}
    if spec.storage_class is not None:
        claim["storageClassName"] = spec.storage_class
    return claim


def _field(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


def _env(spec: WorkloadSpec, secret_ref: dict[str, str] | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # The lease owner (restartable._proc.current_owner): which pod, on which node.
        {"name": "RESTARTABLE_POD_NAME", "valueFrom": _field("metadata.name")},
        {"name": "RESTARTABLE_POD_UID", "valueFrom": _field("metadata.uid")},
        {"name": "RESTARTABLE_NODE_NAME", "valueFrom": _field("spec.nodeName")},
    ]
    if spec.kind != "statefulset":
        # The run is the Job's uid: the Job controller labels each of its pods with
        # batch.kubernetes.io/controller-uid (Kubernetes >= 1.27; documented under "Well-Known
        # Labels, Annotations and Taints": https://kubernetes.io/docs/reference/labels-annotations-taints/
        # #batchkubernetesio-controller-uid), and the downward API reads a pod label into an env
        # var with fieldRef metadata.labels['<KEY>'] (EnvVarSource.fieldRef in the API reference).
        # Pods of one Job resume its run; the next Job, a new uid, starts a new run.
        env.append(
            {"name": "RESTARTABLE_RUN", "valueFrom": _field("metadata.labels['batch.kubernetes.io/controller-uid']")}
        )
    if spec.kind == "indexed-job":
        # JOB_COMPLETION_INDEX is set by Kubernetes; the shard count is ours to give.
        env.append({"name": "RESTARTABLE_SHARDS", "value": str(spec.completions)})
    if secret_ref is not None:
        env.append({"name": "RESTARTABLE_STORE", "valueFrom": {"secretKeyRef": dict(secret_ref)}})
    else:
        env.append({"name": "RESTARTABLE_STORE", "value": SQLITE_URL})  # a path on the claim, no credentials
    if spec.pushgateway is not None:
        env.append({"name": "RESTARTABLE_PUSHGATEWAY", "value": spec.pushgateway})
    if _read_only_root(spec):
        env.append({"name": "TMPDIR", "value": TMP_DIR})  # the root filesystem is read-only; /tmp is an emptyDir
    return env


def _read_only_root(spec: WorkloadSpec) -> bool:
    return spec.restricted and spec.read_only_root


def _wrapped(spec: WorkloadSpec, command: list[str]) -> list[str]:
    """``python SCRIPT.py ARGS`` as ``python -m restartable run SCRIPT.py ARGS``; anything else verbatim.

    The Job's excepthook covers a library error raised once the script has created its
    Job; the wrapper also covers one raised before (a bad store URL, a WorkQueue without
    a Job), so every permanent error reaches the failure policy as its exit code. Same
    interpreter, same process (pid 1 still gets SIGTERM), same ``sys.argv``. Only the
    plain form is rewritten: interpreter options (``python -u``) or ``-m module`` are
    left alone, as are other programs.
    """
    if not spec.wrap or len(command) < 2:
        return command
    prog, script = command[0], command[1]
    if _PYTHON.fullmatch(prog.rsplit("/", 1)[-1]) and script.endswith(".py") and not script.startswith("-"):
        return [prog, "-m", "restartable", "run", *command[1:]]
    return command


def _verbatim(arg: str) -> str:
    """Kubernetes expands ``$(VAR)`` in command and args and turns ``$$`` into ``$``: double every ``$``."""
    return arg.replace("$", "$$")


def _resources(spec: WorkloadSpec) -> dict[str, Any]:
    # No CPU limit unless asked: a limit throttles the job even on an idle node (CFS quota),
    # and a throttled job checkpoints late. A memory limit equal to the request: memory cannot
    # be throttled, and a pod above its request is what the kubelet evicts first under pressure.
    limits: dict[str, str] = {}
    if spec.cpu_limit is not None:
        limits["cpu"] = spec.cpu_limit
    limits["memory"] = spec.memory_limit if spec.memory_limit is not None else spec.memory
    return {"requests": {"cpu": spec.cpu, "memory": spec.memory}, "limits": limits}


def _container(spec: WorkloadSpec, secret_ref: dict[str, str] | None) -> dict[str, Any]:
    command = _wrapped(spec, [_verbatim(a) for a in spec.command])
    if spec.kind == "statefulset":
        # Exec form all the way down: the wrapper runs the command as its child and passes signals on.
        command = [spec.python, "-m", "restartable.kube.idle", "--marker", MARKER, "--", *command]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "command": command,
        "env": _env(spec, secret_ref),
        "resources": _resources(spec),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.restricted:
        security: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        if _read_only_root(spec):
            security["readOnlyRootFilesystem"] = True  # beyond the profile: the image cannot be altered at run time
        container["securityContext"] = security
    if spec.kind == "statefulset":
        container["readinessProbe"] = {
            "exec": {"command": ["test", "-f", MARKER]},
            "periodSeconds": 10,
            "failureThreshold": 1,
        }
    mounts = []
    if spec.pvc is not None or spec.kind == "statefulset":
        mounts.append({"name": "data", "mountPath": DATA_DIR})
    if _read_only_root(spec):
        mounts.append({"name": "tmp", "mountPath": TMP_DIR})
    if mounts:
        container["volumeMounts"] = mounts
    return container


def _pod_security_context(spec: WorkloadSpec) -> dict[str, Any]:
    group = spec.run_as_group if spec.run_as_group is not None else spec.run_as_user
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": spec.run_as_user,
        "runAsGroup": group,
        # The volume's files get this group (and group write), so a non-root user can write
        # the SQLite file on the claim whatever uid created it before.
        "fsGroup": spec.fs_group if spec.fs_group is not None else group,
    }
    if spec.pvc is not None:
        context["fsGroupChangePolicy"] = "OnRootMismatch"  # no recursive chown of the whole volume at every start
    context["seccompProfile"] = {"type": "RuntimeDefault"}
    return context


def _pod_spec(spec: WorkloadSpec, secret_ref: dict[str, str] | None) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "restartPolicy": "Always" if spec.kind == "statefulset" else "Never",
        # SIGTERM, then SIGKILL after this: the item in flight must finish and the final
        # checkpoint be written in it.
        "terminationGracePeriodSeconds": spec.grace,
        "automountServiceAccountToken": False,  # the job never talks to the API server
    }
    if spec.priority_class is not None:
        pod["priorityClassName"] = spec.priority_class
    if spec.restricted:
        pod["securityContext"] = _pod_security_context(spec)
    pod["containers"] = [_container(spec, secret_ref)]
    volumes: list[dict[str, Any]] = []
    if spec.kind != "statefulset" and spec.pvc is not None:
        volumes.append({"name": "data", "persistentVolumeClaim": {"claimName": f"{spec.name}-checkpoints"}})
    elif spec.kind == "statefulset" and spec.pvc is None:
        # The store is shared; the volume only holds the COMPLETED marker, for the pod's lifetime.
        volumes.append({"name": "data", "emptyDir": {}})
    if _read_only_root(spec):
        volumes.append({"name": "tmp", "emptyDir": {}})
    if volumes:
        pod["volumes"] = volumes
    return pod


def _failure_policy(spec: WorkloadSpec, version: tuple[int, int], per_index: bool) -> dict[str, Any]:
    exit_rule: dict[str, Any] = {
        "action": "FailIndex" if per_index else "FailJob",
        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": sorted(PERMANENT_CODES)},
    }
    if version < _PER_VERSION:
        exit_rule["onPodConditions"] = []  # the 1.27/1.28 schema lists it on every rule
    return {
        "rules": [
            exit_rule,
            # Evictions, preemptions and drains: the job checkpointed on SIGTERM, so do not count them.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _job(
    spec: WorkloadSpec, version: tuple[int, int], secret_ref: dict[str, str] | None, parallelism: int, built: Built
) -> dict[str, Any]:
    indexed = spec.kind == "indexed-job"
    recent = version >= _PER_VERSION
    backoff = spec.backoff_limit if spec.backoff_limit is not None else DEFAULT_BACKOFF
    job_spec: dict[str, Any] = {}
    if indexed:
        job_spec.update(completionMode="Indexed", completions=spec.completions)
    job_spec["parallelism"] = parallelism
    if indexed and recent:
        job_spec["backoffLimitPerIndex"] = backoff  # a failing shard does not use up the others' retries
    else:
        job_spec["backoffLimit"] = backoff
    job_spec["podFailurePolicy"] = _failure_policy(spec, version, per_index=indexed and recent)
    if recent:
        job_spec["podReplacementPolicy"] = "Failed"
    else:
        built.warnings.append(
            f"Kubernetes {version[0]}.{version[1]} does not enable podReplacementPolicy by default (beta in 1.29): "
            "omitted, so a replacement pod may start while the old one still terminates; the lease and "
            "fencing keep the checkpoint safe meanwhile"
        )
        if indexed:
            built.warnings.append(
                f"Kubernetes {version[0]}.{version[1]} does not enable backoffLimitPerIndex by default (beta in "
                "1.29): a shared backoffLimit is used, and a permanent error fails the whole Job (FailJob)"
            )
    if spec.active_deadline is not None:
        # Counted from the (un)suspension: past it, the pods get SIGTERM and checkpoint, the Job fails.
        job_spec["activeDeadlineSeconds"] = spec.active_deadline
    if spec.ttl is not None or spec.kind != "cronjob":
        # A CronJob keeps its finished Jobs by count (the history limits); a TTL would undercut them.
        job_spec["ttlSecondsAfterFinished"] = spec.ttl if spec.ttl is not None else DEFAULT_TTL
    if spec.queue is not None:
        job_spec["suspend"] = True  # Kueue admits the Job by unsuspending it once its quota allows
    job_spec["template"] = {"metadata": {"labels": _labels(spec)}, "spec": _pod_spec(spec, secret_ref)}
    meta = _metadata(spec, spec.name)
    if spec.queue is not None:
        meta["labels"][QUEUE_LABEL] = spec.queue
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def _cronjob(spec: WorkloadSpec, job: dict[str, Any]) -> dict[str, Any]:
    """A CronJob whose jobTemplate is ``job`` (its labels, Kueue's included, and its spec)."""
    cron: dict[str, Any] = {"schedule": check_schedule(spec.schedule or "")}
    if spec.time_zone is not None:
        cron["timeZone"] = spec.time_zone
    # Forbid: a night's run that is still going (or retrying) is never joined by the next
    # night's Job; the next one starts once it ended, if still within the starting deadline.
    cron["concurrencyPolicy"] = "Forbid"
    cron["startingDeadlineSeconds"] = (
        spec.starting_deadline if spec.starting_deadline is not None else DEFAULT_STARTING_DEADLINE
    )
    cron["successfulJobsHistoryLimit"] = (
        spec.successful_history if spec.successful_history is not None else DEFAULT_SUCCESSFUL_HISTORY
    )
    cron["failedJobsHistoryLimit"] = spec.failed_history if spec.failed_history is not None else DEFAULT_FAILED_HISTORY
    cron["jobTemplate"] = {"metadata": {"labels": job["metadata"]["labels"]}, "spec": job["spec"]}
    meta = _metadata(spec, spec.name)
    return {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta, "spec": cron}


def _statefulset(
    spec: WorkloadSpec, version: tuple[int, int], secret_ref: dict[str, str] | None, built: Built
) -> dict[str, Any]:
    selector = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/instance": spec.name}
    sts_spec: dict[str, Any] = {"replicas": 1, "selector": {"matchLabels": selector}}
    if version < _SERVICE_NAME_OPTIONAL:
        # Required by the schema before 1.33; no Service is needed (nothing connects to the pod).
        sts_spec["serviceName"] = spec.name
    sts_spec["template"] = {"metadata": {"labels": _labels(spec)}, "spec": _pod_spec(spec, secret_ref)}
    if spec.pvc is not None:
        sts_spec["volumeClaimTemplates"] = [{"metadata": {"name": "data"}, "spec": _claim_spec(spec)}]
    else:
        built.warnings.append(
            "the StatefulSet's COMPLETED marker lives in an emptyDir without --pvc: a rescheduled pod runs the "
            "command again, which finds its run completed in the store (while the record is kept) and stops"
        )
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _metadata(spec, spec.name), "spec": sts_spec}
