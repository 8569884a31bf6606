"""Grafana dashboards generated from the metric catalog, plus provisioning files and an API push.

Every query is InfluxQL against one datasource (uid ``lampwatch-influx``), so the same JSON works on
InfluxDB 1.x, on 2.x (InfluxQL through its DBRP mapping: the bucket ``lampwatch`` is database
``lampwatch``) and on 3.x (InfluxQL is native there). Four dashboards:

* **Fleet overview** - online/offline counts, active alarms, a Geomap of poles coloured by their
  worst active alarm, alarms by district, fleet-wide throughput;
* **Pole detail** - every catalog metric (mean with min/max) with its catalog thresholds drawn as
  threshold steps, alarm annotations from ``alerts``, hourly rollups, a ``pole`` variable;
* **Safety alarms** - active alarms, recent events, a state timeline, raised per interval;
* **Gateway health** - message/sample/store rates, lag, spool depth and rejects from ``gateway``.

``fill()`` is chosen per query, never left to the default: ``fill(null)`` where a gap must show as a
gap (metric time series), ``fill(none)`` under ``non_negative_derivative`` (a null bucket would break
the rate) and for sparse counters, ``fill(0)`` for counts of events, ``fill(previous)`` for alarm state.

Nothing here talks to Grafana except :func:`provision`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from contract import catalog, schema
from contract.catalog import Metric, Threshold

DS_UID = "lampwatch-influx"
DS: dict[str, str] = {"type": "influxdb", "uid": DS_UID}
FOLDER_UID = "lampwatch"
FOLDER_TITLE = "lampwatch"
TAGS = ["lampwatch"]
#: the status/alerts lookback of "current state" panels: the raw retention (a pole's last status may
#: be older than the dashboard's time range, and it is still its current state)
CURRENT = "time > now() - 30d"
COLORS = {"ok": "green", "info": "blue", "warning": "orange", "critical": "red"}
RANK = {"ok": 0, "info": 1, "warning": 2, "critical": 3}
LEVEL_STEPS = [("green", None), ("blue", 1), ("orange", 2), ("red", 3)]  # alert ``level`` field
UNITS = {"W": "watt", "V": "volt", "A": "amp", "mA": "mamp", "degC": "celsius", "%": "percent",
         "dBm": "dBm", "dB(A)": "dB", "": "none"}
DASHBOARD_FILES = {"lampwatch-fleet": "fleet-overview.json", "lampwatch-pole": "pole-detail.json",
                   "lampwatch-safety": "safety-alarms.json", "lampwatch-gateway": "gateway-health.json"}


# --- small builders ------------------------------------------------------------------------------
def _q(name: str) -> str:
    return '"' + name + '"'


def target(query: str, ref: str = "A", fmt: str = "time_series", alias: str | None = None) -> dict[str, Any]:
    t: dict[str, Any] = {"refId": ref, "datasource": DS, "rawQuery": True, "query": query,
                         "resultFormat": fmt}
    if alias:
        t["alias"] = alias
    return t


class Grid:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def newline(self) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0


class Board:
    def __init__(self) -> None:
        self.grid = Grid()
        self.panels: list[dict[str, Any]] = []

    def add(self, ptype: str, title: str, targets: list[dict[str, Any]], w: int, h: int,
            **extra: Any) -> dict[str, Any]:
        p: dict[str, Any] = {"id": len(self.panels) + 1, "type": ptype, "title": title, "datasource": DS,
                             "gridPos": self.grid.place(w, h), "targets": targets}
        p.update(extra)
        self.panels.append(p)
        return p

    def row(self, title: str) -> None:
        self.grid.newline()
        self.panels.append({"id": len(self.panels) + 1, "type": "row", "title": title, "collapsed": False,
                            "gridPos": self.grid.place(24, 1), "panels": []})
        self.grid.newline()


def query_var(name: str, label: str, query: str, *, multi: bool, include_all: bool) -> dict[str, Any]:
    v: dict[str, Any] = {"name": name, "label": label, "type": "query", "datasource": DS, "query": query,
                         "definition": query, "refresh": 1, "sort": 1, "multi": multi,
                         "includeAll": include_all, "hide": 0, "regex": "", "options": [], "current": {}}
    if include_all:
        v["allValue"] = ".*"
    return v


def custom_var(name: str, label: str, values: Sequence[str]) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "custom", "query": ",".join(values), "multi": True,
            "includeAll": True, "allValue": ".*", "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "options": [{"selected": False, "text": v, "value": v} for v in values]}


def district_var(measurement: str) -> dict[str, Any]:
    return query_var("district", "District",
                     f'SHOW TAG VALUES FROM {_q(measurement)} WITH KEY = "district"', multi=True,
                     include_all=True)


def dashboard(uid: str, title: str, description: str, board: Board, variables: list[dict[str, Any]],
              annotations: list[dict[str, Any]] | None = None, time_from: str = "now-6h") -> dict[str, Any]:
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
               "type": "dashboard"}
    return {
        "id": None, "uid": uid, "title": title, "description": description, "tags": TAGS,
        "timezone": "utc", "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "refresh": "30s", "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": [builtin, *(annotations or [])]},
        "links": [{"type": "dashboards", "tags": TAGS, "asDropdown": True, "title": "lampwatch",
                   "includeVars": False, "keepTime": True}],
        "panels": board.panels,
    }


def _steps(pairs: Sequence[tuple[str, float | None]]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


# --- catalog -> thresholds -------------------------------------------------------------------------
def threshold_value(t: Threshold) -> float | None:
    """A threshold in the metric's own units, using the catalog's default nominal voltage / rated
    power; ``None`` for thresholds relative to each pole's learned baseline (no fixed line exists)."""
    if t.relative_to == "absolute":
        return t.value
    if t.relative_to == "nominal":
        return round(t.value * catalog.DEFAULT_NOMINAL_VOLTAGE_V, 6)
    if t.relative_to == "rated":
        return round(t.value * catalog.DEFAULT_RATED_POWER_W, 6)
    return None


