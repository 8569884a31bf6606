"""``lampwatch-sim report``: one self-contained HTML file (inline SVG, inline CSS, no script, no network).

Sections: the per-kind score table; the fleet map (every pole at its latitude/longitude, coloured by
the worst alarm severity it raised); detections against ground truth (bars per fault kind: labels,
detected, false alarms); one timeline per fault (the faulted metric's series around the label window,
the label window shaded, alarm intervals of that pole drawn underneath; delivery faults show the gap
between samples instead); throughput (samples stored per bucket of device time, and, from a scenario
run, messages published per second of real time).

Every plotted element carries data attributes (``data-pole``, ``data-severity``, ``data-kind``,
``data-series``...) so tests count series without rendering. Build with :func:`build_report` from a
store reader, labels and (optionally) a scenario run's ``run.json``.
"""

from __future__ import annotations

import html
import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract import schema
from contract.catalog import BY_NAME
from ingest.stores import StoreReader
from simulator.alarms_io import AlarmRow, alarm_rows, score_store, severity_rank
from simulator.faults import Label
from simulator.score import Alarm, compatible

SEV_COLOURS = {"none": "#9aa5b1", "info": "#3b82f6", "warning": "#f59e0b", "critical": "#dc2626"}
MAX_TIMELINES = 40
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1280px;
color:#1f2933;background:#f7f8fa;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d9dee4;padding-bottom:4px}
.meta{color:#52606d;margin-bottom:12px}.card{background:#fff;border:1px solid #d9dee4;border-radius:8px;padding:12px;
margin:8px 0}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{padding:3px 10px;border-bottom:1px solid #e4e7eb;
text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f0f2f5}
.legend span{display:inline-block;margin-right:14px}.sw{display:inline-block;width:11px;height:11px;border-radius:2px;
margin-right:4px;vertical-align:-1px}svg text{font:11px system-ui,sans-serif;fill:#52606d}
.tl-title{font-weight:600;font-size:13px;margin:0 0 2px}.tl-sub{color:#52606d;font-size:12px;margin:0 0 4px}
.hit{color:#15803d;font-weight:600}.miss{color:#b91c1c;font-weight:600}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float, nd: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _hhmm(t_ms: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t_ms / 1000))


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9 * step:
        out.append(round(v, 10))
        v += step
    return out


@dataclass
class _Axes:
    """A plot area in an SVG: data -> pixel."""

    x0: float
    x1: float
    y0: float
    y1: float
    left: int = 52
    top: int = 10
    width: int = 520
    height: int = 110

    def x(self, v: float) -> float:
        return self.left + (v - self.x0) / ((self.x1 - self.x0) or 1) * self.width

    def y(self, v: float) -> float:
        return self.top + self.height - (v - self.y0) / ((self.y1 - self.y0) or 1) * self.height

    def frame(self, *, x_time: bool = True, x_label: str = "", y_label: str = "") -> str:
        parts = [f'<rect x="{self.left}" y="{self.top}" width="{self.width}" height="{self.height}" '
                 f'fill="#fff" stroke="#cbd2d9"/>']
        for v in _ticks(self.y0, self.y1):
            y = self.y(v)
            parts.append(f'<line x1="{self.left}" x2="{self.left + self.width}" y1="{y:.1f}" y2="{y:.1f}" '
                         f'stroke="#eef0f3"/><text x="{self.left - 4}" y="{y + 3:.1f}" text-anchor="end">'
                         f'{_e(_num(v))}</text>')
        for v in _ticks(self.x0, self.x1, 5):
            x = self.x(v)
            lab = _hhmm(v) if x_time else _num(v)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.top + self.height}" '
                         f'y2="{self.top + self.height + 3}" stroke="#9aa5b1"/>'
                         f'<text x="{x:.1f}" y="{self.top + self.height + 14}" text-anchor="middle">{_e(lab)}</text>')
        if x_label:
            parts.append(f'<text x="{self.left + self.width}" y="{self.top + self.height + 27}" '
                         f'text-anchor="end">{_e(x_label)}</text>')
        if y_label:
            parts.append(f'<text x="{self.left}" y="{self.top - 2}" text-anchor="start">{_e(y_label)}</text>')
        return "".join(parts)


def _num(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"


def _points(ax: _Axes, xs: Sequence[float], ys: Sequence[float]) -> str:
    return " ".join(f"{ax.x(x):.1f},{ax.y(y):.1f}" for x, y in zip(xs, ys, strict=True))


# --- sections ----------------------------------------------------------------------------------------------
def fleet_map(poles: Sequence[dict[str, Any]], worst: dict[str, str], faulted: set[str]) -> str:
    if not poles:
        return '<p class="meta">No pole positions: build the report from a scenario run folder (run.json).</p>'
    w, h, pad = 760, 520, 24
    lats = [float(p["lat"]) for p in poles]
    lons = [float(p["lon"]) for p in poles]
    k = math.cos(math.radians(sum(lats) / len(lats)))
    span_x = max((max(lons) - min(lons)) * k, 1e-6)
    span_y = max(max(lats) - min(lats), 1e-6)
    s = min((w - 2 * pad) / span_x, (h - 2 * pad) / span_y)
    ox = (w - span_x * s) / 2
    oy = (h - span_y * s) / 2
    r = max(2.5, min(7.0, 220 / math.sqrt(len(poles))))
    out = [f'<svg class="fleet-map" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
           f'aria-label="fleet map"><rect width="{w}" height="{h}" fill="#eef2f6" rx="6"/>']
    order = sorted(poles, key=lambda p: severity_rank(worst.get(p["pole"], "none")))  # worst drawn on top
    for p in order:
        sev = worst.get(p["pole"], "none")
        x = ox + (float(p["lon"]) - min(lons)) * k * s
        y = h - (oy + (float(p["lat"]) - min(lats)) * s)
        ring = ' stroke="#111827" stroke-width="1.6"' if p["pole"] in faulted else ' stroke="#fff" stroke-width="0.8"'
        out.append(f'<circle class="pole" data-pole="{_e(p["pole"])}" data-district="{_e(p.get("district", ""))}" '
                   f'data-severity="{sev}" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{SEV_COLOURS[sev]}"{ring}>'
                   f'<title>{_e(p["pole"])} ({_e(p.get("district", ""))}): {sev}'
                   f'{" · labelled fault" if p["pole"] in faulted else ""}</title></circle>')
    out.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{"no alarm" if k_ == "none" else k_}</span>'
                     for k_, c in SEV_COLOURS.items())
    legend += '<span><i class="sw" style="background:#fff;border:1.6px solid #111827"></i>labelled fault</span>'
    return "".join(out) + f'<div class="legend">{legend}</div>'


def kind_bars(per_kind: dict[str, Any], unmatched: Sequence[Alarm]) -> str:
    """Per labelled fault kind: labels and detected; per alarm kind: alarms that matched no label."""
    kinds = [k for k, v in per_kind.items() if v.labels]
    false_by_kind: dict[str, int] = {}
    for a in unmatched:
        false_by_kind[a.kind] = false_by_kind.get(a.kind, 0) + 1
    if not kinds and not false_by_kind:
        return '<p class="meta">No labels and no alarms to compare.</p>'
    series = (("labels", "#9aa5b1"), ("detected", "#16a34a"), ("false", "#dc2626"))
    vals = {k: (per_kind[k].labels, per_kind[k].detected, 0) for k in kinds}
    alarm_groups: set[str] = set()
    for k, n in sorted(false_by_kind.items(), key=lambda kv: -kv[1]):
        g = f"{k} (alarm)" if k in vals else k
        vals[g] = (0, 0, n)
        alarm_groups.add(g)
    kinds = list(vals)
    top = max(1, max(max(v) for v in vals.values()))
    group, bw = 3 * 16 + 22, 16
    width = max(520, 60 + group * len(kinds))
    ax = _Axes(0, len(kinds), 0, top * 1.1, left=44, top=16, width=width - 60, height=200)
    out = [f'<svg class="kind-bars" width="{width}" height="290" role="img" aria-label="detections per kind">',
           f'<rect x="{ax.left}" y="{ax.top}" width="{ax.width}" height="{ax.height}" fill="#fff" '
           f'stroke="#cbd2d9"/>']
    for v in _ticks(0, top * 1.1):
        y = ax.y(v)
        out.append(f'<line x1="{ax.left}" x2="{ax.left + ax.width}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eef0f3"/>'
                   f'<text x="{ax.left - 4}" y="{y + 3:.1f}" text-anchor="end">{_num(v)}</text>')
    for i, k in enumerate(kinds):
        drawn = [2, 2] if k in alarm_groups else [0, 1]  # first and last series drawn
        gx = ax.left + (i + 0.5) * (ax.width / len(kinds)) - (drawn[0] + drawn[1] + 1) * bw / 2
        for j, (name, colour) in enumerate(series):
            v = vals[k][j]
            if (name == "false") != (k in alarm_groups):
                continue  # labelled kinds show labels + detected; alarm kinds show their false alarms
            y = ax.y(v)
            out.append(f'<rect class="bar" data-kind="{_e(k)}" data-series="{name}" data-value="{v}" '
                       f'x="{gx + j * bw:.1f}" y="{y:.1f}" width="{bw - 2}" height="{ax.top + ax.height - y:.1f}" '
                       f'fill="{colour}"><title>{_e(k)} {name}: {v}</title></rect>')
            if v:
                out.append(f'<text x="{gx + j * bw + (bw - 2) / 2:.1f}" y="{y - 3:.1f}" '
                           f'text-anchor="middle">{v}</text>')
        cx = ax.left + (i + 0.5) * (ax.width / len(kinds))
        ty = ax.top + ax.height + 14 + 13 * (i % 2)  # alternate rows: long names never collide
        out.append(f'<text x="{cx:.1f}" y="{ty}" text-anchor="middle">{_e(k)}</text>')
    out.append("</svg>")
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{n}</span>' for n, c in
                     (("labelled faults", "#9aa5b1"), ("detected", "#16a34a"), ("false alarms", "#dc2626")))
    note = ('<p class="meta">Right of the labelled kinds: alarms that matched no labelled fault, by alarm kind '
            '(false alarms, or real conditions nobody labelled).</p>' if false_by_kind else "")
    return "".join(out) + f'<div class="legend">{legend}</div>{note}'


