"""The conventions every lampwatch CLI shares: --version, one-line usage errors whatever the terminal
width, --log-level and --log-format json (contract/cli.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from contract.cli import configure_logging, version
from testbed.servers import Mosquitto

BIN = Path(sys.executable).parent
CLIS = ["lampwatch-edge", "lampwatch-gateway", "lampwatch-ingest", "lampwatch-sim"]
# (argv, why it is wrong): an unknown root option, an unknown subcommand option, a bad value
BAD = [["--no-such-option"], ["--log-level", "LOUD"], ["--log-format", "xml"]]
BAD_SUB = {"lampwatch-edge": ["check", "--timeout", "soon"], "lampwatch-gateway": ["run", "--duration", "-1"],
           "lampwatch-ingest": ["rollup", "--no-such-option"], "lampwatch-sim": ["run", "--poles", "zero"]}


def _run(argv: list[str], columns: int, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "COLUMNS": str(columns), "LINES": "20", "TERM": "xterm-256color", **env}
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60,
                          env=full_env, check=False)


@pytest.mark.parametrize("columns", [40, 200])
@pytest.mark.parametrize("prog", CLIS)
def test_a_bad_argument_is_exactly_one_stderr_line_and_exit_2(prog: str, columns: int) -> None:
    for argv in [*BAD, BAD_SUB[prog]]:
        res = _run([prog, *argv], columns)
        lines = res.stderr.splitlines()
        assert res.returncode == 2, (prog, argv, res.stderr)
        assert len(lines) == 1, (prog, argv, columns, res.stderr)
        assert lines[0].startswith(f"{prog}: error: "), lines[0]
        assert "╭" not in res.stderr and "Traceback" not in res.stderr
        assert res.stdout == ""


@pytest.mark.parametrize("prog", CLIS)
def test_version_prints_prog_and_the_installed_version(prog: str) -> None:
    res = _run([prog, "--version"], 80)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"{prog} {version()}"
    assert version()[0].isdigit()


def test_json_log_lines_are_one_object_each(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG", "json")
    try:
        logging.getLogger("lampwatch.test").debug("multi\nline %s", "message")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("lampwatch.test").exception("failed")
        logging.getLogger("lampwatch.test").debug("after")
    finally:
        configure_logging(None, "text")
    lines = capsys.readouterr().err.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [d["msg"] for d in docs] == ["multi\nline message", "failed", "after"]
    assert docs[0]["level"] == "DEBUG" and docs[0]["logger"] == "lampwatch.test"
    assert "ValueError: boom" in docs[1]["exc"] and isinstance(docs[0]["ts"], int)


def test_gateway_logs_json_at_the_chosen_level(mosquitto: Mosquitto, tmp_path: Path) -> None:
    env = {"LAMPWATCH_GATEWAY_MQTT_HOST": mosquitto.host, "LAMPWATCH_GATEWAY_MQTT_PORT": str(mosquitto.port),
           "LAMPWATCH_GATEWAY_STATE_DIR": str(tmp_path / "state"),
           "LAMPWATCH_GATEWAY_SQLITE_PATH": str(tmp_path / "lw.sqlite")}
    res = _run(["lampwatch-gateway", "--log-format", "json", "--log-level", "info", "run", "--duration", "1"],
               80, **env)
    assert res.returncode == 0, res.stderr
    docs = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert any(d["level"] == "INFO" and "connected" in d["msg"] for d in docs), res.stderr
    quiet = _run(["lampwatch-gateway", "--log-format", "json", "--log-level", "ERROR", "run", "--duration", "1"],
                 80, **env)
    assert quiet.returncode == 0, quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if line.startswith("{")], quiet.stderr
