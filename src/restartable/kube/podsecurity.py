"""The Pod Security Standards, "baseline" and "restricted", as a checker of manifests.

Each rule is one control of the standard's written text (kubernetes.io, "Pod Security
Standards", the Baseline and Restricted tables), named after it, and checks exactly the
restricted fields and allowed values listed there. Restricted includes every baseline
rule. ``restartable k8s`` runs the level a manifest is generated for (restricted unless
``--no-restricted``, then baseline) before printing, so a ``--patch`` cannot silently
take a workload out of the profile its namespace enforces.

::

    problems = pod_security(documents, "restricted")   # [] when the pods would be admitted

A problem reads ``"pod-security/<rule>: <Kind>/<name>: <what>"``. The checker works on any
manifest holding a pod template (Pod, Job, CronJob, StatefulSet, Deployment, ...).

Baseline rules: ``host-process``, ``host-namespaces``, ``privileged``,
``capabilities-baseline``, ``host-path-volumes``, ``host-ports``, ``host-probes``,
``apparmor``, ``selinux``, ``proc-mount``, ``seccomp-baseline``, ``sysctls``.
Restricted adds: ``volume-types``, ``privilege-escalation``, ``running-as-non-root``,
``running-as-non-root-user``, ``seccomp``, ``capabilities``. The Linux-only controls
(privilege escalation, seccomp, capabilities) do not apply to a pod with
``spec.os.name: windows``, as the standard says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Literal

__all__ = ["BASELINE_RULES", "LEVELS", "RESTRICTED_RULES", "Level", "pod_security", "pod_templates"]

Level = Literal["baseline", "restricted"]
LEVELS: tuple[str, ...] = ("baseline", "restricted")

# Allowed values, as the standard lists them.
_BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
# The "safe" sysctls, including the ones added in 1.27 and 1.29 (the admission controller's
# default version is the newest).
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.ping_group_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_RESTRICTED_VOLUMES = (
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
)
_APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"

Bad = Callable[[str], None]


def _containers(pod: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every container the standard's ``[*]`` covers: containers, initContainers, ephemeralContainers."""
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for c in pod.get(field) or []:
            if isinstance(c, dict):
                yield f"{field}[{c.get('name', '?')}]", c


