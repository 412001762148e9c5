"""Our own checks of Kubernetes manifests: what the API schema cannot see.

The schema says a field has the right type; these rules say the workload behaves as a
restartable job needs. ``restartable k8s`` runs them before printing, and the tests run
them on every generated manifest. They work on any manifest (parsed YAML as dicts):

* ``never-with-failure-policy``: a Job with a ``podFailurePolicy`` must use
  ``restartPolicy: Never`` (the API demands it; ``OnFailure`` restarts the container in
  place, where no policy sees the exit code).
* ``job-restart-policy``: a Job's pods use ``Never``: a restart is a new pod, which
  resumes from the checkpoint, and every failure is visible to the failure policy.
* ``failure-policy``: the rules name an existing container; ``FailIndex`` needs
  ``backoffLimitPerIndex``; ``podReplacementPolicy`` is ``Failed`` with a failure policy.
* ``shard-count``: an Indexed Job that sets ``RESTARTABLE_SHARDS`` sets it to its completions.
* ``statefulset-always``: a StatefulSet allows only ``restartPolicy: Always`` and has no
  failure policy.
* ``exec-form``: ``command`` and ``args`` are lists of strings, and a shell run with ``-c``
  must ``exec`` the job (``cd /app && exec python job.py``), or the shell (pid 1)
  receives SIGTERM and the job never does.
* ``no-url-in-env``: no env ``value`` holds a URL with a host (``scheme://host...``): a
  store URL carries credentials and belongs in a Secret. A path URL such as
  ``sqlite:////data/checkpoints.db`` holds none and is allowed. Nor may a command line
  carry a URL with a password.
* ``kueue``: a workload labelled ``kueue.x-k8s.io/queue-name`` is created suspended
  (``suspend: true``), or it starts before Kueue admits it.
* ``cronjob``: a CronJob uses ``concurrencyPolicy: Forbid`` (two Jobs of one schedule would
  be two runs writing the same output) and keeps no ``CRON_TZ=``/``TZ=`` in its schedule.

``check(documents, pod_security=LEVEL)`` adds the Pod Security Standard ``LEVEL``
("baseline" or "restricted", :mod:`restartable.kube.podsecurity`); ``enforce`` checks
"restricted" unless told otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import UsageError
from .podsecurity import Level
from .podsecurity import pod_security as _pod_security

__all__ = ["RULES", "check", "enforce"]

RULES = (
    "never-with-failure-policy",
    "job-restart-policy",
    "failure-policy",
    "shard-count",
    "statefulset-always",
    "exec-form",
    "no-url-in-env",
    "kueue",
    "cronjob",
)
_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

_SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox"})
_HOST_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s]")
# `exec` starting a command of the script: "exec python job.py", "cd /app && exec python job.py".
_EXEC = re.compile(r"(^|[;&|\n])\s*exec\s")
_PASSWORD_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


def check(documents: list[dict[str, Any]], *, pod_security: Level | None = None) -> list[str]:
    """Every rule broken by ``documents``, as ``"<rule>: <kind>/<name>: <what>"`` lines (empty when clean).

    With ``pod_security``, the controls of that Pod Security Standard level too.
    """
    problems: list[str] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind", "?")
        where = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"

        def bad(rule: str, what: str, where: str = where) -> None:
            problems.append(f"{rule}: {where}: {what}")

        spec = doc.get("spec") or {}
        if kind == "Job":
            _check_job(spec, bad)
            _check_kueue(doc, bad)
        elif kind == "CronJob":
            _check_job(((spec.get("jobTemplate") or {}).get("spec")) or {}, bad)
            _check_kueue(spec.get("jobTemplate") or {}, bad)
            if spec.get("concurrencyPolicy") != "Forbid":
                bad(
                    "cronjob",
                    f"concurrencyPolicy is {spec.get('concurrencyPolicy', 'Allow')!r}: use Forbid, or two "
                    "nights' Jobs run at once as two runs",
                )
            if re.match(r"\s*(CRON_)?TZ=", str(spec.get("schedule", ""))):
                bad("cronjob", "the schedule holds TZ= or CRON_TZ=, which Kubernetes refuses: use spec.timeZone")
        elif kind == "StatefulSet":
            pod = ((spec.get("template") or {}).get("spec")) or {}
            policy = pod.get("restartPolicy", "Always")
            if policy != "Always":
                bad(
                    "statefulset-always",
                    f"restartPolicy is {policy!r}; a StatefulSet allows only Always (the "
                    "idle wrapper keeps the pod up when done instead)",
                )
            if _has_key(spec, "podFailurePolicy"):
                bad("statefulset-always", "a StatefulSet has no podFailurePolicy")
        for pod in _pod_specs(doc):
            _check_pod(pod, bad)
    if pod_security is not None:
        problems.extend(_pod_security(documents, pod_security))
    return problems


def enforce(documents: list[dict[str, Any]], *, pod_security: Level | None = "restricted") -> None:
    """Raise UsageError (exit 2) naming every broken rule (Pod Security ``pod_security`` included)."""
    problems = check(documents, pod_security=pod_security)
    if problems:
        hint = ""
        if any(p.startswith("pod-security/") for p in problems):
            hint = (
                f"\n(Pod Security {pod_security!r} is what a namespace enforcing it admits; for an image that "
                'cannot run that way, generate with --no-restricted and a namespace at "baseline")'
                if pod_security == "restricted"
                else '\n(Pod Security "baseline" is the least restartable generates for)'
            )
        raise UsageError("the manifests break restartable's rules:\n  " + "\n  ".join(problems) + hint)


def _check_kueue(obj: dict[str, Any], bad: Any) -> None:
    """``obj`` is a Job or a CronJob's jobTemplate: with Kueue's queue label it must be created suspended."""
    labels = ((obj.get("metadata") or {}).get("labels")) or {}
    if _QUEUE_LABEL in labels and (obj.get("spec") or {}).get("suspend") is not True:
        bad(
            "kueue",
            f"labelled {_QUEUE_LABEL}={labels[_QUEUE_LABEL]!r} but not suspend: true, so it starts "
            "before Kueue admits it",
        )


def _check_job(spec: dict[str, Any], bad: Any) -> None:
    pod = ((spec.get("template") or {}).get("spec")) or {}
    policy = pod.get("restartPolicy")
    failure_policy = spec.get("podFailurePolicy")
    if failure_policy is not None and policy != "Never":
        bad("never-with-failure-policy", f"a podFailurePolicy needs restartPolicy Never, not {policy!r}")
    elif policy != "Never":
        bad(
            "job-restart-policy",
            f"restartPolicy is {policy!r}: use Never, so a failed pod is replaced by a new "
            "one that resumes from the checkpoint and the failure policy sees every exit",
        )
    if failure_policy is not None:
        containers = {c.get("name") for c in pod.get("containers") or []}
        for i, rule in enumerate(failure_policy.get("rules") or []):
            codes = rule.get("onExitCodes") or {}
            name = codes.get("containerName")
            if name is not None and name not in containers:
                bad("failure-policy", f"rule {i} names container {name!r}, which the pod does not have")
            if rule.get("action") == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
                bad("failure-policy", f"rule {i} uses FailIndex, which needs backoffLimitPerIndex")
        replacement = spec.get("podReplacementPolicy")
        if replacement is not None and replacement != "Failed":
            bad(
                "failure-policy",
                f"podReplacementPolicy is {replacement!r}; with a podFailurePolicy only Failed is allowed",
            )
    if spec.get("completionMode") == "Indexed":
        for container in pod.get("containers") or []:
            for env in container.get("env") or []:
                if (
                    env.get("name") == "RESTARTABLE_SHARDS"
                    and "value" in env
                    and str(env["value"]) != str(spec.get("completions"))
                ):
                    bad(
                        "shard-count",
                        f"RESTARTABLE_SHARDS is {env['value']!r} but completions is "
                        f"{spec.get('completions')!r}: some shards would never run, or run twice",
                    )


def _check_pod(pod: dict[str, Any], bad: Any) -> None:
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        cname = container.get("name", "?")
        argv: list[str] = []
        for field in ("command", "args"):
            value = container.get(field)
            if value is None:
                continue
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                bad("exec-form", f"container {cname!r}: {field} must be a list of strings (exec form)")
                continue
            argv.extend(value)
        problem = _shell_without_exec(argv)
        if problem:
            bad("exec-form", f"container {cname!r}: {problem}")
        for arg in argv:
            if _PASSWORD_URL.search(arg):
                bad(
                    "no-url-in-env",
                    f"container {cname!r}: the command line carries a URL with a password; "
                    "pass it through a Secret (RESTARTABLE_STORE from secretKeyRef)",
                )
        for env in container.get("env") or []:
            value = env.get("value")
            if isinstance(value, str) and _HOST_URL.search(value):
                bad(
                    "no-url-in-env",
                    f"container {cname!r}: env {env.get('name')!r} holds a URL with a host; "
                    "put it in a Secret and use valueFrom.secretKeyRef",
                )


def _shell_without_exec(argv: list[str]) -> str | None:
    """Why ``argv`` runs the job under a shell that keeps SIGTERM to itself, or None."""
    if not argv:
        return None
    prog = argv[0].rsplit("/", 1)[-1]
    if prog not in _SHELLS or "-c" not in argv[1:]:
        return None
    i = argv.index("-c", 1)
    script = argv[i + 1] if i + 1 < len(argv) else ""
    if _EXEC.search(script):
        return None
    return (
        f"`{prog} -c` without exec: the shell, not the job, gets SIGTERM and the job is killed without "
        'its final checkpoint; use the exec form (["python", "job.py"]) or start the script with exec'
    )


def _pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Pod":
        yield spec
    elif kind in ("Job", "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet"):
        yield ((spec.get("template") or {}).get("spec")) or {}
    elif kind == "CronJob":
        yield ((((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}


def _has_key(value: Any, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False