def _severity_at(x: float, rules: Sequence[tuple[Threshold, float]]) -> str:
    worst = "ok"
    for t, v in rules:
        hit = x >= v if t.op == ">=" else x <= v
        if hit and RANK[t.severity] > RANK[worst]:
            worst = t.severity
    return worst


def threshold_steps(m: Metric) -> dict[str, Any]:
    """Grafana threshold steps (a colour applies from its value upwards) equivalent to the metric's
    rules: each interval between rule boundaries gets the colour of the worst rule violated in it.
    A ``<=`` rule still fires at its level, so its boundary sits one display unit above it."""
    eps = 10.0 ** -m.decimals
    rules = [(t, v) for t in m.thresholds if (v := threshold_value(t)) is not None]
    bounds = sorted({round(v if t.op == ">=" else v + eps, 9) for t, v in rules})
    if not bounds:
        return _steps([("green", None)])
    out: list[tuple[str, float | None]] = []
    for start, probe in [(None, bounds[0] - eps), *((b, b) for b in bounds)]:
        color = COLORS[_severity_at(probe, rules)]
        if not out or out[-1][0] != color:
            out.append((color, start))
    return _steps(out)


def _unit(m: Metric) -> str:
    return UNITS.get(m.unit, f"suffix: {m.unit}")


def _describe(m: Metric) -> str:
    lines = [f"{m.description} ({m.unit or 'no unit'}); valid range {m.lo:g}..{m.hi:g}."]
    for t in m.thresholds:
        v = threshold_value(t)
        where = {"absolute": "", "nominal": " x nominal voltage", "rated": " x rated power",
                 "baseline": " above the pole's installed baseline (not drawn)"}[t.relative_to]
        drawn = "" if v is None or t.relative_to == "absolute" else f" (drawn at {v:g} for the defaults)"
        lit = " while the lamp should be lit" if t.lamp_on else ""
        lines.append(f"{t.severity}: {t.kind} {t.op} {t.value:g}{where}{drawn}{lit}, clears at {t.clear:g}"
                     f" - {t.explain}.")
    return "\n".join(lines)


