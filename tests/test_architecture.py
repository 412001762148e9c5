"""The package's shape, checked from its source with the stdlib ``ast`` (nothing is imported).

* No import cycle among the modules of ``restartable``, following EVERY import: at the
  top, inside functions (a lazy import that hides a cycle is still one), and under
  ``TYPE_CHECKING``. Importing ``a.b.c`` runs the ``__init__`` of ``a.b`` too, so a
  subpackage's ``__init__`` counts as imported by its modules' importers (the root
  package's is left out: it re-exports everything by design and nothing imports it
  back for a name).
* No private member of ``Job`` (or of the run context, the seam sources and engines use)
  is touched outside the module that defines it: the seam is its public names.
* No ``isinstance`` on a concrete store class outside the stores: callers ask the store
  for a capability instead.

Each check is also run against a small synthetic package, so that it is known to fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "restartable"


# -- reading the package -------------------------------------------------------------------


def modules(src: Path, root: str) -> dict[str, Path]:
    """Every module of package ``root`` under ``src``, by dotted name (a package by its ``__init__``)."""
    out: dict[str, Path] = {}
    for path in sorted((src / root).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(mods: dict[str, Path], name: str) -> bool:
    return name in mods and mods[name].name == "__init__.py"


def imports_of(name: str, path: Path, mods: dict[str, Path], root: str) -> set[str]:
    """The modules of the package that module ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if _is_package(mods, name) else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # The module itself, and the __init__ of every subpackage on the way to it, except the
        # packages this module is inside (they are initialised before it, whoever imports it).
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in mods and not (name == prefix or name.startswith(prefix + ".")):
                found.add(prefix)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == root:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != root:
                continue
            add(base)
            for alias in node.names:  # `from . import _lease`: a submodule, not a name
                if f"{base}.{alias.name}" in mods:
                    add(f"{base}.{alias.name}")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
            "import_module",
            "__import__",
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                target = node.args[0].value
                if target.startswith("."):
                    target = package + target if target.count(".") == 1 else target
                if target.split(".")[0] == root:
                    add(target)
    found.discard(name)
    found.discard(root)  # see the module docstring
    return found


def graph(src: Path, root: str) -> dict[str, set[str]]:
    mods = modules(src, root)
    return {name: imports_of(name, path, mods, root) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def private_members(path: Path, cls: str) -> set[str]:
    """The ``_private`` names class ``cls`` defines: its methods and the attributes it assigns on self."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for sub in ast.walk(node):
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(sub.name)
                elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id == "self":
                    if isinstance(sub.ctx, ast.Store):
                        names.add(sub.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def private_uses(path: Path, names: set[str]) -> Iterator[str]:
    """``where: expr._name`` for every use of one of ``names`` on something other than self/cls.

    A name that a class of this module defines itself (another class's ``_finish``) is its
    own business: without types, a name is all the check can go by.
    """
    tree = ast.parse(path.read_text(), str(path))
    own = set().union(*(private_members(path, c.name) for c in ast.walk(tree) if isinstance(c, ast.ClassDef)))
    names = names - own
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in names:
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            yield f"{path.name}:{node.lineno}: {ast.unparse(node)}"


#: A concrete store class: a name ending in Store (the ``Store`` contract itself is allowed:
#: "is this argument a store or a URL" is a question about the contract, not a type switch).
STORE_CLASS = re.compile(r"^\w+Store$")


def store_isinstance(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            if len(node.args) != 2:
                continue
            kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            for kind in kinds:
                name = kind.attr if isinstance(kind, ast.Attribute) else getattr(kind, "id", "")
                if STORE_CLASS.match(name) and name != "Store":
                    yield f"{path.name}:{node.lineno}: {ast.unparse(node)}"


#: Where each database's and each store's code lives: isinstance on its classes is fine there.
STORE_PACKAGES = ("restartable.stores", "restartable._postgres", "restartable._sqlite", "restartable._redis")

#: Classes whose private members nobody else may touch, and the module that defines each.
SEALED = {"Job": "restartable._job", "RunContext": "restartable._run"}


# -- the checks on the real package ------------------------------------------------------------


def test_the_package_has_no_import_cycle() -> None:
    found = cycles(graph(SRC, ROOT))
    assert found == [], "import cycles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_member_of_the_job_or_its_run_context_is_used_elsewhere() -> None:
    mods = modules(SRC, ROOT)
    bad: list[str] = []
    for cls, home in SEALED.items():
        names = private_members(mods[home], cls)
        assert names, f"{cls} not found in {home}"
        for name, path in mods.items():
            if name != home:
                bad.extend(private_uses(path, names))
    assert bad == [], "private members used outside their class's module:\n" + "\n".join(bad)


def test_no_isinstance_on_a_store_class_outside_the_stores() -> None:
    bad: list[str] = []
    for name, path in modules(SRC, ROOT).items():
        if not name.startswith(STORE_PACKAGES):
            bad.extend(store_isinstance(path))
    assert bad == [], "ask the store for a capability instead:\n" + "\n".join(bad)


# -- the checks can fail: a synthetic package with each fault ------------------------------------


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .job import Job\n",
        "job.py": "class Job:\n    def __init__(self):\n        self._secret = 1\n    def _hidden(self):\n"
        "        from .sub import engine\n        return engine\n",
        "sub/__init__.py": "",
        "sub/engine.py": "def run(job):\n    from ..job import Job\n    return job._secret\n",
        "other.py": "from .stores import PostgresStore\n\ndef f(s):\n    return isinstance(s, (int, PostgresStore))\n",
        "stores.py": "class PostgresStore:\n    pass\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    return tmp_path


def test_a_cycle_through_a_lazy_import_is_found(fake: Path) -> None:
    assert cycles(graph(fake, "pkg")) == [["pkg.job", "pkg.sub.engine"]]


def test_a_private_member_used_elsewhere_is_found(fake: Path) -> None:
    names = private_members(fake / "pkg" / "job.py", "Job")
    assert names == {"_secret", "_hidden"}
    assert list(private_uses(fake / "pkg" / "sub" / "engine.py", names)) == ["engine.py:3: job._secret"]


def test_an_isinstance_on_a_store_class_is_found(fake: Path) -> None:
    assert list(store_isinstance(fake / "pkg" / "other.py")) == ["other.py:4: isinstance(s, (int, PostgresStore))"]
