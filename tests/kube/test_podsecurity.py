"""Pod Security Standards: every generated manifest meets each control of "restricted" (and of
"baseline", which restricted includes), and each control of our checker fails on a manifest
that breaks it, while the values the standard allows still pass.

The controls and their allowed values follow the standard's written text (kubernetes.io,
"Pod Security Standards", the Baseline and Restricted tables).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from restartable.errors import UsageError
from restartable.kube import WorkloadSpec, build, check
from restartable.kube.podsecurity import BASELINE_RULES, RESTRICTED_RULES, pod_security

KINDS = ("job", "indexed-job", "cronjob", "statefulset")
STORES = ("pvc", "secret", "url")
ALL_RULES = [*BASELINE_RULES, *RESTRICTED_RULES]


def _spec(kind: str, store: str, **kw: Any) -> WorkloadSpec:
    stores = {
        "pvc": {"pvc": "1Gi"},
        "secret": {"store_secret": "ckpt-db"},
        "url": {"store_url": "postgresql://app:pw@db.example/app"},
    }
    extra = {"indexed-job": {"completions": 3, "parallelism": 1}, "cronjob": {"schedule": "@daily"}}.get(kind, {})
    return WorkloadSpec(
        kind=kind,
        name="export",
        image="reg/export:1",  # type: ignore[arg-type]
        command=("python", "/app/job.py"),
        **{**stores[store], **extra, **kw},
    )


def _pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod template metadata, pod spec) of the workload in ``docs``."""
    doc = next(d for d in docs if d["kind"] in ("Job", "CronJob", "StatefulSet"))
    owner = doc["spec"]["jobTemplate"] if doc["kind"] == "CronJob" else doc
    template = owner["spec"]["template"]
    return template.setdefault("metadata", {}), template["spec"]