# --- the four dashboards ---------------------------------------------------------------------------
POLE = '"pole" =~ /^$pole$/'
DISTRICT = '"district" =~ /^$district$/'
SEVERITY = '"severity" =~ /^$severity$/'
GATEWAY = '"gateway" =~ /^$gateway$/'


#: drill-down from any table or map row that has a pole (and district) to the pole dashboard
POLE_LINK = {"title": "Pole detail", "targetBlank": False,
             "url": "/d/lampwatch-pole/?var-district=${__data.fields.district}&var-pole=${__data.fields.pole}"
                    "&${__url_time_range}"}


def pole_link_override() -> dict[str, Any]:
    return {"matcher": {"id": "byName", "options": "pole"}, "properties": [{"id": "links", "value": [POLE_LINK]}]}


def offline_subquery(where: str) -> str:
    """The one definition of offline (gateway, CLI, Grafana): an active ``pole_offline`` alarm, which the
    gateway raises for an offline status (Last Will, shutdown) and for silence alike."""
    return (f'SELECT last("active") AS "active", last("value") AS "silent_s", last("explain") AS "explain" '
            f'FROM "{schema.ALERTS}" WHERE "kind" = \'pole_offline\' AND {where} AND {CURRENT} '
            f'GROUP BY "district", "pole"')


def active_alarms_subquery(where: str) -> str:
    """Current state of every alarm rule per pole: its last ``active`` (1 raised, 0 cleared)."""
    return (f'SELECT last("active") AS "active", last("level") AS "level" FROM "{schema.ALERTS}" '
            f'WHERE {where} AND {CURRENT} GROUP BY "district", "pole", "kind", "severity"')


def current_alarms(where: str) -> str:
    """Last state of every alarm per pole and rule, with the people's part (acknowledged, shelved)."""
    return (f'SELECT last("active") AS "active", last("level") AS "level", last("metric") AS "metric", '
            f'last("value") AS "value", last("explain") AS "explain", last("acked_by") AS "acked_by", '
            f'last("ack_note") AS "ack_note", last("shelved_until") AS "shelved_until" FROM "{schema.ALERTS}" '
            f'WHERE {where} AND {CURRENT} GROUP BY "district", "pole", "kind", "severity"')


