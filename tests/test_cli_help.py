"""Every console script and every command has help, and a wrong argument is one line + exit 2."""

from __future__ import annotations

import importlib

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

APPS = ["gateway.cli", "simulator.cli", "edge.cli", "ingest.cli", "operators.cli"]


def _commands(app: typer.Typer) -> list[list[str]]:
    root = get_command(app)
    out: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append(path)

    walk(root, [])
    return out


@pytest.mark.parametrize("module", APPS)
def test_every_command_has_help_with_an_example(module: str) -> None:
    app = importlib.import_module(module).app
    runner = CliRunner()
    cmds = _commands(app)
    assert cmds, module
    for path in cmds:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (module, path, res.output)
        cmd = get_command(app)
        for p in path:
            cmd = cmd.commands[p]  # type: ignore[attr-defined]
        assert cmd.help and "Example" in cmd.help, (module, path)


@pytest.mark.parametrize("module", APPS)
def test_wrong_argument_is_a_short_error_not_a_traceback(module: str) -> None:
    app = importlib.import_module(module).app
    res = CliRunner().invoke(app, ["--no-such-option"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
