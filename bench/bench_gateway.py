"""Sustained zero-loss ingest rate, real servers: ``python -m bench.bench_gateway [--quick]``.

Every system consumes the same load on the same real Mosquitto (testbed.servers: queue limits
lifted) and writes to the same real InfluxDB 1.6.7:

* ``raw``            a bare paho subscriber (MQTT 5, QoS 1, persistent session) that only counts;
* ``naive``          the tutorial pipeline: paho callback -> pydantic ``Telemetry.model_validate_json``
                     -> one InfluxDB ``/write`` per message (``Influx1Store.write`` of its points);
* ``gateway-1``      ``python -m gateway run`` (one process);
* ``gateway-2``      two gateway processes, districts partitioned (LAMPWATCH_GATEWAY_DISTRICTS);
* ``mqtt2influxdb``  the PyPI bridge 1.5.2 (the last release that speaks InfluxDB 1.x), in its own venv.

Load: :mod:`bench.loadgen` in a separate process (TelemetryStream messages of a 100k-pole city through
the multiplexed Publisher, QoS 1) at fixed offered rates, each held ``hold_s`` seconds. A rate is
*sustained* when the load generator achieved it, and every published message was counted (raw) or
stored and queryable (the others) within ``settle_s`` of the last PUBACK. Each system climbs a ladder
of rates until one fails; the highest sustained rate is its result. After a failed rate the bench
keeps waiting while the consumer still makes progress, to tell "late" from "lost".

Latency: every message of every 200th pole is a probe whose publish wall time the load generator
records; a poller queries ``SELECT last(seq) ... GROUP BY pole`` every 0.2 s and stamps a probe
queryable at the first answer that shows it (an upper bound: up to one poll interval late). For
``raw`` it is publish-to-delivery instead. RSS = VmHWM of the consumer process(es).

Prints a table, ``sim: msgs_s=<n> agents=<n>`` and, last,
``bench: gateway_msgs_s=<x> raw_msgs_s=<y> naive_msgs_s=<z> ratio_raw=<x/y> ratio_naive=<x/z>
gw_us_per_msg=<a> raw_us_per_msg=<b> cpu_ratio=<a/b> two_proc_msgs_s=<w> p99_ms=<l> lost=<n>`` (one line).

CPU: for every trial, the CPU time (utime + stime from /proc) that the consumer process(es), Mosquitto,
InfluxDB and the load generator(s) spent between the start of the load and the end of the settle or
drain, divided by the messages published: microseconds of CPU per message, per process. Above
``ONE_LOADGEN_MAX`` msg/s the load comes from two load-generator processes publishing disjoint halves.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.consumers import consume
from bench.edgecap import agents_capability, run_agents, sim_capability
from bench.ladder import LADDER, ONE_LOADGEN_MAX, SYSTEMS, Bench, Spec, SystemResult, Trial, quick_spec, threads_text
from bench.loadgen import probe_poles
from bench.m2i import M2I_VERSION, m2i_venv
from testbed.servers import InfluxDB1

# the names other modules and tests read from here (the split by concern kept this module's surface)
__all__ = ["LADDER", "M2I_VERSION", "ONE_LOADGEN_MAX", "SYSTEMS", "Spec", "SystemResult", "Trial", "lines",
           "main", "quick_spec", "report", "run", "summarise", "table"]


# --- the whole benchmark ---------------------------------------------------------------------------------
def run(spec: Spec | None = None) -> dict[str, Any]:
    sp = spec or Spec()
    results: dict[str, SystemResult] = {}
    with tempfile.TemporaryDirectory(prefix="lampwatch-bench-") as tmp, InfluxDB1() as influx:
        b = Bench(sp, influx, Path(tmp))
        for system in sp.systems:
            if system == "mqtt2influxdb":
                b.m2i, note = m2i_venv()
                if b.m2i is None:
                    results[system] = SystemResult(system, note=note)
                    continue
                res = b.search(system)
                res.note = "; ".join(x for x in (note, res.note, "subscribes QoS 0, stamps arrival time (1 s)") if x)
                results[system] = res
                continue
            start = None
            if system == "gateway-2" and "gateway-1" in results and results["gateway-1"].best is not None:
                start = int(results["gateway-1"].msgs_s)
            results[system] = b.search(system, start)
    sim = sim_capability(sp.sim_s) if sp.sim_s else {"msgs_s": 0.0}
    agents, agents_note = agents_capability(sp.agents) if sp.agents else (0, "skipped")
    return summarise(results, sim, agents, agents_note)


def summarise(results: dict[str, SystemResult], sim: dict[str, float], agents: int, agents_note: str) -> dict[str, Any]:
    g1, g2 = results.get("gateway-1"), results.get("gateway-2")
    gw = max((g for g in (g1, g2) if g is not None), key=lambda g: (g.msgs_s, -len(g.system)), default=None)
    best = gw.best if gw else None
    raw = results["raw"].msgs_s if "raw" in results else 0.0
    naive = results["naive"].msgs_s if "naive" in results else 0.0
    gw_rate = gw.msgs_s if gw else 0.0
    lost = sum(t.lost for g in (g1, g2) if g is not None for t in [*g.trials, *([g.at80] if g.at80 else [])]
               if t.drained)

    def us(res: SystemResult | None) -> float:
        b = res.best if res is not None else None
        return b.cpu_us.get("consumer", 0.0) if b else 0.0

    gw_us, raw_us = us(g1), us(results.get("raw"))
    b1 = g1.best if g1 is not None else None
    a80 = g1.at80 if g1 is not None else None
    return {
        "p99_at80_ms": a80.p99_ms if a80 is not None and a80.sustained and a80.p99_ms is not None else -1.0,
        "at80_msgs_s": a80.rate if a80 is not None else 0,
        "gw_first_us_per_msg": b1.first_cpu_us.get("consumer", 0.0) if b1 and b1.first_cpu_us else 0.0,
        "gw_us_per_msg": gw_us, "raw_us_per_msg": raw_us, "cpu_ratio": gw_us / raw_us if raw_us else 0.0,
        "two_proc_ratio": (g2.msgs_s / g1.msgs_s) if (g1 and g2 and g1.msgs_s) else 0.0,
        "gateway_msgs_s": gw_rate, "gateway_mode": gw.system if gw else "-",
        "gateway_1_msgs_s": g1.msgs_s if g1 else 0.0, "gateway_2_msgs_s": g2.msgs_s if g2 else 0.0,
        "raw_msgs_s": raw, "naive_msgs_s": naive,
        "ratio_raw": gw_rate / raw if raw else 0.0,
        "ratio_raw_one_process": (g1.msgs_s / raw) if (g1 and raw) else 0.0,
        "ratio_naive": gw_rate / naive if naive else 0.0,
        "p99_ms": best.p99_ms if best and best.p99_ms is not None else -1.0,
        "p50_ms": best.p50_ms if best and best.p50_ms is not None else -1.0,
        "lost": lost,
        "sim_msgs_s": sim.get("msgs_s", 0.0), "sim_values_s": sim.get("values_s", 0.0),
        "agents": agents, "agents_note": agents_note,
        "systems": {k: {"msgs_s": v.msgs_s, "note": v.note, "trials": [asdict(t) for t in v.trials],
                        "at80": asdict(v.at80) if v.at80 is not None else None}
                    for k, v in results.items()},
    }


def table(r: dict[str, Any]) -> Table:
    t = Table(title="lampwatch ingest: highest offered rate sustained with zero loss (real Mosquitto + InfluxDB 1.6.7)")
    for col in ("system", "msgs/s", "poles", "values/s", "p50 ms", "p99 ms", "RSS MB", "CPU us/msg: consumer broker "
                "influxd loadgen", "first interval: CPU us/msg (held)", "rates tried", "note"):
        t.add_column(col, overflow="fold")
    for name, s in r["systems"].items():
        trials = s["trials"]
        ok = [x for x in trials if x["sustained"]]
        b = max(ok, key=lambda x: x["rate"]) if ok else None
        tried = " ".join(f"{x['rate'] // 1000 if x['rate'] >= 1000 else x['rate']}{'k' if x['rate'] >= 1000 else ''}"
                         f"{'✓' if x['sustained'] else '✗'}" for x in trials)
        fail = next((x for x in trials if not x["sustained"]), None)
        note = s["note"]
        if fail is not None and not fail["note"]:
            note = "; ".join(x for x in (note, f"at {fail['rate']}: {fail['stored_settled']}/{fail['published']} in "
                                         f"settle, {fail['stored_final']} after drain"
                                         f"{'' if fail['drained'] else ' (still draining)'}") if x)
        elif fail is not None:
            note = "; ".join(x for x in (note, fail["note"]) if x)
        a80 = s.get("at80")
        if a80:
            p99 = "-" if a80["p99_ms"] is None else f"{a80['p99_ms']:.0f}"
            held = "held" if a80["sustained"] else "not held"
            note = "; ".join(x for x in (note, f"at 80 % ({a80['rate']}): {held}, p99 {p99} ms") if x)
        threads = threads_text(b.get("thread_us", {})).strip() if b else ""
        note = "; ".join(x for x in (note, threads) if x)
        if name == r["gateway_mode"]:
            note = "; ".join(x for x in ("<- gateway result", note) if x)

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f}"

        def cpu(c: dict[str, float]) -> str:
            return " ".join(f"{c.get(k, 0):.0f}" for k in ("consumer", "broker", "influxd", "loadgen"))

        first = "-"
        if b and b["first_cpu_us"]:
            first = f"{cpu(b['first_cpu_us'])} ({'held' if b['first_held'] else 'late'})"
        t.add_row(name, f"{s['msgs_s']:.0f}", f"{b['poles']}" if b else "-",
                  f"{s['msgs_s'] * b['values_per_msg']:.0f}" if b else "0",
                  ms(b["p50_ms"]) if b else "-", ms(b["p99_ms"]) if b else "-",
                  "+".join(f"{m:.0f}" for m in b["rss_mb"]) if b else "-",
                  cpu(b["cpu_us"]) if b else "-", first, tried or "-", note)
    t.add_row("simulator", f"{r['sim_msgs_s']:.0f}", "-", f"{r['sim_values_s']:.0f}", "-", "-", "-", "-", "-", "-",
              f"multiplexed generate+publish, one process, unpaced; agents={r['agents']}: {r['agents_note']}")
    return t


def lines(r: dict[str, Any]) -> list[str]:
    return [f"sim: msgs_s={r['sim_msgs_s']:.0f} agents={r['agents']}",
            f"bench: gateway_msgs_s={r['gateway_msgs_s']:.0f} raw_msgs_s={r['raw_msgs_s']:.0f} "
            f"naive_msgs_s={r['naive_msgs_s']:.0f} ratio_raw={r['ratio_raw']:.2f} ratio_naive={r['ratio_naive']:.1f} "
            f"gw_us_per_msg={r['gw_us_per_msg']:.0f} raw_us_per_msg={r['raw_us_per_msg']:.0f} "
            f"cpu_ratio={r['cpu_ratio']:.2f} two_proc_msgs_s={r['gateway_2_msgs_s']:.0f} "
            f"p99_ms={r['p99_ms']:.0f} lost={r['lost']} gw_first_interval_us_per_msg={r['gw_first_us_per_msg']:.0f} "
            f"p99_at_80pct_ms={r['p99_at80_ms']:.0f} at_80pct_msgs_s={r['at80_msgs_s']:.0f}"]


def report(r: dict[str, Any]) -> None:
    Console(width=200).print(table(r))
    for line in lines(r):
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_gateway")
    sub = ap.add_subparsers(dest="cmd")
    b = sub.add_parser("bench")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--systems", default="")
    b.add_argument("--rates", default="", help="a targeted run: exactly these rates (comma-separated), no ladder")
    b.add_argument("--hold", type=float, default=0.0, help="seconds each rate is held (default: the spec's)")
    b.add_argument("--pyspy", default="", help="directory: py-spy records each gateway process during the load")
    b.add_argument("--json", default="", help="also write the whole result as JSON to this file")
    b.add_argument("--first-interval", action="store_true", help="no steady state: every trial is a "
                   "100,000-pole city's first interval (each message a pole not seen before)")
    c = sub.add_parser("consume")
    c.add_argument("kind", choices=("raw", "raw-buffered", "naive"))
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--client-id", required=True)
    c.add_argument("--influx-url", default="")
    c.add_argument("--db", default="")
    c.add_argument("--probe-every", type=int, default=200)
    c.add_argument("--poles", type=int, default=100_000)
    g = sub.add_parser("agents")
    g.add_argument("--port", type=int, required=True)
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--connect-s", type=float, default=60.0)
    g.add_argument("--steady-s", type=float, default=20.0)
    g.add_argument("--dir", required=True)
    a = ap.parse_args(argv if argv is not None else (sys.argv[1:] or ["bench"]))
    if a.cmd == "consume":
        consume(a.kind, a.host, a.port, a.client_id, a.influx_url, a.db, set(probe_poles(a.poles, a.probe_every)))
    elif a.cmd == "agents":
        run_agents(a.port, a.n, a.connect_s, a.steady_s, a.dir)
    else:
        sp = quick_spec() if a.quick else Spec()
        if a.systems:
            sp.systems = tuple(a.systems.split(","))
        if a.rates:
            sp.rates = tuple(int(x) for x in a.rates.split(","))
            sp.sim_s, sp.agents = 0.0, ()
        if a.hold:
            sp.hold_s = a.hold
        sp.pyspy_dir = a.pyspy or None
        sp.steady = not a.first_interval
        r = run(sp)
        report(r)
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
