"""Kubernetes: manifests for Jobs, Indexed Jobs, CronJobs and StatefulSets, their checks, the idle wrapper.

``restartable k8s job|indexed-job|cronjob|statefulset NAME --image IMG ... -- COMMAND...``
prints the manifests (:mod:`restartable.kube.manifests`), after checking them with our
own rules (:mod:`restartable.kube.rules`) and the Pod Security Standards
(:mod:`restartable.kube.podsecurity`). Name limits and quantities live in
:mod:`restartable.kube.limits`, the CronJob schedule in :mod:`restartable.kube.cron`,
``--patch`` in :mod:`restartable.kube.patch`. See docs/kubernetes.md.
"""

from __future__ import annotations

from .limits import max_name_length
from .manifests import (
    DEFAULT_KUBE_VERSION,
    MIN_KUBE_VERSION,
    Built,
    WorkloadSpec,
    build,
    dump_yaml,
)
from .patch import merge_patch
from .podsecurity import pod_security
from .rules import check, enforce

__all__ = [
    "DEFAULT_KUBE_VERSION",
    "MIN_KUBE_VERSION",
    "Built",
    "WorkloadSpec",
    "build",
    "check",
    "dump_yaml",
    "enforce",
    "max_name_length",
    "merge_patch",
    "pod_security",
]
