"""Kubernetes: manifests for Jobs, Indexed Jobs and StatefulSets, their rule checks, the idle wrapper.

``restartable k8s job|indexed-job|statefulset NAME --image IMG ... -- COMMAND...`` prints
the manifests (:mod:`restartable.kube.manifests`), after checking them with our own
rules (:mod:`restartable.kube.rules`). See docs/kubernetes.md.
"""

from __future__ import annotations

from .manifests import (
    DEFAULT_KUBE_VERSION,
    MIN_KUBE_VERSION,
    Built,
    WorkloadSpec,
    build,
    dump_yaml,
)
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
]