def _main(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["containers"][0]


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.setdefault("securityContext", {})


# -- every kind x store meets every control ------------------------------------------------------


@pytest.mark.parametrize("rule", ALL_RULES)
def test_restricted_manifests_meet_the_control(rule: str) -> None:
    for kind in KINDS:
        for store in STORES:
            docs = build(_spec(kind, store)).documents
            assert pod_security(docs, "restricted", only=rule) == [], (kind, store)


@pytest.mark.parametrize("rule", list(BASELINE_RULES))
def test_opted_out_manifests_still_meet_the_baseline_control(rule: str) -> None:
    for kind in KINDS:
        for store in STORES:
            docs = build(_spec(kind, store, restricted=False)).documents
            assert pod_security(docs, "baseline", only=rule) == [], (kind, store)


def test_opting_out_leaves_the_restricted_fields_out_and_says_which_controls_that_breaks() -> None:
    docs = build(_spec("job", "pvc", restricted=False)).documents
    meta, pod = _pod(docs)
    assert "securityContext" not in pod and "securityContext" not in _main(pod)
    assert {v["name"] for v in pod["volumes"]} == {"data"}  # no /tmp emptyDir: the root filesystem is writable
    broken = {p.split(":")[0] for p in pod_security(docs, "restricted")}
    assert broken == {
        "pod-security/privilege-escalation",
        "pod-security/running-as-non-root",
        "pod-security/seccomp",
        "pod-security/capabilities",
    }
    assert check(docs, pod_security="baseline") == []


def test_the_restricted_defaults_and_the_hardening_beyond_the_profile() -> None:
    meta, pod = _pod(build(_spec("job", "pvc")).documents)
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    main = _main(pod)
    assert main["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert {"name": "TMPDIR", "value": "/tmp"} in main["env"]
    meta, pod = _pod(
        build(_spec("statefulset", "secret", run_as_user=1000, fs_group=2000, read_only_root=False)).documents
    )
    assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsGroup"] == 1000
    assert pod["securityContext"]["fsGroup"] == 2000 and "fsGroupChangePolicy" not in pod["securityContext"]
    assert "readOnlyRootFilesystem" not in _main(pod)["securityContext"]
    assert all(m["name"] != "tmp" for m in _main(pod)["volumeMounts"])
    assert "TMPDIR" not in {e["name"] for e in _main(pod)["env"]}
    with pytest.raises(UsageError, match="root"):
        build(_spec("job", "pvc", run_as_user=0))
    with pytest.raises(UsageError, match="--no-restricted"):
        build(_spec("job", "pvc", restricted=False, fs_group=1000))


# -- each control fails on a manifest that breaks it, and passes the values the standard allows ------

Mutate = Callable[[dict[str, Any], dict[str, Any]], None]


def _add_volume(volume: dict[str, Any]) -> Mutate:
    return lambda meta, pod: pod.setdefault("volumes", []).append(volume)


def _init_container(**fields: Any) -> Mutate:
    def mutate(meta: dict[str, Any], pod: dict[str, Any]) -> None:
        init = copy.deepcopy(_main(pod))
        init.update(name="init", **fields)
        pod["initContainers"] = [init]

    return mutate


def _container_sc(**fields: Any) -> Mutate:
    return lambda meta, pod: _sc(_main(pod)).update(fields)


def _pod_sc(**fields: Any) -> Mutate:
    return lambda meta, pod: _sc(pod).update(fields)


def _probe(probe: dict[str, Any]) -> Mutate:
    return lambda meta, pod: _main(pod).update(livenessProbe=probe)


def _windows_with(mutate: Mutate) -> Mutate:
    def both(meta: dict[str, Any], pod: dict[str, Any]) -> None:
        mutate(meta, pod)
        pod["os"] = {"name": "windows"}

    return both


def _drop(*path: str) -> Mutate:
    def mutate(meta: dict[str, Any], pod: dict[str, Any]) -> None:
        target = pod if path[0] == "pod" else _main(pod)
        for key in path[1:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# rule -> (violations, allowed variants); each violation must be caught, each variant must pass.
CASES: dict[str, tuple[list[Mutate], list[Mutate]]] = {
    "host-process": (
        [_pod_sc(windowsOptions={"hostProcess": True}), _container_sc(windowsOptions={"hostProcess": True})],
        [_pod_sc(windowsOptions={"hostProcess": False})],
    ),
    "host-namespaces": (
        [
            lambda m, p: p.update(hostNetwork=True),
            lambda m, p: p.update(hostPID=True),
            lambda m, p: p.update(hostIPC=True),
        ],
        [lambda m, p: p.update(hostNetwork=False, hostPID=False, hostIPC=False)],
    ),
    "privileged": (
        [_container_sc(privileged=True), _init_container(securityContext={"privileged": True})],
        [_container_sc(privileged=False)],
    ),
    "capabilities-baseline": (
        [_container_sc(capabilities={"add": ["SYS_ADMIN"]})],
        [_container_sc(capabilities={"drop": ["ALL"], "add": ["CHOWN", "KILL"]})],
    ),
    "host-path-volumes": (
        [_add_volume({"name": "host", "hostPath": {"path": "/var/run"}})],
        [_add_volume({"name": "cfg", "configMap": {"name": "cfg"}})],
    ),
    "host-ports": (
        [lambda m, p: _main(p).update(ports=[{"containerPort": 8080, "hostPort": 8080}])],
        [
            lambda m, p: _main(p).update(ports=[{"containerPort": 8080, "hostPort": 0}]),
            lambda m, p: _main(p).update(ports=[{"containerPort": 8080}]),
        ],
    ),
    "host-probes": (
        [
            _probe({"httpGet": {"host": "10.0.0.1", "port": 80}}),
            _probe({"tcpSocket": {"host": "metadata.internal", "port": 80}}),
            lambda m, p: _main(p).update(lifecycle={"preStop": {"httpGet": {"host": "x", "port": 1}}}),
        ],
        [_probe({"httpGet": {"path": "/healthz", "port": 80}}), _probe({"tcpSocket": {"host": "", "port": 80}})],
    ),
    "apparmor": (
        [
            _pod_sc(appArmorProfile={"type": "Unconfined"}),
            _container_sc(appArmorProfile={"type": "Unconfined"}),
            lambda m, p: m.setdefault("annotations", {}).update(
                {"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}
            ),
        ],
        [
            _pod_sc(appArmorProfile={"type": "RuntimeDefault"}),
            _container_sc(appArmorProfile={"type": "Localhost", "localhostProfile": "p"}),
            lambda m, p: m.setdefault("annotations", {}).update(
                {"container.apparmor.security.beta.kubernetes.io/main": "localhost/p"}
            ),
        ],
    ),
    "selinux": (
        [
            _pod_sc(seLinuxOptions={"type": "spc_t"}),
            _container_sc(seLinuxOptions={"user": "root"}),
            _pod_sc(seLinuxOptions={"role": "sysadm_r"}),
        ],
        [
            _pod_sc(seLinuxOptions={"type": "container_t", "level": "s0:c123,c456"}),
            _container_sc(seLinuxOptions={"type": "container_init_t"}),
        ],
    ),
    "proc-mount": ([_container_sc(procMount="Unmasked")], [_container_sc(procMount="Default")]),
    "seccomp-baseline": (
        [_pod_sc(seccompProfile={"type": "Unconfined"}), _container_sc(seccompProfile={"type": "Unconfined"})],
        [_container_sc(seccompProfile={"type": "Localhost", "localhostProfile": "p.json"})],
    ),
    "sysctls": (
        [_pod_sc(sysctls=[{"name": "kernel.msgmax", "value": "1"}])],
        [
            _pod_sc(
                sysctls=[
                    {"name": "net.ipv4.tcp_keepalive_time", "value": "60"},
                    {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"},
                ]
            )
        ],
    ),
    "volume-types": (
        [
            _add_volume({"name": "nfs", "nfs": {"server": "nas", "path": "/x"}}),
            _add_volume({"name": "host", "hostPath": {"path": "/"}}),
            _add_volume({"name": "empty"}),
        ],
        [
            _add_volume({"name": "s", "secret": {"secretName": "s"}}),
            _add_volume({"name": "p", "projected": {"sources": []}}),
            _add_volume({"name": "e", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}),
        ],
    ),
    "privilege-escalation": (
        [
            _container_sc(allowPrivilegeEscalation=True),
            _drop("main", "securityContext", "allowPrivilegeEscalation"),
            _init_container(securityContext={"capabilities": {"drop": ["ALL"]}}),
        ],
        [_windows_with(_drop("main", "securityContext", "allowPrivilegeEscalation"))],
    ),
    "running-as-non-root": (
        [
            _pod_sc(runAsNonRoot=False),
            _container_sc(runAsNonRoot=False),
            _drop("pod", "securityContext", "runAsNonRoot"),
        ],
        [lambda m, p: (_sc(p).pop("runAsNonRoot"), _sc(_main(p)).update(runAsNonRoot=True))],
    ),
    "running-as-non-root-user": (
        [_pod_sc(runAsUser=0), _container_sc(runAsUser=0)],
        [_container_sc(runAsUser=1001), _drop("pod", "securityContext", "runAsUser")],
    ),
    "seccomp": (
        [
            _drop("pod", "securityContext", "seccompProfile"),
            _container_sc(seccompProfile={"type": "Unconfined"}),
            _pod_sc(seccompProfile={"type": "Unconfined"}),
        ],
        [
            lambda m, p: (
                _sc(p).pop("seccompProfile"),
                _sc(_main(p)).update(seccompProfile={"type": "RuntimeDefault"}),
            ),
            _pod_sc(seccompProfile={"type": "Localhost", "localhostProfile": "p.json"}),
            _windows_with(_drop("pod", "securityContext", "seccompProfile")),
        ],
    ),
    "capabilities": (
        [
            _container_sc(capabilities={"drop": ["NET_RAW"]}),
            _container_sc(capabilities={"drop": ["ALL"], "add": ["CHOWN"]}),
            _drop("main", "securityContext", "capabilities"),
        ],
        [_container_sc(capabilities={"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})],
    ),
}


def test_every_control_of_the_standard_has_cases() -> None:
    assert set(CASES) == set(ALL_RULES)
    assert len(BASELINE_RULES) == 12 and len(RESTRICTED_RULES) == 6  # the standard's two tables


@pytest.mark.parametrize("rule", ALL_RULES)
def test_each_control_fails_on_a_violation_and_passes_what_the_standard_allows(rule: str) -> None:
    violations, allowed = CASES[rule]
    level = "baseline" if rule in BASELINE_RULES else "restricted"
    for i, mutate in enumerate(violations):
        docs = copy.deepcopy(build(_spec("cronjob" if i % 2 else "job", "pvc")).documents)
        mutate(*_pod(docs))
        found = pod_security(docs, "restricted", only=rule)
        assert found and all(p.startswith(f"pod-security/{rule}: ") for p in found), (rule, i)
        assert pod_security(docs, level, only=rule) == found  # the level that holds the control catches it
        assert any(p.startswith(f"pod-security/{rule}: ") for p in check(docs, pod_security="restricted"))
    for i, mutate in enumerate(allowed):
        docs = copy.deepcopy(build(_spec("statefulset", "secret")).documents)
        mutate(*_pod(docs))
        assert pod_security(docs, "restricted", only=rule) == [], (rule, i)


def test_a_baseline_namespace_does_not_apply_the_restricted_controls() -> None:
    docs = copy.deepcopy(build(_spec("job", "pvc")).documents)
    _pod_sc(runAsUser=0)(*_pod(docs))
    assert pod_security(docs, "baseline") == []
    assert pod_security(docs, "restricted")
