"""``--patch FILE``: a JSON merge patch (RFC 7386) applied to the generated workload.

For any field ``restartable k8s`` has no flag for (tolerations, a node selector, an
annotation, an extra volume). The semantics are RFC 7386's, the same as ``kubectl patch
--type=merge``:

* a mapping merges into the mapping at the same place, key by key;
* ``null`` deletes the key;
* anything else, **lists included**, replaces the value whole. To add a volume, give the
  whole ``volumes`` list, ours included (print the manifest once without ``--patch`` to
  see it).

The patch may not rename or move the workload (``apiVersion``, ``kind``,
``metadata.name``, ``metadata.namespace``): the Secret, the claim and the run identity
refer to them. The patched manifest is then checked again, by our rules, by the Pod
Security level it is generated for, and against the Kubernetes schema of
``--kube-version`` (:func:`validate_schema`, which needs kubernetes-validate).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import MissingDriver, UsageError

__all__ = ["apply_to_workload", "load_patch", "merge_patch", "validate_schema"]

WORKLOAD_KINDS = ("Job", "CronJob", "StatefulSet")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 MergePatch(target, patch): a new value; neither argument is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_patch(path: str) -> dict[str, Any]:
    """The merge patch in the YAML or JSON file ``path`` (one mapping), or UsageError."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDriver("--patch reads YAML, which needs PyYAML: pip install 'restartable[kube]'") from None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --patch {path!r}: {exc}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise UsageError(f"--patch {path!r} is neither YAML nor JSON: {exc}".replace("\n", " ")) from None
    if len(docs) != 1 or not isinstance(docs[0], dict):
        found = f"{len(docs)} documents" if len(docs) != 1 else f"a {type(docs[0]).__name__}"
        raise UsageError(
            f"--patch {path!r} must hold one mapping, a JSON merge patch of the workload such as "
            f"{{spec: {{template: {{spec: {{nodeSelector: {{disk: ssd}}}}}}}}}}, not {found}"
        )
    return docs[0]


def apply_to_workload(documents: list[dict[str, Any]], patch: dict[str, Any]) -> list[dict[str, Any]]:
    """``documents`` with ``patch`` merged into the workload (the Job, CronJob or StatefulSet)."""
    for field in ("apiVersion", "kind"):
        if field in patch:
            raise UsageError(f"--patch may not change {field}: it patches the workload restartable generated")
    meta = patch.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise UsageError("--patch may not replace metadata: patch its labels or annotations instead")
    for field, flag in (("name", "the NAME argument"), ("namespace", "--namespace")):
        if isinstance(meta, dict) and field in meta:
            raise UsageError(
                f"--patch may not change metadata.{field}: use {flag} (the Secret, the claim and the run refer to it)"
            )
    out = []
    for doc in documents:
        out.append(merge_patch(doc, patch) if doc.get("kind") in WORKLOAD_KINDS else doc)
    return out


def validate_schema(documents: list[dict[str, Any]], kube_version: str) -> list[str]:
    """Warnings; UsageError naming every field the Kubernetes schema (strict) refuses.

    Uses kubernetes-validate's schema for ``kube_version``, or its newest when the
    version is newer than the ones it ships (said in the returned warnings).
    """
    try:
        import kubernetes_validate as kv  # type: ignore[import-untyped]
    except ImportError:
        raise MissingDriver(
            "--patch checks the patched manifest against the Kubernetes schema, which needs "
            "kubernetes-validate: pip install kubernetes-validate"
        ) from None
    warnings: list[str] = []
    shipped = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in kv.utils.all_versions()})
    wanted = tuple(int(p) for p in kube_version.lstrip("v").split(".")[:2])
    usable = [v for v in shipped if v <= wanted]
    if not usable:
        raise MissingDriver(
            f"kubernetes-validate has no schema for Kubernetes {kube_version}: upgrade it "
            "(pip install -U kubernetes-validate)"
        )
    version = usable[-1]
    if version != wanted:
        warnings.append(
            f"the patched manifest was checked against the Kubernetes {version[0]}.{version[1]} schema, "
            f"the newest kubernetes-validate ships (not {kube_version})"
        )
    errors: list[str] = []
    for doc in documents:
        where = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        try:
            kv.validate(doc, f"{version[0]}.{version[1]}", strict=True)
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in getattr(exc, "path", []) or [])
            errors.append(f"{where}: {path + ': ' if path else ''}{getattr(exc, 'message', exc)}")
        except (kv.SchemaNotFoundError, kv.InvalidSchemaError) as exc:
            errors.append(f"{where}: {exc}")
    if errors:
        raise UsageError("the patched manifest fails the Kubernetes schema (strict):\n  " + "\n  ".join(errors))
    return warnings
