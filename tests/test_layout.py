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