def timeline(reader: StoreReader, lb: Label, alarms: Sequence[AlarmRow], step_ms: int) -> str:
    dur = lb.end_ms - lb.start_ms
    pad = max(dur // 2, 20 * step_ms)
    t0, t1 = lb.start_ms - pad, lb.end_ms + pad
    metric = lb.metric
    rows = reader.select(schema.TELEMETRY, {"pole": lb.pole}, start_ns=t0 * 1_000_000, end_ns=t1 * 1_000_000 + 1)
    xs: list[float] = []
    ys: list[float] = []
    if metric:
        for r in rows:
            v = r.get(metric)
            if v is not None:
                xs.append(int(r["time"]) / 1e6)
                ys.append(float(v))
        unit = BY_NAME[metric].unit if metric in BY_NAME else ""
        y_label = f"{metric} ({unit})" if unit else metric
    else:  # a delivery fault: how long the gateway waited for each sample
        ts = [int(r["time"]) / 1e6 for r in rows]
        for a, b in itertools.pairwise(ts):  # a step line: the wait before sample b, drawn from a to b
            xs += [a, b]
            ys += [(b - a) / 1000] * 2
        y_label = "gap between stored samples (s)"
    mine = [a for a in alarms if a.alarm.pole == lb.pole
            and (a.alarm.cleared_ms is None or a.alarm.cleared_ms >= t0) and a.alarm.raised_ms <= t1]
    hits = [a for a in mine if compatible(lb, a.alarm) and lb.start_ms <= a.alarm.raised_ms]
    lo = min(ys) if ys else 0.0
    hi = max(ys) if ys else 1.0
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    lane = 12
    ax = _Axes(t0, t1, lo - 0.05 * (hi - lo), hi + 0.08 * (hi - lo), top=14, height=110)
    n_lanes = max(1, len(mine))
    height = ax.top + ax.height + 30 + n_lanes * lane + 6
    out = [f'<svg class="timeline" data-pole="{_e(lb.pole)}" data-kind="{_e(lb.kind)}" width="640" '
           f'height="{height}" role="img">', ax.frame(y_label=y_label)]
    lx0, lx1 = ax.x(max(lb.start_ms, t0)), ax.x(min(lb.end_ms, t1))
    out.append(f'<rect class="label-window" data-kind="{_e(lb.kind)}" x="{lx0:.1f}" y="{ax.top}" '
               f'width="{max(1.0, lx1 - lx0):.1f}" height="{ax.height}" fill="#fde68a" fill-opacity="0.45">'
               f'<title>labelled {_e(lb.kind)} {_hhmm(lb.start_ms)}–{_hhmm(lb.end_ms)}</title></rect>')
    if xs:
        out.append(f'<polyline class="series" data-series="{_e(metric or "gap_s")}" data-pole="{_e(lb.pole)}" '
                   f'data-n="{len(xs)}" points="{_points(ax, xs, ys)}" fill="none" stroke="#1d4ed8" '
                   f'stroke-width="1.3"/>')
    else:
        out.append(f'<text x="{ax.left + 10}" y="{ax.top + 20}">no telemetry stored in this window</text>')
    base = ax.top + ax.height + 24
    for i, al in enumerate(sorted(mine, key=lambda x: x.alarm.raised_ms)):
        x0 = ax.x(max(al.alarm.raised_ms, t0))
        end = al.alarm.cleared_ms if al.alarm.cleared_ms is not None else t1
        x1 = ax.x(min(end, t1))
        y = base + i * lane
        colour = SEV_COLOURS.get(al.severity, "#6b7280")
        opacity = "1" if al in hits else "0.45"
        out.append(f'<rect class="alarm" data-pole="{_e(al.alarm.pole)}" data-key="{_e(al.key)}" '
                   f'data-severity="{_e(al.severity)}" data-match="{int(al in hits)}" x="{x0:.1f}" y="{y}" '
                   f'width="{max(2.0, x1 - x0):.1f}" height="{lane - 3}" fill="{colour}" fill-opacity="{opacity}">'
                   f'<title>{_e(al.key)} ({_e(al.severity)}) raised {_hhmm(al.alarm.raised_ms)}'
                   f'{", cleared " + _hhmm(al.alarm.cleared_ms) if al.alarm.cleared_ms else ", still active"}'
                   f'</title></rect><text x="{min(x1 + 4, ax.left + ax.width - 2):.1f}" y="{y + lane - 4}" '
                   f'text-anchor="{"start" if x1 + 80 < ax.left + ax.width else "end"}">{_e(al.key)}</text>')
    if not mine:
        out.append(f'<text x="{ax.left}" y="{base + 8}">no alarm on this pole in this window</text>')
    out.append("</svg>")
    first = min((a.alarm.raised_ms for a in hits), default=None)
    verdict = (f'<span class="hit">detected</span> after {(first - lb.start_ms) / step_ms:.0f} samples'
               if first is not None else '<span class="miss">missed</span>')
    sub = f"{_e(lb.metric or 'delivery')} · {_hhmm(lb.start_ms)}–{_hhmm(lb.end_ms)} UTC · {verdict}"
    return (f'<div class="card"><p class="tl-title">{_e(lb.kind)} on {_e(lb.pole)}</p>'
            f'<p class="tl-sub">{sub}</p>{"".join(out)}</div>')


def throughput(buckets: Sequence[tuple[int, int]], bucket_ms: int, real: Sequence[Sequence[float]]) -> str:
    out: list[str] = []
    if buckets:
        xs = [float(t) for t, _ in buckets]
        ys = [c / (bucket_ms / 60_000) for _, c in buckets]
        ax = _Axes(xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + bucket_ms, 0, max(ys) * 1.1 or 1, top=16,
                   width=1080, height=150)
        out.append(f'<svg class="throughput" width="1160" height="200" role="img">'
                   f'{ax.frame(y_label="samples stored per minute of device time", x_label="device time (UTC)")}'
                   f'<polyline class="series" data-series="stored_per_min" data-n="{len(xs)}" '
                   f'points="{_points(ax, xs, ys)}" fill="none" stroke="#0f766e" stroke-width="1.5"/></svg>')
    if len(real) >= 2:
        rate: list[tuple[float, float]] = []
        t_end = float(real[-1][0])
        width_s = max(t_end / 60, 0.25)  # about sixty buckets of real time
        i, prev_t, prev_n = 0, 0.0, 0.0
        edge = width_s
        while edge <= t_end + width_s and i < len(real):
            while i < len(real) and real[i][0] <= edge:
                i += 1
            t, n = (float(real[i - 1][0]), float(real[i - 1][1])) if i else (0.0, 0.0)
            if t > prev_t:
                rate.append((t, (n - prev_n) / (t - prev_t)))
                prev_t, prev_n = t, n
            edge += width_s
        if rate:
            xs = [r[0] for r in rate]
            ys = [r[1] for r in rate]
            ax = _Axes(0, max(xs) or 1, 0, max(ys) * 1.1 or 1, top=16, width=1080, height=150)
            out.append(f'<svg class="throughput" width="1160" height="200" role="img">'
                       f'{ax.frame(x_time=False, y_label="messages published per second", x_label="seconds of run")}'
                       f'<polyline class="series" data-series="published_per_s" data-n="{len(xs)}" '
                       f'points="{_points(ax, xs, ys)}" fill="none" stroke="#7c3aed" stroke-width="1.5"/></svg>')
    return "".join(out) or '<p class="meta">No telemetry in the store.</p>'


def score_table(per_kind: dict[str, Any], overall: Any) -> str:
    head = ("kind", "labels", "detected", "true alarms", "false alarms", "precision", "recall",
            "latency p50 (samples)", "latency p95 (samples)", "false / 1,000 pole-days")
    rows = []
    for ks in [*(v for v in per_kind.values() if v.labels), overall]:
        cells = (ks.kind, ks.labels, ks.detected, ks.tp, ks.fp, _fmt(ks.precision, 3), _fmt(ks.recall, 3),
                 _fmt(ks.latency_median_samples, 1), _fmt(ks.latency_p95_samples, 1),
                 _fmt(ks.false_alarms_per_1000_pole_days, 1))
        tag = "th" if ks is overall else "td"
        rows.append("<tr>" + "".join(f"<{tag}>{_e(c)}</{tag}>" for c in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


# --- the page --------------------------------------------------------------------------------------------------
def build_report(reader: StoreReader, labels: Sequence[Label], *, run_meta: dict[str, Any] | None = None,
                 step_ms: int | None = None, title: str | None = None) -> str:
    meta = run_meta or {}
    step = int(step_ms or meta.get("step_ms") or 0) or None
    pole_days = None
    if meta.get("poles") and meta.get("end_ms") and meta.get("start_ms"):
        pole_days = len(meta["poles"]) * (int(meta["end_ms"]) - int(meta["start_ms"])) / 86_400_000
    ss = score_store(reader, labels, step_ms=step, pole_days=pole_days)
    step = ss.step_ms
    rows = alarm_rows(reader.select(schema.ALERTS))
    worst: dict[str, str] = {}
    for a in rows:
        if severity_rank(a.severity) > severity_rank(worst.get(a.alarm.pole, "none")):
            worst[a.alarm.pole] = a.severity
    n_poles, n_samples, lo, hi = reader.exposure()
    bucket_ms = max(60_000, ((hi - lo) // 240 // 60_000) * 60_000) if hi > lo else 60_000
    name = title or f"lampwatch report: {meta.get('scenario', reader.describe())}"
    o = ss.score.overall
    summary = (f"{n_poles} poles · {n_samples:,} samples stored · {len(labels)} labelled faults "
               f"({ss.unscored} injected-traffic labels not scored) · {ss.alarms} alarms · "
               f"device time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(lo / 1000))} – "
               f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(hi / 1000))} UTC · step {step / 1000:g} s")
    line = ss.line()
    scored = [lb for lb in labels if lb.kind not in ("duplicate", "malformed", "hostile")]
    shown = sorted(scored, key=lambda lb: (lb.start_ms, lb.pole))[:MAX_TIMELINES]
    tls = "".join(timeline(reader, lb, rows, step) for lb in shown)
    more = (f'<p class="meta">{len(scored) - len(shown)} more faults not drawn.</p>'
            if len(scored) > len(shown) else "")
    faulted = {lb.pole for lb in labels}
    parts = [
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(name)}</h1><p class=\"meta\">{_e(summary)}</p>",
        f"<div class=\"card\"><code>{_e(line)}</code><br>precision {_fmt(o.precision, 3)} · recall "
        f"{_fmt(o.recall, 3)} · {o.fp} false alarms</div>",
        "<h2>Score per fault kind</h2><div class=\"card\">", score_table(ss.score.per_kind, o), "</div>",
        "<h2>Fleet map (worst alarm severity per pole)</h2><div class=\"card\">",
        fleet_map(meta.get("poles", []), worst, faulted), "</div>",
        "<h2>Detections vs ground truth</h2><div class=\"card\">", kind_bars(ss.score.per_kind, ss.score.unmatched),
        "</div>",
        f"<h2>Fault timelines ({len(shown)})</h2>",
        "<p class=\"meta\">Yellow: the labelled fault window. Bars underneath: alarms of that pole "
        "(solid: matched this fault; faded: other alarms), coloured by severity.</p>",
        f"<div class=\"grid\">{tls}</div>{more}",
        "<h2>Throughput</h2><div class=\"card\">",
        throughput(reader.per_bucket(bucket_ms), bucket_ms, meta.get("throughput", [])), "</div>",
        f"<p class=\"meta\">Generated by lampwatch-sim report from {_e(reader.describe())}.</p></body></html>",
    ]
    return "".join(parts)


def write_report(out: Path, reader: StoreReader, labels: Sequence[Label], **kw: Any) -> Path:
    out.write_text(build_report(reader, labels, **kw), encoding="utf-8")
    return out


def load_run_meta(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "run.json"
    if not p.is_file():
        return {}
    data: dict[str, Any] = json.loads(p.read_text(encoding="utf-8"))
    return data


__all__ = ["Alarm", "build_report", "load_run_meta", "write_report"]
