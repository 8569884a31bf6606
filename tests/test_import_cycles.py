"""No import cycle anywhere in the tree.

Every first-party module is parsed with ``ast`` and every import it names is an edge: module level,
inside functions (lazy imports) and under ``if TYPE_CHECKING:`` alike, because a cycle hidden behind
any of them is still two modules that cannot be understood (or moved) one without the other.
``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``. The graph must
be acyclic; a failure prints one cycle, module by module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "edge", "gateway", "ingest", "simulator", "operators", "bench", "tests")


def module_files(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under the given top-level packages."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                yield sub if sub in known else mod


def import_graph(known: Mapping[str, Path]) -> dict[str, set[str]]:
    """module -> the first-party modules it imports (itself excluded)."""
    return {m: {t for t in _imports(m, f, known) if t in known and t != m} for m, f in known.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None; iterative depth-first search (no recursion limit)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
                continue
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_tree_has_no_import_cycle() -> None:
    known = module_files()
    assert {"edge.agent", "edge.loop", "edge.link", "gateway.service", "tests.test_import_cycles"} <= set(known)
    cycle = find_cycle(import_graph(known))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_check_sees_cycles_of_every_kind(tmp_path: Path) -> None:
    """The checker itself: a TYPE_CHECKING import, a lazy import and a relative import each close a cycle."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import b\n")
    known = module_files(tmp_path, ("pkg",))
    graph = import_graph(known)
    assert graph["pkg.d"] == {"pkg.b"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}
    (pkg / "c.py").write_text("import json\n")
    assert find_cycle(import_graph(module_files(tmp_path, ("pkg",)))) is None
