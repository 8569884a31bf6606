"""CPU per message of the gateway's pure hot path, in one process, no sockets:
``python -m bench.hotpath [--poles N] [--ticks T] [--no-detect] [--no-births] [--profile]``.

Renders ``poles * ticks`` lampwatch telemetry messages (the load generator's city and order), hands
the gateway each pole's birth first (untimed; ``--no-births`` leaves every lamp's rating to be learnt
from its lit draw, as for a device that declares none; against the old 120 W default that was an alarm
storm over half the city, which is what this measured before the births), then
runs, per batch of ``batch`` messages as the pipeline thread does: ``Pipeline.telemetry`` (decode,
validate, dedup, points) for every message, the detection stage over the batch's outcomes, and the
line-protocol encoding of the batch's points (what ``Influx1Store.write`` sends). Prints one line
``hotpath: us_per_msg=<all> decode_us=<d> detect_us=<x> encode_us=<e> msgs=<n> bytes_per_msg=<b>
births_us=<per birth>`` from process CPU time
(``time.process_time``), so it is robust to other load on the machine. ``--profile`` prints the top
functions of a cProfile run instead (by own time); ``--memory`` what the run keeps (tracemalloc),
``--rss [--save]`` what is resident (VmRSS/VmHWM, each detection table by pagemap). This isolates the
per-message work the gateway does between paho's callback and the HTTP write; the whole-process figure
comes from ``bench_gateway``.
"""

from __future__ import annotations

import argparse
import cProfile
import mmap
import os
import pstats
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import make_stream
from gateway.detection import DetectionStage
from gateway.pipeline import Outcome, Pipeline
from ingest.lineprotocol import encode_many
from simulator.stream import birth_messages


def render(poles: int, ticks: int, seed: int = 7) -> list[tuple[str, bytes]]:
    return city(poles, ticks, seed, births=False)[1]


def city(poles: int, ticks: int, seed: int = 7, *,
         births: bool = True) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """The load generator's city: each pole's birth (what its inventory record says, as ``bench.loadgen
    --births`` sends it; none without ``births``) and ``ticks`` rounds of its telemetry."""
    stream = make_stream(poles, seed, 8, ticks)
    born = birth_messages(stream, stream.start_ms) if births else []
    out: list[tuple[str, bytes]] = []
    for _ in range(ticks):
        out += stream.tick()
    return born, out


def _announce(pipe: Pipeline, stage: DetectionStage | None, births: Sequence[tuple[str, bytes]],
              now_ms: int, batch: int = 250) -> None:
    """The births through the pipeline and detection, ``batch`` at a time as the gateway's worker hands
    a run of status messages over (``Gateway._detect``)."""
    for i in range(0, len(births), batch):
        outs = [pipe.status(topic, payload, now_ms) for topic, payload in births[i:i + batch]]
        if stage is not None:
            stage(Outcome(statuses=[o.status for o in outs if o.status is not None]))


def run(msgs: list[tuple[str, bytes]], *, batch: int = 250, detect: bool = True,
        births: Sequence[tuple[str, bytes]] = ()) -> dict[str, float]:
    """Process-CPU microseconds per message of each stage over ``msgs`` (``births`` first, untimed)."""
    now_ms = int(time.time() * 1000)
    pipe = Pipeline()
    with tempfile.TemporaryDirectory(prefix="lampwatch-hotpath-") as tmp:
        stage = DetectionStage(state_path=str(Path(tmp) / "alarms.json")) if detect else None
        c_b = time.process_time()
        _announce(pipe, stage, births, now_ms, batch)
        t_births = time.process_time() - c_b
        t_dec = t_det = t_enc = 0.0
        nbytes = 0
        for i in range(0, len(msgs), batch):
            chunk = msgs[i:i + batch]
            c0 = time.process_time()
            outs: list[Outcome] = [pipe.telemetry(topic, payload, now_ms) for topic, payload in chunk]
            c1 = time.process_time()
            points = [p for o in outs for p in o.points]
            if stage is not None:
                readings = [r for o in outs for r in o.readings]
                points += stage(Outcome(readings=readings))
            c2 = time.process_time()
            nbytes += len(encode_many(points))
            c3 = time.process_time()
            t_dec, t_det, t_enc = t_dec + c1 - c0, t_det + c2 - c1, t_enc + c3 - c2
        if stage is not None:
            stage.close()
    n = max(1, len(msgs))
    return {"us_per_msg": (t_dec + t_det + t_enc) * 1e6 / n, "decode_us": t_dec * 1e6 / n,
            "detect_us": t_det * 1e6 / n, "encode_us": t_enc * 1e6 / n, "msgs": float(len(msgs)),
            "bytes_per_msg": nbytes / n, "births_us": t_births * 1e6 / max(1, len(births))}


