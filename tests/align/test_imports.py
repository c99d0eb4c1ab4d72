"""The import graph of align, envs, rewards and rollout: no cycles, plugins stay out of the cluster, workers stay out of Ray.

Walked with stdlib ``ast`` (every import statement, inside functions too: a lazy import still
ties two modules together), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("align", "envs", "rewards", "rollout")
PLUGIN_PACKAGES = ("envs", "rewards")
CLUSTER = "align.cluster"


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    mods = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    names: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports (a name resolves to its longest module prefix).

    An import of a module's own parent package (``from envs.code import generate`` inside
    ``envs.code.env``) is not an edge: the parent's ``__init__`` re-exports its children, and that
    pair is how packages work, not a circle between two concerns.
    """
    mods = module_files(root, packages)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for m, f in mods.items():
        targets = {resolve(n) for n in imported_names(m, f)}
        graph[m] = {t for t in targets if t is not None and t != m and not m.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph(REPO, PACKAGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_cluster_imports_no_plugin_package() -> None:
    bad = sorted(t for t in import_graph(REPO, PACKAGES)[CLUSTER] if t.split(".")[0] in PLUGIN_PACKAGES)
    assert not bad, f"{CLUSTER} imports plugin modules {bad}: worker classes belong in align/, plugins start groups, not the reverse"


def test_workers_do_not_import_ray_and_only_the_cluster_makes_actors() -> None:
    """Learners, engines, scorers and plugins are plain classes; they become actors in align.cluster only."""
    mods = module_files(REPO, PACKAGES)
    workers = ("align.learner", "rollout", "envs", "rewards")
    users = sorted(m for m, f in mods.items() if m.startswith(workers) and any(n == "ray" or n.startswith("ray.") for n in imported_names(m, f)))
    assert not users, f"worker modules import Ray: {users}"
    remote = sorted(m for m, f in mods.items() if "ray.remote(" in f.read_text())
    assert remote == [CLUSTER], remote


def test_the_checks_catch_a_cycle_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from ..a import f\n")
    (pkg / "a.py").write_text("def f():\n    from pkg.b import g  # lazy: still an edge\n")
    (pkg / "b.py").write_text("from . import sub\n")
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub"] == {"pkg.a"} and graph["pkg.b"] == {"pkg.sub"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_over_400_lines(package: str) -> None:
    long = {str(f.relative_to(REPO)): n for f in (REPO / package).rglob("*.py") if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines (split them by concern): {long}"


def test_test_module_names_are_unique() -> None:
    """pytest imports test modules by basename (no __init__.py under tests/): two files of one name
    in different folders stop the whole run at collection ("import file mismatch")."""
    seen: dict[str, list[str]] = {}
    for f in (REPO / "tests").rglob("test_*.py"):
        seen.setdefault(f.name, []).append(str(f.relative_to(REPO)))
    dupes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not dupes, f"rename one of each: {dupes}"
