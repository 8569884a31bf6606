"""The simulator's own capability: unpaced multiplexed publishing, and how many real per-device edge agents
one process keeps connected and publishing (``python -m bench.bench_gateway agents ...``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.procs import vm_rss_mb
from testbed.servers import Mosquitto


def sim_capability(seconds: float) -> dict[str, float]:
    """Multiplexed generation + publish from one process, as fast as the broker acknowledges."""
    with Mosquitto() as broker:
        r = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(broker.port), "--rate", "0",
                            "--seconds", str(seconds), "--poles", "10000"], check=True, capture_output=True, text=True)
    return dict(json.loads(r.stdout))


def agents_capability(ladder: tuple[int, ...], connect_s: float = 60.0, steady_s: float = 20.0) -> tuple[int, str]:
    """Per-device mode: how many of ``n`` real edge agents (edge.agent.EdgeAgent: own MQTT client id, birth,
    Last Will and SQLite outbox each, all on one edge.loop.EdgeLoop, as ``lampwatch-sim run --mode
    per-device`` runs them) one process connects within ``connect_s`` and keeps publishing at 1 sample/s
    each (report interval 10 s at clock speed 10) for ``steady_s``. An agent counts when it is connected
    at the end and the broker acknowledged samples of it during the steady window. The ladder stops at
    the first size that does not fully hold."""
    best, note = 0, "no agents run"
    for n in ladder:
        with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="lampwatch-bench-agents-") as d:
            budget = connect_s + steady_s + 120
            try:
                r = subprocess.run([sys.executable, "-m", "bench.bench_gateway", "agents", "--port", str(broker.port),
                                    "--n", str(n), "--connect-s", str(connect_s), "--steady-s", str(steady_s),
                                    "--dir", d], capture_output=True, text=True, timeout=budget)
            except subprocess.TimeoutExpired:
                return best, f"{n} agents: no answer within {budget:.0f} s"
        try:
            d = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = (r.stderr or "?").strip().splitlines() or ["?"]
            return best, f"{n} agents: process failed: {tail[-1][:150]}"
        note = (f"{d['publishing']}/{n} agents connected and publishing; all {d['connected_first']} connected "
                f"{d['connect_s']:.1f} s after start (created+started in {d['start_s']:.1f} s); steady "
                f"{d['acked_s']:.0f} samples/s acked, cpu {d['cpu_pct']:.0f} %, rss {d['rss_mb']:.0f} MB")
        best = max(best, int(d["publishing"]))
        if d["publishing"] < n:
            break
    return best, note


def run_agents(port: int, n: int, connect_s: float, steady_s: float, workdir: str) -> None:
    """In a process of its own: ``n`` agents on one EdgeLoop (report interval 10 s on a clock 10x real
    time: 1 sample/s per agent), wait until all are connected (at most ``connect_s``), then measure
    ``steady_s``; print one JSON line and exit at once (stopping is not what is measured)."""
    from edge.agent import EdgeAgent
    from edge.clock import ScaledClock
    from edge.loop import EdgeLoop
    from simulator.drills.edge_drills import _agent_cfg
    from simulator.run import raise_fd_limit

    raise_fd_limit(4 * n + 256)
    t0 = time.monotonic()
    loop = EdgeLoop(ScaledClock(10.0)).start()
    agents = [EdgeAgent(_agent_cfg(f"a-{i:05d}", port, Path(workdir), 10.0, outbox_sync="off"), loop=loop)
              for i in range(n)]
    for a in agents:
        a.start()
    start_s = time.monotonic() - t0
    deadline = t0 + connect_s
    while time.monotonic() < deadline and sum(a.connected for a in agents) < n:
        time.sleep(0.1)
    connect_s_taken = time.monotonic() - t0
    connected_first = sum(a.connected for a in agents)
    acked0 = [a.counters().get("acked", 0) for a in agents]
    cpu0, w0 = time.process_time(), time.monotonic()
    time.sleep(steady_s)
    cpu1, w1 = time.process_time(), time.monotonic()
    acked1 = [a.counters().get("acked", 0) for a in agents]
    publishing = sum(1 for a, x0, x1 in zip(agents, acked0, acked1, strict=True) if a.connected and x1 > x0)
    res = {"n": n, "start_s": start_s, "connected_first": connected_first, "connect_s": connect_s_taken,
           "publishing": publishing, "connected": sum(a.connected for a in agents),
           "acked_s": (sum(acked1) - sum(acked0)) / (w1 - w0), "cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0),
           "rss_mb": vm_rss_mb(os.getpid()), "backlog": sum(a.backlog() for a in agents),
           "threads": threading.active_count()}
    print(json.dumps(res), flush=True)
    os._exit(0)