def fleet_overview() -> dict[str, Any]:
    b = Board()
    last_status = (f'SELECT last("online") AS "online" FROM "{schema.STATUS}" WHERE {DISTRICT} AND {CURRENT} '
                   f'GROUP BY "pole"')
    stat_opts = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                 "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}
    offline_q = f'SELECT sum("active") AS "offline" FROM ({offline_subquery(DISTRICT)})'
    b.add("stat", "Poles online",
          [target(f'SELECT count("online") AS "known" FROM ({last_status})', "A", "table"),
           target(offline_q, "B", "table")],
          6, 4, options=stat_opts,
          transformations=[{"id": "merge", "options": {}},
                           {"id": "calculateField", "options": {
                               "mode": "binary", "alias": "online", "replaceFields": True,
                               "binary": {"left": "known", "operator": "-", "right": "offline"}}}],
          fieldConfig={"defaults": {"unit": "none", "thresholds": _steps([("green", None)])}, "overrides": []},
          description="Known poles (a status within 30 days) minus offline ones. Offline = an active "
                      "pole_offline alarm: the gateway raises it for an offline status (Last Will, shutdown) and "
                      "for silence longer than 3x the reporting interval, so a hung pole is not counted online.")
    b.add("stat", "Poles offline", [target(offline_q, fmt="table")],
          6, 4, options=stat_opts,
          fieldConfig={"defaults": {"unit": "none", "noValue": "0",
                                    "thresholds": _steps([("green", None), ("orange", 1)])}, "overrides": []},
          description="Poles with an active pole_offline alarm (offline status or silence: one definition).")
    b.add("stat", "Active alarms by severity",
          [target(f'SELECT sum("active") AS "active" FROM ({active_alarms_subquery(DISTRICT)}) '
                  f'GROUP BY "severity"', fmt="time_series", alias="$tag_severity")],
          12, 4, options=stat_opts,
          fieldConfig={"defaults": {"unit": "none", "thresholds": _steps([("green", None), ("red", 1)])},
                       "overrides": []},
          description="Alarm rules currently raised (last event per pole and rule is 'raised').")
    geo_pos = (f'SELECT last("lat") AS "lat", last("lon") AS "lon", last("online") AS "online" '
               f'FROM "{schema.STATUS}" WHERE {DISTRICT} AND {CURRENT} GROUP BY "pole", "district"')
    geo_worst = (f'SELECT max("worst") AS "worst" FROM (SELECT last("active") * last("level") AS "worst" '
                 f'FROM "{schema.ALERTS}" WHERE {DISTRICT} AND {CURRENT} GROUP BY "pole", "kind", "severity") '
                 f'GROUP BY "pole"')
    b.add("geomap", "Poles by worst active alarm",
          [target(geo_pos, "A", "table"), target(geo_worst, "B", "table")], 24, 14,
          description="Position from the lat/lon fields of each pole's status (sent with its birth "
                      "message); colour = worst active alarm level (0 none, 1 info, 2 warning, 3 critical).",
          transformations=[{"id": "joinByField", "options": {"byField": "pole", "mode": "outer"}}],
          fieldConfig={"defaults": {"color": {"mode": "thresholds"}, "thresholds": _steps(LEVEL_STEPS),
                                    "links": [POLE_LINK],
                                    "mappings": [{"type": "special", "options": {
                                        "match": "null", "result": {"color": "green", "index": 0,
                                                                    "text": "no alarm"}}}]},
                       "overrides": []},
          options={"view": {"id": "fit", "lat": 0, "lon": 0, "zoom": 12},
                   "controls": {"showZoom": True, "mouseWheelZoom": True},
                   "basemap": {"type": "default", "name": "Basemap"},
                   "layers": [{"type": "markers", "name": "Poles", "tooltip": True,
                               "location": {"mode": "coords", "latitude": "lat", "longitude": "lon"},
                               "config": {"showLegend": True,
                                          "style": {"size": {"fixed": 6}, "opacity": 0.9,
                                                    "color": {"field": "worst", "fixed": "green"}}}}],
                   "tooltip": {"mode": "details"}})
    b.add("table", "Stale / offline poles",
          [target(f'SELECT "silent_s", "explain" FROM ({offline_subquery(DISTRICT)}) WHERE "active" = 1 '
                  f'GROUP BY "district", "pole"', fmt="table")], 24, 6,
          description="Every pole the gateway calls offline, since when (time) and how long it had been silent "
                      "then (silent_s; empty when it said offline itself). Click a pole for its dashboard.",
          fieldConfig={"defaults": {}, "overrides": [pole_link_override()]})
    b.add("barchart", "Active alarms by district",
          [target(f'SELECT sum("active") AS "active" FROM ({active_alarms_subquery(DISTRICT)}) '
                  f'GROUP BY "district"', fmt="table")], 12, 8,
          options={"xField": "district", "orientation": "horizontal", "showValue": "auto",
                   "legend": {"showLegend": False, "displayMode": "list", "placement": "bottom"}},
          fieldConfig={"defaults": {"unit": "none", "color": {"mode": "fixed", "fixedColor": "red"}},
                       "overrides": []})
    b.add("timeseries", "Samples stored per interval",
          [target(f'SELECT count("seq") AS "samples" FROM "{schema.TELEMETRY}" WHERE {DISTRICT} AND $timeFilter '
                  f'GROUP BY time($__interval), "district" fill(0)', alias="$tag_district")], 12, 8,
          description="fill(0): an interval without samples is a real zero here, and must show as one.",
          fieldConfig={"defaults": {"unit": "none", "custom": {"drawStyle": "bars", "stacking":
                                                               {"mode": "normal", "group": "A"}}},
                       "overrides": []})
    b.add("timeseries", "Status messages per interval",
          [target(f'SELECT count("online") AS "messages" FROM "{schema.STATUS}" WHERE {DISTRICT} AND $timeFilter '
                  f'GROUP BY time($__interval), "district" fill(0)', alias="$tag_district")], 24, 6,
          fieldConfig={"defaults": {"unit": "none", "custom": {"drawStyle": "bars"}}, "overrides": []})
    return dashboard("lampwatch-fleet", "lampwatch / Fleet overview",
                     "Every pole at a glance: presence, alarms, where they are.", b,
                     [district_var(schema.STATUS)])


