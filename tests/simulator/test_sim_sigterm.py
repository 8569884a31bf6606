"""SIGTERM ends a simulator run like Ctrl-C: a summary line, and no broker left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from testbed.servers import ServerMissing, require


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def test_sigterm_stops_cleanly_and_leaves_no_server() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "simulator", "run", "--embedded", "--poles", "10",
                             "--speed", "10"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        servers: list[int] = []
        while time.monotonic() < deadline and not servers:  # wait until its broker runs
            servers = _children(proc.pid)
            time.sleep(0.2)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out.strip().splitlines()[-1].startswith("run: published=")
    try:
        require("mosquitto")
        assert servers, "the run started no broker process"
    except ServerMissing:
        pass  # the embedded amqtt broker runs in-process: nothing to orphan
    for pid in servers:  # the broker it started is gone, not orphaned
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