def _sc(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("securityContext") or {}


def _linux(pod: dict[str, Any]) -> bool:
    return ((pod.get("os") or {}).get("name")) != "windows"


# -- baseline ---------------------------------------------------------------------------------


def _host_process(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    if ((_sc(pod).get("windowsOptions") or {}).get("hostProcess")) not in (None, False):
        bad("spec.securityContext.windowsOptions.hostProcess must be unset or false")
    for where, c in _containers(pod):
        if ((_sc(c).get("windowsOptions") or {}).get("hostProcess")) not in (None, False):
            bad(f"{where}.securityContext.windowsOptions.hostProcess must be unset or false")


def _host_namespaces(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field) not in (None, False):
            bad(f"spec.{field} must be unset or false")


def _privileged(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for where, c in _containers(pod):
        if _sc(c).get("privileged") not in (None, False):
            bad(f"{where}.securityContext.privileged must be unset or false")


def _capabilities_baseline(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for where, c in _containers(pod):
        extra = [
            cap for cap in ((_sc(c).get("capabilities") or {}).get("add") or []) if cap not in _BASELINE_CAPABILITIES
        ]
        if extra:
            bad(f"{where} adds capabilities beyond the default set: {', '.join(map(str, extra))}")


def _host_path_volumes(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for v in pod.get("volumes") or []:
        if isinstance(v, dict) and v.get("hostPath") is not None:
            bad(f"volume {v.get('name', '?')!r} is a hostPath volume")


def _host_ports(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for where, c in _containers(pod):
        for port in c.get("ports") or []:
            if isinstance(port, dict) and port.get("hostPort") not in (None, 0):
                bad(f"{where} uses hostPort {port.get('hostPort')}")


_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")


def _host_probes(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for where, c in _containers(pod):
        handlers = [(p, c.get(p)) for p in _PROBES]
        handlers += [(f"lifecycle.{h}", (c.get("lifecycle") or {}).get(h)) for h in ("postStart", "preStop")]
        for name, handler in handlers:
            for action in ("httpGet", "tcpSocket"):
                host = ((handler or {}).get(action) or {}).get("host")
                if host not in (None, ""):
                    bad(f"{where}.{name}.{action}.host is set ({host!r}): probes and hooks may only reach the pod")


def _apparmor(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    scs = [("spec", _sc(pod))] + [(where, _sc(c)) for where, c in _containers(pod)]
    for where, sc in scs:
        kind = (sc.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "RuntimeDefault", "Localhost"):
            bad(f"{where}.securityContext.appArmorProfile.type is {kind!r}: only RuntimeDefault or Localhost")
    for key, value in (meta.get("annotations") or {}).items():
        if str(key).startswith(_APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or str(value).startswith("localhost/")
        ):
            bad(f"annotation {key} is {value!r}: only runtime/default or localhost/*")


def _selinux(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    scs = [("spec", _sc(pod))] + [(where, _sc(c)) for where, c in _containers(pod)]
    for where, sc in scs:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in _SELINUX_TYPES:
            bad(f"{where}.securityContext.seLinuxOptions.type is {options['type']!r}")
        for field in ("user", "role"):
            if options.get(field, "") != "":
                bad(f"{where}.securityContext.seLinuxOptions.{field} must be unset")


def _proc_mount(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for where, c in _containers(pod):
        if _sc(c).get("procMount") not in (None, "Default"):
            bad(f"{where}.securityContext.procMount is {_sc(c)['procMount']!r}: only Default")


def _seccomp_baseline(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    scs = [("spec", _sc(pod))] + [(where, _sc(c)) for where, c in _containers(pod)]
    for where, sc in scs:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            bad(f"{where}.securityContext.seccompProfile.type is Unconfined")


def _sysctls(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for s in _sc(pod).get("sysctls") or []:
        name = (s or {}).get("name")
        if name not in _SAFE_SYSCTLS:
            bad(f"sysctl {name!r} is not in the safe set")


# -- restricted -------------------------------------------------------------------------------


def _volume_types(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    for v in pod.get("volumes") or []:
        if not isinstance(v, dict) or not any(v.get(t) is not None for t in _RESTRICTED_VOLUMES):
            name = v.get("name", "?") if isinstance(v, dict) else "?"
            bad(f"volume {name!r} is not one of {', '.join(_RESTRICTED_VOLUMES)}")


def _privilege_escalation(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    if not _linux(pod):
        return
    for where, c in _containers(pod):
        if _sc(c).get("allowPrivilegeEscalation") is not False:
            bad(f"{where}.securityContext.allowPrivilegeEscalation must be false")


def _running_as_non_root(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    pod_level = _sc(pod).get("runAsNonRoot")
    if pod_level not in (None, True):
        bad("spec.securityContext.runAsNonRoot must be true")
    for where, c in _containers(pod):
        own = _sc(c).get("runAsNonRoot")
        if own not in (None, True):
            bad(f"{where}.securityContext.runAsNonRoot must be true")
        elif own is None and pod_level is not True:
            # The container may leave it unset only when the pod-level field is true.
            bad(f"{where}: runAsNonRoot is set neither on the container nor on the pod")


def _running_as_non_root_user(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    scs = [("spec", _sc(pod))] + [(where, _sc(c)) for where, c in _containers(pod)]
    for where, sc in scs:
        if sc.get("runAsUser") == 0:
            bad(f"{where}.securityContext.runAsUser is 0 (root)")


def _seccomp(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    if not _linux(pod):
        return
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_sc(pod).get("seccompProfile") or {}).get("type")
    if pod_type is not None and pod_type not in allowed:
        bad(f"spec.securityContext.seccompProfile.type is {pod_type!r}: only RuntimeDefault or Localhost")
    for where, c in _containers(pod):
        own = (_sc(c).get("seccompProfile") or {}).get("type")
        if own is not None and own not in allowed:
            bad(f"{where}.securityContext.seccompProfile.type is {own!r}: only RuntimeDefault or Localhost")
        elif own is None and pod_type not in allowed:
            # The absence of a profile is prohibited: pod-level, or every container.
            bad(f"{where}: no seccompProfile on the container nor on the pod (RuntimeDefault required)")


def _capabilities(pod: dict[str, Any], meta: dict[str, Any], bad: Bad) -> None:
    if not _linux(pod):
        return
    for where, c in _containers(pod):
        caps = _sc(c).get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            bad(f"{where}.securityContext.capabilities.drop must include ALL")
        extra = [cap for cap in caps.get("add") or [] if cap != "NET_BIND_SERVICE"]
        if extra:
            bad(f"{where} adds capabilities {', '.join(map(str, extra))}: only NET_BIND_SERVICE may be added")


Rule = Callable[[dict[str, Any], dict[str, Any], Bad], None]

BASELINE_RULES: dict[str, Rule] = {
    "host-process": _host_process,
    "host-namespaces": _host_namespaces,
    "privileged": _privileged,
    "capabilities-baseline": _capabilities_baseline,
    "host-path-volumes": _host_path_volumes,
    "host-ports": _host_ports,
    "host-probes": _host_probes,
    "apparmor": _apparmor,
    "selinux": _selinux,
    "proc-mount": _proc_mount,
    "seccomp-baseline": _seccomp_baseline,
    "sysctls": _sysctls,
}
RESTRICTED_RULES: dict[str, Rule] = {
    "volume-types": _volume_types,
    "privilege-escalation": _privilege_escalation,
    "running-as-non-root": _running_as_non_root,
    "running-as-non-root-user": _running_as_non_root_user,
    "seccomp": _seccomp,
    "capabilities": _capabilities,
}


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """``(pod metadata, pod spec)`` of every pod a manifest describes (none for a Secret or a PVC)."""
    spec = doc.get("spec") or {}
    kind = doc.get("kind")
    if kind == "Pod":
        yield doc.get("metadata") or {}, spec
        return
    if kind == "CronJob":
        spec = ((spec.get("jobTemplate") or {}).get("spec")) or {}
    elif kind not in ("Job", "StatefulSet", "Deployment", "DaemonSet", "ReplicaSet", "ReplicationController"):
        return
    template = spec.get("template") or {}
    yield template.get("metadata") or {}, template.get("spec") or {}


def pod_security(documents: list[dict[str, Any]], level: Level = "restricted", *, only: str | None = None) -> list[str]:
    """Every control of Pod Security ``level`` that ``documents`` break (empty when admitted).

    ``only`` checks a single rule (by name), for tests and diagnostics.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown Pod Security level {level!r}: use one of {', '.join(LEVELS)}")
    rules = dict(BASELINE_RULES)
    if level == "restricted":
        rules.update(RESTRICTED_RULES)
    if only is not None:
        rules = {only: rules[only]}
    problems: list[str] = []
    for doc in documents:
        if not isinstance(doc, dict):
            continue
        where = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        for meta, pod in pod_templates(doc):
            for name, rule in rules.items():
                rule(
                    pod,
                    meta,
                    lambda what, name=name, where=where: problems.append(  # type: ignore[misc]
                        f"pod-security/{name}: {where}: {what}"
                    ),
                )
    return problems