def _metric_panel(b: Board, m: Metric) -> None:
    f = _q(m.name)
    q = (f'SELECT mean({f}) AS "mean", min({f}) AS "min", max({f}) AS "max" FROM "{schema.TELEMETRY}" '
         f'WHERE {POLE} AND $timeFilter GROUP BY time($__interval) fill(null)')
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "spanNulls": False, "fillOpacity": 0,
                              "thresholdsStyle": {"mode": "line+area" if m.thresholds else "off"}}
    if m.dtype == "bool":
        custom["lineInterpolation"] = "stepAfter"
    defaults: dict[str, Any] = {"unit": _unit(m), "decimals": m.decimals, "thresholds": threshold_steps(m),
                                "color": {"mode": "palette-classic"}, "custom": custom}
    if m.dtype == "bool":
        defaults["min"], defaults["max"] = 0, 1
    overrides = [{"matcher": {"id": "byName", "options": name},
                  "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [4, 4]}},
                                 {"id": "color", "value": {"mode": "fixed", "fixedColor": "text"}}]}
                 for name in ("min", "max")]
    b.add("timeseries", f"{m.name} ({m.unit})" if m.unit else m.name, [target(q, alias="$col")], 8, 7,
          description=_describe(m), fieldConfig={"defaults": defaults, "overrides": overrides},
          options={"legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
                   "tooltip": {"mode": "multi", "sort": "none"}})


def pole_detail() -> dict[str, Any]:
    b = Board()
    b.add("table", "Pole status",
          [target(f'SELECT last("state") AS "state", last("boot") AS "boot", last("online") AS "online" '
                  f'FROM "{schema.STATUS}" WHERE {POLE} AND {CURRENT}', fmt="table")], 8, 4)
    b.add("table", "Active alarms on this pole",
          [target(f'SELECT "level", "active", "acked_by", "shelved_until" FROM ({current_alarms(POLE)}) '
                  f'WHERE "active" = 1 GROUP BY "kind", "severity"', fmt="table")], 16, 4,
          description="acked_by: who acknowledged it (lampwatch-ops alarms ack); shelved_until: ms, 0 = not shelved.")
    for group in dict.fromkeys(m.group for m in catalog.METRICS):
        b.row(group.capitalize())
        for m in catalog.METRICS:
            if m.group == group:
                _metric_panel(b, m)
    b.row("Hourly rollups (kept for years)")
    safety = [m.name for m in catalog.METRICS if m.critical and m.dtype == "float"]
    cols = ", ".join(f'max("{n}_max") AS "{n}_max"' for n in safety)
    b.add("timeseries", "Safety metrics, hourly maximum",
          [target(f'SELECT {cols} FROM "rollup_1h"."telemetry_1h" WHERE {POLE} AND $timeFilter '
                  f'GROUP BY time(1h) fill(null)', alias="$col")], 12, 8,
          description="From the 1-hour rollups (retention policy rollup_1h): use a range of weeks or more.")
    b.add("timeseries", "Lamp power, hourly min/mean/max",
          [target('SELECT min("lamp_power_w_min") AS "min", mean("lamp_power_w_mean") AS "mean", '
                  'max("lamp_power_w_max") AS "max" FROM "rollup_1h"."telemetry_1h" '
                  f'WHERE {POLE} AND $timeFilter GROUP BY time(1h) fill(null)', alias="$col")], 12, 8,
          fieldConfig={"defaults": {"unit": "watt"}, "overrides": []})
    pole_var = query_var("pole", "Pole", f'SHOW TAG VALUES FROM "{schema.TELEMETRY}" WITH KEY = "pole" '
                                         f'WHERE {DISTRICT}', multi=False, include_all=False)
    annotations = [
        {"datasource": DS, "enable": True, "hide": False, "iconColor": color, "name": f"Alarms {state}",
         "query": f'SELECT "explain", "kind", "severity", "value" FROM "{schema.ALERTS}" '
                  f"WHERE {POLE} AND \"state\" = '{state}' AND $timeFilter",
         "textColumn": "explain", "tagsColumn": "kind,severity", "titleColumn": "kind"}
        for state, color in (("raised", "red"), ("cleared", "green"))]
    return dashboard("lampwatch-pole", "lampwatch / Pole detail",
                     "Every metric of one pole with its catalog thresholds; alarms as annotations.", b,
                     [district_var(schema.TELEMETRY), pole_var], annotations)


