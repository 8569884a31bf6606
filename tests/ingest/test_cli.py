"""lampwatch-ingest: every command has help with an example; mistakes end in one line, no traceback."""

from __future__ import annotations

import csv
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from ingest import credentials, grafana
from ingest.cli import app, main
from testbed.servers import InfluxDB1

from .conftest import FakeGrafana


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield path
        return
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


COMMANDS = sorted(_commands(typer.main.get_command(app)))


def test_the_expected_commands_exist() -> None:
    assert set(COMMANDS) >= {("setup",), ("rollup",), ("credentials",), ("grafana", "generate"),
                             ("grafana", "provision"), ("certs",), ("broker-config",)}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Usage:" in text
    assert f"Example: lampwatch-ingest {' '.join(path)}" in " ".join(text.split())


@pytest.mark.parametrize("argv", [
    ["setup", "--no-such-option"],
    ["setup", "--raw", "30 days"],
    ["credentials", "--out", "x"],
    ["credentials", "--out", "x", "--poles", "many"],
    ["credentials", "--out", "x", "--poles", "0"],
    ["rollup", "--start", "yesterday"],
    ["rollup", "--start", "now", "--end", "now-1h"],
    ["grafana", "provision", "--url", "grafana:3000", "--token", "t"],
    ["setup", "--url", "http://127.0.0.1:9"],  # nothing listens on the discard port
    ["no-such-command"],
], ids=lambda a: " ".join(a))
def test_mistakes_are_one_line_without_traceback(argv: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ingest.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert proc.returncode in (1, 2), proc
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lampwatch-ingest: error: "), proc.stderr


def test_credentials_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "poles.txt"
    ids.write_text("# two poles\np-000010\n\np-000011  # the corner one\n")
    out = tmp_path / "broker"
    assert main(["credentials", "--pole-ids", str(ids), "--out", str(out), "--hasher", "python"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("credentials: devices=2 ")
    for name, mode in (("passwd", 0o600), ("secrets.csv", 0o600), ("acl", 0o644)):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    with (out / "secrets.csv").open() as f:
        rows = {r["username"]: r["password"] for r in csv.DictReader(f)}
    assert set(rows) == {"p-000010", "p-000011", credentials.GATEWAY_USER, credentials.OPS_USER}
    assert rows[credentials.GATEWAY_USER] in captured.err  # printed once, to the operator
    assert rows[credentials.OPS_USER] in captured.err
    hashes = dict(line.split(":", 1) for line in (out / "passwd").read_text().splitlines())
    assert all(credentials.verify_password(rows[u], h) for u, h in hashes.items())
    assert "pattern write lampwatch/v1/+/%u/telemetry" in (out / "acl").read_text()
    # a second run refuses to replace the passwords of deployed devices
    assert main(["credentials", "--poles", "2", "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    ids.write_text("p-1\nBAD ID\n")
    assert main(["credentials", "--pole-ids", str(ids), "--out", str(tmp_path / "o2")]) == 2
    assert "line 2" in capsys.readouterr().err


def test_hash_matches_mosquitto_passwd_format() -> None:
    salt = bytes(range(12))
    h = credentials.hash_password("secret", salt=salt)
    assert h.startswith("$7$101$AAECAwQFBgcICQoL$") and len(h.split("$")[-1]) == 88
    assert credentials.verify_password("secret", h) and not credentials.verify_password("Secret", h)
    # a line mosquitto_passwd 2.0.11 wrote for alice:secret
    theirs = ("$7$101$ZY8JF5MxtCt36suI$tzwekfNI4HuWpp+nOHm2/JDcXEhMqJPCII3LuEyp3Ojw4roUJ8jukMp3Q4eCWuSpyvgnjw"
              "HZuZc6aSDQTJBJEw==")
    assert credentials.verify_password("secret", theirs)


def test_grafana_generate_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grafana", "generate", "--check", "--out", str(tmp_path)]) == 1
    assert main(["grafana", "generate", "--out", str(tmp_path)]) == 0
    assert main(["grafana", "generate", "--check", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "grafana check: stale=0"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*")) == sorted(grafana.files())


def test_grafana_provision_command(fake_grafana: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grafana", "provision", "--url", fake_grafana, "--token", "abc"]) == 0
    assert capsys.readouterr().out.strip() == "grafana provision: dashboards=4 folder=lampwatch"
    posted = [body["dashboard"]["uid"] for m, p, _, body in FakeGrafana.requests if p == "/api/dashboards/db"]
    assert posted == [d["uid"] for d in grafana.dashboards()]


def test_setup_and_rollup_commands(influx_db: tuple[InfluxDB1, str], capsys: pytest.CaptureFixture[str]) -> None:
    server, db = influx_db
    args = ["--url", server.url, "--db", db]
    assert main(["setup", *args]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == f"setup: database={db} changes=3"
    assert 'CREATE RETENTION POLICY "raw"' in out
    assert main(["setup", *args]) == 0  # idempotent
    assert capsys.readouterr().out.strip() == f"setup: database={db} changes=0"
    assert main(["setup", *args, "--raw", "14d"]) == 0  # a changed duration is altered in place
    assert 'ALTER RETENTION POLICY "raw"' in capsys.readouterr().out
    rps = {r[0]: r for r in server.query(f'SHOW RETENTION POLICIES ON "{db}"', db=db)["results"][0]["series"][0]
           ["values"]}
    assert rps["raw"][1] == "336h0m0s" and rps["raw"][4] is True and rps["rollup_1h"][1] == "0s"
    now_ns = time.time_ns()
    hour = 3_600_000_000_000
    last_hour = now_ns - now_ns % hour - hour
    server.write_lines(db, [f"telemetry,district=d,pole=p-1 tilt_deg=1 {last_hour + 10**9}",
                            f"telemetry,district=d,pole=p-1 tilt_deg=3 {last_hour + 61 * 10**9}"])
    assert main(["rollup", *args, "--start", "now-1h"]) == 0
    assert capsys.readouterr().out.strip() == "rollup: points_1m=2 points_1h=1"
    [row] = server.query('SELECT * FROM "rollup_1h"."telemetry_1h"', db=db)["results"][0]["series"][0]["values"]
    assert row[0] == last_hour