def compare_decoder(msgs: list[tuple[str, bytes]], *, batch: int = 250, rounds: int = 2) -> None:
    """The decode stage with and without the msgspec fast path, alternating in one process."""
    from gateway import decode

    fast = decode.wire.decode_telemetry
    try:
        for _ in range(rounds):
            for name in ("pydantic-only", "msgspec"):
                decode.wire.decode_telemetry = fast if name == "msgspec" else (lambda _p: None)  # type: ignore[assignment]
                r = run(msgs, batch=batch, detect=False)
                print(f"hotpath: decoder={name} decode_us={r['decode_us']:.1f}", flush=True)
    finally:
        decode.wire.decode_telemetry = fast  # type: ignore[assignment]


def memory(msgs: list[tuple[str, bytes]], *, batch: int = 250, detect: bool = True,
           top: int = 12, births: Sequence[tuple[str, bytes]] = ()) -> list[tuple[str, float]]:
    """What the pipeline, dedup and detection state keep after ``msgs`` (tracemalloc), by the first frame of
    lampwatch code that allocated it (a numpy array is charged to the lampwatch line that asked for it)."""
    import tracemalloc
    from collections import Counter

    now_ms = int(time.time() * 1000)
    tracemalloc.start(8)
    pipe = Pipeline()
    with tempfile.TemporaryDirectory(prefix="lampwatch-hotpath-") as tmp:
        stage = DetectionStage(state_path=str(Path(tmp) / "alarms.json")) if detect else None
        _announce(pipe, stage, births, now_ms, batch)
        for i in range(0, len(msgs), batch):
            outs = [pipe.telemetry(topic, payload, now_ms) for topic, payload in msgs[i:i + batch]]
            points = [p for o in outs for p in o.points]
            if stage is not None:
                points += stage(Outcome(readings=[r for o in outs for r in o.readings]))
            encode_many(points)
        del outs, points
        snap = tracemalloc.take_snapshot()
        tracemalloc.stop()
        by: Counter[str] = Counter()
        for s in snap.statistics("traceback"):
            ours = [f for f in s.traceback if "/bench/" not in f.filename and
                    any(f"/{pkg}/" in f.filename for pkg in ("gateway", "contract", "ingest"))]
            key = "/".join(ours[-1].filename.split("/")[-2:]) + f":{ours[-1].lineno}" if ours else "other"
            by[key] += s.size
        if stage is not None:
            stage.close()
    total = sum(by.values())
    return [("total", total / 1e6)] + [(k, v / 1e6) for k, v in by.most_common(top)]


def _status_mb() -> dict[str, float]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out


