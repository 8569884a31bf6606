"""`make test` sets itself up: one list of Debian packages (.ci/packages.txt) used by .ci/run and by
make test's `servers` step, which installs what is missing (root + apt) or prints the one command and
fails. The list covers every server binary the harness and the tests ask for."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def packages() -> dict[str, str]:
    out = {}
    for line in (ROOT / ".ci" / "packages.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pkg, binary = line.split()[:2]
            out[pkg] = binary
    return out


def test_every_binary_the_suite_asks_for_is_in_the_list() -> None:
    wanted: set[str] = set()
    for path in [*(ROOT / "tests").rglob("*.py"), *(ROOT / "testbed").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        wanted |= set(re.findall(r'^\s+binary = "([a-z_-]+)"', text, re.M))
        for args in re.findall(r"\bneed\(([^)]*)\)", text):
            wanted |= set(re.findall(r'"([a-z_-]+)"', args))
        wanted |= set(re.findall(r'\brequire\("([a-z_-]+)"\)', text))
    wanted -= {"bash", "lampwatch-no-such-binary"}
    assert wanted, "found no binary at all: the patterns above are stale"
    assert wanted <= set(packages().values()), wanted - set(packages().values())


def test_ci_and_make_test_read_the_same_list() -> None:
    run = (ROOT / ".ci" / "run").read_text()
    assert ".ci/packages.txt" in run and "make test" in run and "stop-services" in run
    assert "\nmosquitto mosquitto-clients" not in run  # no second, hand-kept list
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^test: lint servers$", make, re.M) and "bash .ci/ensure-servers" in make
    assert "packages.txt" in (ROOT / ".ci" / "ensure-servers").read_text()


def _ensure(tmp_path: Path, lines: str, **env: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "packages.txt"
    f.write_text(lines)
    return subprocess.run(["bash", str(ROOT / ".ci" / "ensure-servers")], capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "LAMPWATCH_PACKAGES_FILE": str(f), **env})


def test_a_missing_server_fails_with_the_one_command_to_run(tmp_path: Path) -> None:
    res = _ensure(tmp_path, "# comment\nbash bash\nlampwatch-fake-a lampwatch-no-such-a\n"
                            "lampwatch-fake-b lampwatch-no-such-b\n", LAMPWATCH_NO_APT="1")
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "make test: missing server binaries for the real-server tests; run: sudo sh -c 'apt-get update && "
        "apt-get install -y --no-install-recommends lampwatch-fake-a lampwatch-fake-b'"]


def test_nothing_missing_is_quiet_and_green(tmp_path: Path) -> None:
    res = _ensure(tmp_path, "bash bash\ncoreutils ls\n", LAMPWATCH_NO_APT="1")
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_the_ci_script_parses() -> None:
    for script in ("run", "ensure-servers", "stop-services"):
        subprocess.run(["bash", "-n", str(ROOT / ".ci" / script)], check=True)
