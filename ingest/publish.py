"""The open-data files: CSV with a data dictionary, GeoJSON of district centroids, a static HTML page.

Rendering is pure (a :class:`~ingest.opendata.Publication` in, text out) and deterministic: no
generation time, fixed number formats, sorted rows, so the same inputs give byte-identical files.
:func:`write` is the only I/O: each file is written to a temporary name and renamed into place.

The HTML page needs nothing but itself: inline SVG plots and inline CSS, no scripts, no fonts or
images from elsewhere, so a city can host it as it is.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from html import escape
from pathlib import Path
from typing import Any

from ingest import opendata as od

DAILY = "district_daily.csv"
FAULTS = "fault_response.csv"
DICTIONARY = "data_dictionary.csv"
GEOJSON = "districts.geojson"
HTML = "index.html"
FILES = (DAILY, FAULTS, DICTIONARY, GEOJSON, HTML)

AIR_LABEL = {"pm25_ugm3": "PM2.5", "pm10_ugm3": "PM10", "no2_ugm3": "NO2"}


def _f(value: float | None, decimals: int) -> str:
    return "" if value is None else f"{value:.{decimals}f}"


def _b(value: bool | None) -> str:
    return "" if value is None else str(int(value))


Cell = Callable[[od.DistrictDay], str]
#: district_daily.csv: (column, type, unit, description, value); suppressed rows keep only the first three
DAILY_COLUMNS: list[tuple[str, str, str, str, Cell]] = [
    ("date", "date", "", "local calendar date (YYYY-MM-DD)", lambda r: r.day.isoformat()),
    ("district", "text", "", "district name", lambda r: r.district),
    ("status", "text", "", "published, or suppressed (fewer reporting poles than the publication's "
     "minimum: every other column is empty)", lambda r: "published" if r.published else "suppressed"),
    ("reporting_poles", "integer", "poles", "poles that sent at least one reading on the date",
     lambda r: str(r.reporting_poles)),
    ("known_poles", "integer", "poles", "poles known in the district (registered before the end of the "
     "period or reporting in it)", lambda r: str(r.known_poles)),
    ("expected_readings", "integer", "readings", "24 hours x readings per hour at each known pole's "
     "reporting interval, summed over the known poles", lambda r: str(r.expected_readings)),
    ("received_readings", "integer", "readings", "readings received (per pole and hour at most the "
     "expected number)", lambda r: str(r.received_readings)),
    ("completeness", "decimal", "share 0-1", "received_readings / expected_readings",
     lambda r: _f(r.completeness, 4)),
    ("night_pole_hours", "integer", "pole-hours", "hours of the night of the date (noon to noon next "
     "day) in which a reporting pole's lamp was scheduled on for the whole hour",
     lambda r: str(r.night_pole_hours)),
    ("lit_pole_hours", "integer", "pole-hours", "of those, hours in which the lamp drew at least 80 % "
     "of its rated power times the scheduled dimming level", lambda r: str(r.lit_pole_hours)),
    ("lit_share", "decimal", "share 0-1", "lit_pole_hours / night_pole_hours (lighting service level)",
     lambda r: _f(r.lit_share, 4)),
    ("poles_dark_multi_night", "integer", "poles", "poles lit in less than half of their night hours "
     "on the night of the date and on the night before", lambda r: str(r.poles_dark_multi_night)),
]
for _m, _label in AIR_LABEL.items():
    DAILY_COLUMNS += [
        (f"{_m[:-5]}_mean_ugm3", "decimal", "ug/m3", f"daily mean of every {_label} reading in the district",
         lambda r, m=_m: _f(r.air[m].mean, 2)),  # type: ignore[misc]
        (f"{_m[:-5]}_who_24h_ugm3", "decimal", "ug/m3", f"WHO 2021 air quality guideline for the 24-hour "
         f"mean of {_label}", lambda r, m=_m: _f(r.air[m].guideline, 1)),  # type: ignore[misc]
        (f"{_m[:-5]}_above_who", "0/1", "", f"1 when the daily {_label} mean is above the guideline",
         lambda r, m=_m: _b(r.air[m].above)),  # type: ignore[misc]
    ]
DAILY_COLUMNS += [
    ("noise_day_dba", "decimal", "dB(A)", "day level, hours 7 to 19: energy average of the hourly mean "
     "sound levels of the district's poles", lambda r: _f(r.noise_day_dba, 1)),
    ("noise_night_dba", "decimal", "dB(A)", "night level, hours 23 to 7 of the date (0 to 7 and "
     "23 to 24): energy average of the hourly mean sound levels", lambda r: _f(r.noise_night_dba, 1)),
    ("alarms_raised", "integer", "alarms", "alarms raised on the date, all kinds (see fault_response.csv)",
     lambda r: str(r.alarms_raised)),
]

FaultCell = Callable[[od.FaultDay], str]
FAULT_COLUMNS: list[tuple[str, str, str, str, FaultCell]] = [
    ("date", "date", "", "local calendar date the alarms were raised", lambda f: f.day.isoformat()),
    ("district", "text", "", "district name (only published district-days appear)", lambda f: f.district),
    ("kind", "text", "", "alarm kind (lamp_failure, leakage, tilt, flood, ...: docs/detection.md)",
     lambda f: f.kind),
    ("raised", "integer", "alarms", "alarms of this kind raised on the date", lambda f: str(f.raised)),
    ("cleared", "integer", "alarms", "of those, cleared before the end of the period", lambda f: str(f.cleared)),
    ("open_at_end", "integer", "alarms", "of those, still open at the end of the period",
     lambda f: str(f.open_at_end)),
    ("clear_median_min", "decimal", "minutes", "median time from raise to clear of the cleared ones",
     lambda f: _f(f.median_min, 1)),
    ("clear_p90_min", "decimal", "minutes", "90th percentile (linear interpolation) of the time to clear",
     lambda f: _f(f.p90_min, 1)),
]


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def daily_csv(pub: od.Publication) -> str:
    rows = []
    for r in pub.days:
        n = len(DAILY_COLUMNS) if r.published else 3
        rows.append([c[4](r) for c in DAILY_COLUMNS[:n]] + [""] * (len(DAILY_COLUMNS) - n))
    return _csv([c[0] for c in DAILY_COLUMNS], rows)


def faults_csv(pub: od.Publication) -> str:
    return _csv([c[0] for c in FAULT_COLUMNS], [[c[4](f) for c in FAULT_COLUMNS] for f in pub.faults])


def dictionary_csv() -> str:
    rows = [[DAILY, c[0], c[1], c[2], c[3]] for c in DAILY_COLUMNS]
    rows += [[FAULTS, c[0], c[1], c[2], c[3]] for c in FAULT_COLUMNS]
    return _csv(["file", "column", "type", "unit", "description"], rows)


def _r(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(value, decimals)


def geojson(pub: od.Publication) -> str:
    p = pub.params
    features: list[dict[str, Any]] = []
    for s in pub.districts:
        props: dict[str, Any] = {"district": s.district, "days_published": s.days_published,
                                 "days_suppressed": s.days_suppressed}
        if s.days_published:
            props |= {"located_poles": s.located_poles, "lit_share": _r(s.lit_share, 4),
                      "completeness": _r(s.completeness, 4),
                      **{f"{m[:-5]}_mean_ugm3": _r(s.air_mean[m], 2) for m in od.AIR},
                      "alarms_raised": s.alarms_raised}
        geometry = None if s.centroid is None else {"type": "Point", "coordinates": list(s.centroid)}
        features.append({"type": "Feature", "id": s.district, "geometry": geometry, "properties": props})
    doc = {"type": "FeatureCollection",
           "lampwatch": {"since": p.since.isoformat(), "until": p.until.isoformat(),
                         "utc_offset_h": p.utc_offset_h, "min_poles": p.min_poles,
                         "geometry": "centroid of the district's reporting pole locations, rounded to "
                                     "0.001 degree; null when fewer than min_poles poles are located",
                         "aggregates": "over published district-days only"},
           "features": features}
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


# --- HTML with inline SVG ------------------------------------------------------------------------
PALETTE = ("#1b6ca8", "#d9822b", "#2e8540", "#a4262c", "#6b4fa0", "#8a6d3b", "#00838f", "#5f6b7a")
W, H, ML, MR, MT, MB = 1080, 250, 64, 170, 16, 40


def _nice_max(v: float) -> float:
    """The smallest 5-tick axis top (ticks of 1, 2, 2.5 or 5 x a power of ten) that holds ``v``."""
    for mag in (0.1, 1, 10, 100, 1000, 10000):
        for step in (1, 2, 2.5, 5):
            if step * mag * 5 >= v:
                return step * mag * 5
    return v


def line_chart(title: str, unit: str, days: Sequence[date], series: dict[str, list[float | None]],
               colors: dict[str, str], *, y_min: float = 0.0, y_max: float | None = None,
               guide: tuple[float, str] | None = None, dashed: frozenset[str] = frozenset()) -> str:
    """One SVG line chart: x = days, a line per series (gaps where a value is missing)."""
    values = [v for vs in series.values() for v in vs if v is not None]
    high = max([*values, guide[0] if guide else y_min, y_min + 1e-9])
    top = y_max if y_max is not None else y_min + _nice_max((high - y_min) * 1.1)
    pw, ph = W - ML - MR, H - MT - MB

    def x(i: int) -> float:
        return ML + (pw * (i + 0.5) / len(days) if days else 0)

    def y(v: float) -> float:
        return MT + ph * (1 - (v - y_min) / (top - y_min))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<rect x="{ML}" y="{MT}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    for k in range(6):
        tick = y_min + (top - y_min) * k / 5
        parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e3e3e3"/>'
                     f'<text x="{ML - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" class="ax">{tick:g}</text>')
    step = max(1, len(days) // 14)
    for i, d in enumerate(days):
        if i % step == 0:
            parts.append(f'<text x="{x(i):.1f}" y="{H - MB + 16}" text-anchor="middle" class="ax">'
                         f'{d.strftime("%d %b")}</text>')
    parts.append(f'<text x="14" y="{MT + ph / 2:.0f}" transform="rotate(-90 14 {MT + ph / 2:.0f})" '
                 f'text-anchor="middle" class="ax">{escape(unit)}</text>')
    if guide is not None:
        parts.append(f'<line x1="{ML}" x2="{ML + pw}" y1="{y(guide[0]):.1f}" y2="{y(guide[0]):.1f}" '
                     f'stroke="#c00" stroke-width="2" stroke-dasharray="8 5"/>'
                     f'<text x="{ML + pw - 4}" y="{y(guide[0]) - 5:.1f}" text-anchor="end" fill="#c00" '
                     f'class="ax">{escape(guide[1])}</text>')
    for n, (name, vs) in enumerate(series.items()):
        c = colors[name]
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        run: list[str] = []
        ends: list[float | None] = [*vs, None]
        for i, v in enumerate(ends):
            if v is not None:
                run.append(f"{x(i):.1f},{y(v):.1f}")
                continue
            if len(run) > 1:
                parts.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{c}" stroke-width="2"'
                             f'{dash}/>')
            run = []
        for i, w in enumerate(vs):
            if w is not None:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(w):.1f}" r="3" fill="{c}"/>')
        ly = MT + 14 + n * 18
        parts.append(f'<line x1="{W - MR + 12}" x2="{W - MR + 36}" y1="{ly - 4}" y2="{ly - 4}" stroke="{c}" '
                     f'stroke-width="3"{dash}/><text x="{W - MR + 42}" y="{ly}" class="lg">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
color:#1d1d1d;background:#fff;line-height:1.45}main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.7em;margin:.2em 0}h3{font-size:1.05em;margin:1em 0 .2em}
h2{font-size:1.25em;margin:1.6em 0 .3em;border-bottom:1px solid #ddd}
p.note{color:#555;font-size:.92em}table{border-collapse:collapse;font-size:.9em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td.t,th.t{text-align:left}svg .ax{font-size:12px;fill:#555}svg .lg{font-size:13px;fill:#1d1d1d}
.sup{color:#888}"""