def _reset_hwm() -> None:
    """Start VmHWM afresh at the current VmRSS (Linux: /proc/self/clear_refs, "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _pagemap(addr: int, nbytes: int) -> np.ndarray:
    page = os.sysconf("SC_PAGE_SIZE")
    p0, p1 = addr // page, (addr + nbytes - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(p0 * 8)
        return np.frombuffer(f.read((p1 - p0 + 1) * 8), np.uint64)


_PFN = np.uint64((1 << 55) - 1)


def _zero_pfn() -> int:
    """The page frame of the kernel's shared zero page (a page only ever read maps it: it is not in VmRSS);
    0 where page frames are hidden (not root), and then no page is told apart."""
    mm = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    a = np.frombuffer(mm, np.uint8)
    int(a[0])  # a read: maps the zero page
    pfn = int(_pagemap(a.__array_interface__["data"][0], 1)[0] & _PFN)
    del a
    mm.close()
    return pfn


def _resident(a: np.ndarray, zero_pfn: int) -> int:
    """Bytes of ``a``'s pages backed by memory of their own (/proc/self/pagemap: present, bit 63, and not
    the shared zero page), not merely reserved or read."""
    if a.nbytes == 0:
        return 0
    raw = _pagemap(a.__array_interface__["data"][0], a.nbytes)
    present = (raw >> np.uint64(63)).astype(bool)
    if zero_pfn:
        present &= (raw & _PFN) != np.uint64(zero_pfn)
    return int(present.sum()) * mmap.PAGESIZE


def rss(msgs: list[tuple[str, bytes]], *, batch: int = 250, save: bool = False,
        births: Sequence[tuple[str, bytes]] = ()) -> list[str]:
    """Residency of decode + dedup + detection over ``msgs``, in this process: VmRSS before, VmHWM after
    (the high-water mark includes every moment of growth), the largest rise of VmHWM within one batch,
    and each detection table's bytes and resident bytes (pagemap: reserved rows are not resident). With
    ``save``: what one full state save (snapshot + write, on this thread) adds to the high-water mark."""
    from gateway.detect.engine import Detector

    now_ms = int(time.time() * 1000)
    lines = []
    with tempfile.TemporaryDirectory(prefix="lampwatch-hotpath-") as tmp:
        before = _status_mb()
        _reset_hwm()
        pipe = Pipeline()
        stage = DetectionStage(state_path=str(Path(tmp) / "alarms.json"), background_save=False,
                               save_every_s=1e12, save_min_interval_s=1e12)
        _announce(pipe, stage, births, now_ms, batch)
        jump, peak = (0.0, 0), 0.0
        for i in range(0, len(msgs), batch):
            r0 = _status_mb()["VmRSS"]
            _reset_hwm()
            outs = [pipe.telemetry(topic, payload, now_ms) for topic, payload in msgs[i:i + batch]]
            points = [p for o in outs for p in o.points]
            points += stage(Outcome(readings=[r for o in outs for r in o.readings]))
            encode_many(points)
            hwm = _status_mb()["VmHWM"]
            peak, rise = max(peak, hwm), hwm - r0
            if rise > jump[0]:
                jump = (rise, i)
        del outs, points
        after = _status_mb()
        lines.append(f"rss: before={before['VmRSS']:.1f} MB after={after['VmRSS']:.1f} MB high-water={peak:.1f} MB "
                     f"largest_batch_rise={jump[0]:.1f} MB (at message {jump[1]})")
        det: Detector = stage.det
        parts: list[tuple[str, list[np.ndarray]]] = [(type(t).__name__, list(t._arrays.values()))
                                                     for t in det.state.tables]
        if det.stream is not None:
            parts.append(("StreamDetector", [det.stream._s]))
        parts.append(("AlarmPolicy (poles)", list(det.poles._a.values())))
        tot, zp = [0, 0], _zero_pfn()
        for name, arrays in parts:
            nb, res = sum(a.nbytes for a in arrays), sum(_resident(a, zp) for a in arrays)
            tot[0] += nb
            tot[1] += res
            lines.append(f"rss: {name:22s} {nb / 1e6:7.1f} MB allocated {res / 1e6:7.1f} MB resident")
        lines.append(f"rss: {'detection arrays':22s} {tot[0] / 1e6:7.1f} MB allocated {tot[1] / 1e6:7.1f} MB resident "
                     f"(fleet capacity {det.state.capacity}, poles {det.state.n})")
        if save:
            r0 = _status_mb()["VmRSS"]
            _reset_hwm()
            with stage._lock:
                snap = stage._snapshot(True)
            copied = _status_mb()["VmHWM"] - r0
            c0 = time.process_time()
            stage._write(snap)
            cpu_s = time.process_time() - c0
            del snap
            size = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
            lines.append(f"rss: full save adds {_status_mb()['VmHWM'] - r0:.1f} MB to the high-water mark "
                         f"(its copy under the lock {copied:.1f} MB); writing it took {cpu_s:.2f} CPU-s, "
                         f"{size:.1f} MB on disk")
        stage._saver = None
        stage._closed = True  # no save at exit: it would be measured by nobody
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--poles", type=int, default=20_000)
    ap.add_argument("--ticks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--no-detect", action="store_true")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions by own time")
    ap.add_argument("--memory", action="store_true",
                    help="tracemalloc: what the run keeps, by the code that allocated it")
    ap.add_argument("--rss", action="store_true",
                    help="VmRSS/VmHWM around the same hot path and each detection table's resident bytes")
    ap.add_argument("--save", action="store_true", help="with --rss: what one full state save adds")
    ap.add_argument("--compare-decoder", action="store_true",
                    help="alternate the msgspec fast path and the pydantic-only decoder, two rounds each")
    ap.add_argument("--no-births", action="store_true",
                    help="skip the poles' births: every lamp's rating is learnt from its lit draw")
    a = ap.parse_args(argv)
    born, msgs = city(a.poles, a.ticks, births=not a.no_births)
    if a.compare_decoder:
        compare_decoder(msgs, batch=a.batch)
        return
    if a.rss:
        for line in rss(msgs, batch=a.batch, save=a.save, births=born):
            print(line)
        return
    if a.memory:
        for where, mb in memory(msgs, batch=a.batch, detect=not a.no_detect, births=born):
            print(f"memory: {mb:8.1f} MB  {where}")
        return
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        r: dict[str, Any] = run(msgs, batch=a.batch, detect=not a.no_detect, births=born)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    else:
        r = run(msgs, batch=a.batch, detect=not a.no_detect, births=born)
    print(f"hotpath: us_per_msg={r['us_per_msg']:.1f} decode_us={r['decode_us']:.1f} detect_us={r['detect_us']:.1f} "
          f"encode_us={r['encode_us']:.1f} msgs={r['msgs']:.0f} bytes_per_msg={r['bytes_per_msg']:.0f} "
          f"births_us={r['births_us']:.1f}", flush=True)


if __name__ == "__main__":
    main()
