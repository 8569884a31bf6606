"""tests/ mirrors the packages: a newcomer finds a module's tests at tests/<package>/..., so every
test folder is named after a package of ours (or is one of the few cross-cutting folders below)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folders that test something other than one package: the repository's deployment artefacts
#: (compose, systemd units, mosquitto.conf, bare-metal README lines, the package list)
CROSS_CUTTING = {"ops"}


def test_every_test_folder_mirrors_a_package() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = set(cfg["tool"]["importlinter"]["root_packages"]) | {"bench"}
    folders = {p.name for p in (ROOT / "tests").iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders - packages - CROSS_CUTTING == set()
    for sub in (ROOT / "tests").rglob("*"):  # nested folders mirror subpackages
        if sub.is_dir() and sub.parent != ROOT / "tests" and not sub.name.startswith((".", "_")):
            rel = sub.relative_to(ROOT / "tests")
            assert (ROOT / rel).is_dir(), f"tests/{rel} has no package {rel}"


#: modules that reach files, sockets, processes or the clock; the pure detection package uses none
_IO_MODULES = {"os", "io", "csv", "json", "pathlib", "socket", "subprocess", "shutil", "tempfile", "time",
               "threading", "sqlite3", "urllib", "http"}


def test_the_detection_package_does_no_io() -> None:
    """gateway.detect is the pure core of detection: conditions from arrays, alarms from conditions, the
    state as a document. Reading files (NAB, replays) and writing the state file are the shell's
    (gateway.nab, gateway.replay, gateway.detection); this fails on an import or an ``open(`` there."""
    import ast

    found = []
    for path in sorted((ROOT / "gateway" / "detect").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in _IO_MODULES]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
                found.append(f"{path.name}:{node.lineno}: open(")
    assert found == []