def safety_alarms() -> dict[str, Any]:
    b = Board()
    where = f"{DISTRICT} AND {SEVERITY}"
    b.add("stat", "Active alarms",
          [target(f'SELECT sum("active") AS "active" FROM ({active_alarms_subquery(where)}) GROUP BY "severity"',
                  alias="$tag_severity")], 24, 4,
          options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"},
          fieldConfig={"defaults": {"thresholds": _steps([("green", None), ("red", 1)])}, "overrides": []})
    b.add("table", "Active alarms (worst first)",
          [target(f'SELECT "level", "metric", "value", "explain", "acked_by", "ack_note", "shelved_until" '
                  f'FROM ({current_alarms(where)}) WHERE "active" = 1 '
                  f'GROUP BY "district", "pole", "kind", "severity"', fmt="table")], 24, 9,
          options={"sortBy": [{"displayName": "level", "desc": True}]},
          description="time = the alarm's last change; acked_by / ack_note: its acknowledgement "
                      "(lampwatch-ops alarms ack); shelved_until: ms, 0 = not shelved. Click a pole for its dashboard.",
          fieldConfig={"defaults": {}, "overrides": [pole_link_override(),
              {"matcher": {"id": "byName", "options": "level"},
               "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}},
                              {"id": "thresholds", "value": _steps(LEVEL_STEPS)}]}]})
    b.add("state-timeline", "Alarm timeline",
          [target(f'SELECT last("active") AS "active" FROM "{schema.ALERTS}" WHERE {where} AND $timeFilter '
                  f'GROUP BY time($__interval), "pole", "kind", "severity" fill(previous)',
                  alias="$tag_pole $tag_kind ($tag_severity)")], 24, 9,
          description="fill(previous): an alarm stays raised until its 'cleared' event.",
          fieldConfig={"defaults": {"color": {"mode": "thresholds"},
                                    "thresholds": _steps([("green", None), ("red", 1)]),
                                    "mappings": [{"type": "value", "options": {
                                        "0": {"text": "ok", "color": "green", "index": 0},
                                        "1": {"text": "ALARM", "color": "red", "index": 1}}}]},
                       "overrides": []},
          options={"showValue": "never", "mergeValues": True, "rowHeight": 0.8})
    b.add("timeseries", "Alarms raised per interval",
          [target(f'SELECT count("active") AS "raised" FROM "{schema.ALERTS}" WHERE {where} '
                  f"AND \"state\" = 'raised' AND $timeFilter GROUP BY time($__interval), \"severity\" fill(0)",
                  alias="$tag_severity")], 12, 8,
          fieldConfig={"defaults": {"custom": {"drawStyle": "bars", "stacking": {"mode": "normal", "group": "A"}}},
                       "overrides": []})
    b.add("table", "Recent alarm events",
          [target(f'SELECT "state", "district", "pole", "kind", "severity", "metric", "value", "explain" '
                  f'FROM "{schema.ALERTS}" WHERE {where} AND $timeFilter ORDER BY time DESC LIMIT 500',
                  fmt="table")], 12, 8)
    return dashboard("lampwatch-safety", "lampwatch / Safety alarms",
                     "Leakage, tilt, flood, smoke, overheating and every other alarm rule: now and recently.",
                     b, [district_var(schema.ALERTS), custom_var("severity", "Severity", catalog.SEVERITIES[::-1])],
                     time_from="now-24h")