def _pct(v: float | None) -> float | None:
    return None if v is None else v * 100.0


def html_page(pub: od.Publication, title: str = "Street lighting and environment: open data") -> str:
    p = pub.params
    days = p.days()
    districts = [s.district for s in pub.districts]
    colors = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(districts)}
    rows = {(r.day, r.district): r for r in pub.days}

    def series(get: Callable[[od.DistrictDay], float | None]) -> dict[str, list[float | None]]:
        out: dict[str, list[float | None]] = {}
        for d in districts:
            vs = [get(rows[(day, d)]) if rows[(day, d)].published else None for day in days]
            if any(v is not None for v in vs):
                out[d] = vs
        return out

    period = f"{p.since.isoformat()} to {(p.until - timedelta(days=1)).isoformat()}"
    body = [f"<h1>{escape(title)}</h1>",
            f"<p>Daily figures per district, {escape(period)} (local time, UTC{p.utc_offset_h:+d}). "
            "Every figure is an aggregate over a whole district and day; no single lamp post, device or "
            "moment finer than a day is shown. A district-day with fewer than "
            f"{p.min_poles} reporting lamp posts is withheld. The same numbers are in "
            f'<a href="{DAILY}">{DAILY}</a>, <a href="{FAULTS}">{FAULTS}</a> (described in '
            f'<a href="{DICTIONARY}">{DICTIONARY}</a>) and <a href="{GEOJSON}">{GEOJSON}</a>.</p>']

    body.append("<h2>Districts over the period</h2><table><tr><th class=t>district</th><th>days published</th>"
                "<th>days withheld</th><th>lit as scheduled</th><th>data completeness</th>"
                + "".join(f"<th>{AIR_LABEL[m]} mean (&micro;g/m&sup3;)</th>" for m in od.AIR)
                + "<th>alarms raised</th></tr>")
    for s in pub.districts:
        if not s.days_published:
            body.append(f"<tr class=sup><td class=t>{escape(s.district)}</td><td>0</td><td>{s.days_suppressed}"
                        f"</td><td colspan={4 + len(od.AIR)} class=t>withheld: too few reporting lamp posts</td></tr>")
            continue
        body.append(f"<tr><td class=t>{escape(s.district)}</td><td>{s.days_published}</td>"
                    f"<td>{s.days_suppressed}</td><td>{_f(_pct(s.lit_share), 1)} %</td>"
                    f"<td>{_f(_pct(s.completeness), 1)} %</td>"
                    + "".join(f"<td>{_f(s.air_mean[m], 1)}</td>" for m in od.AIR)
                    + f"<td>{s.alarms_raised}</td></tr>")
    body.append("</table>")

    body.append("<h2>Street lighting: share of night hours lit as scheduled</h2>")
    body.append(line_chart("Lit as scheduled", "% of night hours", days, series(lambda r: _pct(r.lit_share)),
                           colors, y_max=100.0))
    dark = series(lambda r: float(r.poles_dark_multi_night))
    body.append("<p class=note>Lamp posts dark for a second night in a row (or longer), counted per night "
                "and added up over the period: "
                + ", ".join(f"{escape(d)} {int(sum(v or 0 for v in vs))}" for d, vs in dark.items())
                + ". A lamp post is dark on a night when it was lit in less than half of its night hours.</p>")

    body.append("<h2>Air quality: daily means against the WHO 2021 guidelines</h2>")
    for m in od.AIR:
        g = od.who_guideline(m)
        body.append(f"<h3>{AIR_LABEL[m]}</h3>")
        body.append(line_chart(f"{AIR_LABEL[m]} daily mean", "\u00b5g/m\u00b3", days,
                               series(lambda r, m=m: r.air[m].mean), colors,  # type: ignore[misc]
                               guide=(g, f"WHO 2021 guideline, 24-hour mean: {g:g} \u00b5g/m\u00b3")))

    body.append("<h2>Noise: day (07-19) and night (23-07) levels</h2>")
    noise: dict[str, list[float | None]] = {}
    ncolors: dict[str, str] = {}
    for d, vs in series(lambda r: r.noise_day_dba).items():
        noise[f"{d} day"], ncolors[f"{d} day"] = vs, colors[d]
    for d, vs in series(lambda r: r.noise_night_dba).items():
        noise[f"{d} night"], ncolors[f"{d} night"] = vs, colors[d]
    lo = min([v for vs in noise.values() for v in vs if v is not None], default=0.0)
    body.append(line_chart("Noise level", "dB(A)", days, noise, ncolors, y_min=max(0.0, 10 * (lo // 10) - 10),
                           dashed=frozenset(k for k in noise if k.endswith(" night"))))

    body.append("<h2>Fault response</h2><p class=note>Alarms raised in the period and how long they took to "
                "clear (minutes from raise to clear, for those cleared before the end of the period).</p>"
                "<table><tr><th class=t>district</th><th class=t>kind</th><th>raised</th><th>cleared</th>"
                "<th>still open</th><th>median time to clear (min)</th><th>90th percentile (min)</th></tr>")
    for f in pub.fault_summary:
        body.append(f"<tr><td class=t>{escape(f.district)}</td><td class=t>{escape(f.kind)}</td><td>{f.raised}"
                    f"</td><td>{f.cleared}</td><td>{f.raised - f.cleared}</td><td>{_f(f.median_min, 1) or '-'}</td>"
                    f"<td>{_f(f.p90_min, 1) or '-'}</td></tr>")
    if not pub.fault_summary:
        body.append("<tr><td class=t colspan=7>no alarms raised in the period</td></tr>")
    body.append("</table>")

    body.append("<h2>Data completeness</h2>")
    body.append(line_chart("Data completeness", "% of expected readings", days,
                           series(lambda r: _pct(r.completeness)), colors, y_max=100.0))
    body.append("<p class=note>Published by the city's street-lamp telemetry system (lampwatch). Figures are "
                "recomputed from the stored measurements; the definitions are in the data dictionary.</p>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_CSS}</style></head><body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


def render(pub: od.Publication) -> dict[str, str]:
    """File name -> content of every output file."""
    return {DAILY: daily_csv(pub), FAULTS: faults_csv(pub), DICTIONARY: dictionary_csv(),
            GEOJSON: geojson(pub), HTML: html_page(pub)}


def write(out_dir: Path, files: dict[str, str]) -> list[Path]:
    """Write the files into ``out_dir`` (created if missing), each atomically (temp file + rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in sorted(files.items()):
        path = out_dir / name
        tmp = out_dir / f".{name}.tmp"
        tmp.write_bytes(text.encode("utf-8"))
        os.replace(tmp, path)
        written.append(path)
    return written
