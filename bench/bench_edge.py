"""Footprint of one edge agent at 1 sample/s, and the cost of the outbox's fsync policy.

``python -m bench.bench_edge`` starts a real Mosquitto (testbed.servers), runs ``python -m edge run``
as a subprocess at one sample per second (every catalog metric, the critical ones also checked every
second), lets it warm up, then measures its resident memory and CPU over a window. Then it times
outbox appends under each ``outbox_sync`` policy on the same disk, against ``off`` as the baseline.
Prints::

    edge: rss_mb=<x> cpu_pct=<y> uss_mb=<z>
    outbox: full_ms=<a> normal_ms=<b> off_ms=<c> full_vs_off=<ratio>x
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from edge.outbox import Outbox
from testbed.servers import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = {m: 1.0 for m in ("leakage_current_ma", "tilt_deg", "water_level_cm", "smoke", "door_open",
                           "supply_voltage_v", "lamp_power_w", "cabinet_temp_c", "humidity_pct", "noise_db")}


def footprint(warmup_s: float = 5.0, window_s: float = 20.0) -> dict[str, float]:
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="lampwatch-bench-") as d:
        conf = Path(d) / "edge.toml"
        conf.write_text(f'pole = "bench-1"\ndistrict = "bench"\nmqtt_port = {broker.port}\n'
                        f'report_interval_s = 1.0\nsafety_interval_s = 1.0\noutbox_path = "{d}/outbox.sqlite"\n'
                        'log_level = "WARNING"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("LAMPWATCH_EDGE_")}
        env["PYTHONPATH"] = str(ROOT)
        proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(conf)], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            p = psutil.Process(proc.pid)
            time.sleep(warmup_s)
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited: {proc.stderr.read().decode()[-500:] if proc.stderr else ''}")
            c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
            rss_peak = uss_peak = 0
            while time.monotonic() - t0 < window_s:
                mem = p.memory_full_info()
                rss_peak, uss_peak = max(rss_peak, mem.rss), max(uss_peak, mem.uss)
                time.sleep(1.0)
            c1, t1 = sum(p.cpu_times()[:2]), time.monotonic()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr:
                proc.stderr.close()
    return {"rss_mb": rss_peak / 2**20, "cpu_pct": 100.0 * (c1 - c0) / (t1 - t0), "uss_mb": uss_peak / 2**20}


def fsync_cost(n: int = 200, directory: str | None = None) -> dict[str, float]:
    """Mean milliseconds per outbox append (one sample, one transaction) under each sync policy."""
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lampwatch-bench-", dir=directory) as d:
        for sync in ("off", "normal", "full"):
            ob = Outbox(Path(d) / f"{sync}.sqlite", sync=sync)  # type: ignore[arg-type]
            for _ in range(10):  # warm the file
                ob.append(1_700_000_000_000, SAMPLE, "bench")
            t0 = time.perf_counter()
            for _ in range(n):
                ob.append(1_700_000_000_000, SAMPLE, "bench")
            out[f"{sync}_ms"] = (time.perf_counter() - t0) * 1000 / n
            ob.close()
    return out


def run(window_s: float = 20.0) -> dict[str, float]:
    res = footprint(window_s=window_s)
    res.update(fsync_cost())
    res["full_vs_off"] = res["full_ms"] / res["off_ms"]
    return res


def main() -> None:
    r = run()
    # uss = memory private to the agent; rss also counts shared library pages (libpython, libssl, ...)
    print(f"edge: rss_mb={r['rss_mb']:.1f} cpu_pct={r['cpu_pct']:.2f} uss_mb={r['uss_mb']:.1f}")
    print(f"outbox: full_ms={r['full_ms']:.3f} normal_ms={r['normal_ms']:.3f} off_ms={r['off_ms']:.3f} "
          f"full_vs_off={r['full_vs_off']:.1f}x")


if __name__ == "__main__":
    main()