def gateway_health() -> dict[str, Any]:
    b = Board()
    g = f'FROM "{schema.GATEWAY}" WHERE {GATEWAY} AND $timeFilter'
    by = 'GROUP BY time($__interval), "gateway"'
    rates = ", ".join(f'non_negative_derivative(max("{c}"), 1s) AS "{c}_per_s"'
                      for c in ("messages", "samples_accepted", "samples_rejected", "duplicates", "stored_points"))
    nofill = "fill(none): the rate is taken between consecutive reports, never across an empty bucket."
    b.add("timeseries", "Rates", [target(f"SELECT {rates} {g} {by} fill(none)", alias="$tag_gateway $col")],
          12, 8, description=nofill, fieldConfig={"defaults": {"unit": "ops"}, "overrides": []})
    b.add("timeseries", "Lag and store write time",
          [target(f'SELECT max("lag_ms") AS "lag_ms", max("last_write_ms") AS "last_write_ms" {g} {by} fill(none)',
                  alias="$tag_gateway $col")], 12, 8,
          description="lag_ms: gateway clock minus the newest device timestamp of a message; "
                      "last_write_ms: duration of the last store write.",
          fieldConfig={"defaults": {"unit": "ms"}, "overrides": []})
    b.add("timeseries", "Spool depth",
          [target(f'SELECT last("spool_points") AS "spool_points", last("spool_batches") AS "spool_batches" '
                  f'{g} {by} fill(none)', alias="$tag_gateway $col")], 12, 8,
          description="Points held on disk because the store did not take them yet; should be 0.",
          fieldConfig={"defaults": {"unit": "none", "thresholds": _steps([("green", None), ("orange", 1)]),
                                    "custom": {"thresholdsStyle": {"mode": "line"}}}, "overrides": []})
    b.add("timeseries", "Rejects by reason (gateway counters)",
          [target(f"SELECT non_negative_derivative(max(/^rejects_/), 1s) {g} {by} fill(none)",
                  alias="$tag_gateway $col")], 12, 8,
          description="One series per rejects_<reason> counter. " + nofill,
          fieldConfig={"defaults": {"unit": "ops"}, "overrides": []})
    b.add("timeseries", "Dead-lettered input per interval",
          [target(f'SELECT sum("count") AS "rejects" FROM "{schema.REJECTS}" WHERE $timeFilter '
                  f'GROUP BY time($__interval), "reason" fill(0)', alias="$tag_reason")], 12, 8,
          fieldConfig={"defaults": {"custom": {"drawStyle": "bars", "stacking": {"mode": "normal", "group": "A"}}},
                       "overrides": []})
    b.add("table", "Recent rejects",
          [target(f'SELECT "reason", "topic", "pole", "detail" FROM "{schema.REJECTS}" WHERE $timeFilter '
                  f'ORDER BY time DESC LIMIT 200', fmt="table")], 12, 8)
    gw = query_var("gateway", "Gateway", f'SHOW TAG VALUES FROM "{schema.GATEWAY}" WITH KEY = "gateway"',
                   multi=True, include_all=True)
    return dashboard("lampwatch-gateway", "lampwatch / Gateway health",
                     "The gateway's self-metrics: is ingestion keeping up, and what does it refuse?", b, [gw])


def dashboards() -> list[dict[str, Any]]:
    return [fleet_overview(), pole_detail(), safety_alarms(), gateway_health()]


# --- files ---------------------------------------------------------------------------------------
DATASOURCE_YAML = f"""\
# Generated by `lampwatch-ingest grafana generate`: do not edit by hand.
# One InfluxQL datasource for InfluxDB 1.x, 2.x (through its DBRP mapping: database = bucket name)
# and 3.x. Grafana expands the $VARIABLES from its own environment (see docker-compose.yml).
apiVersion: 1
datasources:
  - name: lampwatch
    uid: {DS_UID}
    type: influxdb
    access: proxy
    url: $LAMPWATCH_INFLUX_URL
    isDefault: true
    editable: false
    jsonData:
      dbName: $LAMPWATCH_INFLUX_DB
      httpMode: POST
      timeInterval: 10s
      httpHeaderName1: Authorization
    secureJsonData:
      # InfluxDB 2.x/3.x token (1.x with authentication off ignores the header)
      httpHeaderValue1: Token $LAMPWATCH_INFLUX_TOKEN
"""

DASHBOARDS_YAML = f"""\
# Generated by `lampwatch-ingest grafana generate`: do not edit by hand.
apiVersion: 1
providers:
  - name: lampwatch
    orgId: 1
    folder: {FOLDER_TITLE}
    folderUid: {FOLDER_UID}
    type: file
    disableDeletion: false
    allowUiUpdates: false
    updateIntervalSeconds: 60
    options:
      path: /var/lib/grafana/dashboards/lampwatch
"""


def render(d: Mapping[str, Any]) -> str:
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def files() -> dict[str, str]:
    """Relative path -> content of everything ``grafana generate`` writes."""
    out = {f"dashboards/{DASHBOARD_FILES[d['uid']]}": render(d) for d in dashboards()}
    out["provisioning/datasources/lampwatch.yaml"] = DATASOURCE_YAML
    out["provisioning/dashboards/lampwatch.yaml"] = DASHBOARDS_YAML
    return out


def generate(out_dir: str | Path) -> list[Path]:
    """Write every generated file under ``out_dir``; returns the paths written."""
    root = Path(out_dir)
    written = []
    for rel, text in files().items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(out_dir: str | Path) -> list[str]:
    """Generated files that are missing under ``out_dir`` or differ from what the generator makes now."""
    root = Path(out_dir)
    bad = []
    for rel, text in files().items():
        path = root / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            bad.append(rel)
    return bad


def iter_queries(d: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, InfluxQL) for every query of a dashboard: panel targets, variables, annotations."""
    for p in d["panels"]:
        for t in p.get("targets", []):
            yield f"panel {p['id']} {p['title']!r} {t['refId']}", t["query"]
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]
    for a in d["annotations"]["list"]:
        if "query" in a:
            yield f"annotation {a['name']!r}", a["query"]


# --- push to a running Grafana -------------------------------------------------------------------
def provision(api: Any, boards: Sequence[Mapping[str, Any]] | None = None, *,
              datasource: Mapping[str, Any] | None = None) -> list[str]:
    """Push the dashboards (and optionally the datasource) into a Grafana through grafana-client.

    ``api`` is a ``grafana_client.GrafanaApi``. Creates the ``lampwatch`` folder if missing, then
    posts each dashboard with ``overwrite`` (re-running is idempotent). Returns the dashboard uids.
    """
    from grafana_client.client import GrafanaClientError

    boards = dashboards() if boards is None else boards
    if datasource is not None:
        try:
            api.datasource.get_datasource_by_uid(datasource["uid"])
        except GrafanaClientError as exc:
            if getattr(exc, "status_code", None) != 404:
                raise
            api.datasource.create_datasource(dict(datasource))
    try:
        api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if getattr(exc, "status_code", None) != 404:
            raise
        api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
    uids = []
    for d in boards:
        api.dashboard.update_dashboard({"dashboard": dict(d), "folderUid": FOLDER_UID, "overwrite": True,
                                        "message": "provisioned by lampwatch-ingest"})
        uids.append(str(d["uid"]))
    return uids


def datasource_definition(url: str, database: str, token: str | None = None) -> dict[str, Any]:
    """The datasource, as the Grafana HTTP API takes it (the YAML above, for ``provision``)."""
    ds: dict[str, Any] = {"name": "lampwatch", "uid": DS_UID, "type": "influxdb", "access": "proxy", "url": url,
                          "jsonData": {"dbName": database, "httpMode": "POST", "timeInterval": "10s"}}
    if token:
        ds["jsonData"]["httpHeaderName1"] = "Authorization"
        ds["secureJsonData"] = {"httpHeaderValue1": f"Token {token}"}
    return ds
