"""The catalog drives detection membership (``Metric.detect``) and holds the one range check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from contract import catalog
from contract.catalog import METRICS, RANGES, Bounds, Detect, Metric, Signal, admits
from gateway.decode import decode_telemetry
from gateway.detect import spatial
from gateway.detect.rules import repeat_prior, stuck_metrics
from gateway.detection import STREAM_METRICS

REPO = Path(__file__).resolve().parents[2]


def test_spatial_membership_is_what_the_name_lists_said() -> None:
    # the lists spatial.py held before the catalog carried detection hints (order aside)
    assert set(spatial.SPATIAL_METRICS) == {"pm25_ugm3", "pm10_ugm3", "no2_ugm3", "ambient_temp_c", "humidity_pct"}
    assert set(spatial.SAFETY_DRIFT_METRICS) == {"cabinet_temp_c", "leakage_current_ma", "water_level_cm"}
    assert set(spatial.LAMP_DRIFT_METRICS) == {"lamp_power_w", "lamp_current_a", "illuminance_lux"}
    assert set(spatial.PHYSICS) == {"cabinet_temp_c", "lamp_power_w", "lamp_current_a", "illuminance_lux"}
    assert set(spatial.DRIFT_METRICS) == {*spatial.SPATIAL_METRICS, "supply_voltage_v", "power_factor", "vibration_g",
                                          "noise_db", "radio_tx_power_dbm", *spatial.SAFETY_DRIFT_METRICS,
                                          *spatial.LAMP_DRIFT_METRICS}
    assert len(set(spatial.DRIFT_METRICS)) == len(spatial.DRIFT_METRICS)
    # a physics channel is judged after the reference it is judged against
    assert spatial.DRIFT_METRICS.index("ambient_temp_c") < spatial.DRIFT_METRICS.index("cabinet_temp_c")


def test_streamed_and_stuck_candidates_equal_the_gateways_lists() -> None:
    assert catalog.STREAMED == STREAM_METRICS
    assert catalog.STUCK_CANDIDATES == tuple(m.name for m in stuck_metrics())
    for m in stuck_metrics():
        assert catalog.repeat_prior(m) == pytest.approx(repeat_prior(m))


def test_production_spatial_detection_reads_no_simulator_signal_hint() -> None:
    text = (REPO / "gateway" / "detect" / "spatial.py").read_text(encoding="utf-8")
    assert ".signal" not in text


def test_detect_hints_are_checked_on_construction() -> None:
    with pytest.raises(ValueError, match="need drift=True"):
        Detect(physics=True)
    with pytest.raises(ValueError, match="float metrics only"):
        Metric("x_flag", "", "a switch", 0, 1, Signal("binary", 0), "lamp", dtype="bool", detect=Detect(stuck=True))
    with pytest.raises(ValueError, match="sensor noise"):
        Metric("x_level", "", "a level", 0, 9, Signal("constant", 1, 0.0), "lamp", detect=Detect(stuck=True))
    with pytest.raises(ValueError, match="finite"):
        Metric("x_level", "", "a level", 0, math.inf, Signal("noise", 1, 0.1), "lamp")


def _probes(m: Metric) -> list[float]:
    lo, hi = m.lo, m.hi
    return [lo, hi, math.nextafter(lo, -math.inf), math.nextafter(hi, math.inf), (lo + hi) / 2, lo - 1.0, hi + 1.0,
            0.0, 1.0, 0.5, -0.0]


@pytest.mark.parametrize("m", METRICS, ids=lambda m: m.name)
def test_decode_and_in_range_enforce_every_metric_identically(m: Metric) -> None:
    now = 1_780_000_000_000
    assert RANGES[m.name] == Bounds(m.lo, m.hi, m.dtype == "bool", m.unit)
    keep = "leakage_current_ma" if m.name == "tilt_deg" else "tilt_deg"
    for v in _probes(m):
        payload = json.dumps({"pole": "p-000001", "boot": "b", "samples": [
            {"seq": 1, "ts": now, "m": {m.name: v, keep: 0.5}}]}).encode()
        out = decode_telemetry("lampwatch/v1/centre/p-000001/telemetry", payload, now_ms=now)
        assert len(out.readings) == 1  # the other value keeps the sample
        accepted = m.name in out.readings[0].values
        assert accepted == m.in_range(v) == admits(RANGES[m.name], v), (m.name, v)
        if not accepted:
            assert [r.reason for r in out.rejects] == ["out_of_range"]
    for v in (math.nan, math.inf, -math.inf):
        assert not m.in_range(v) and not admits(RANGES[m.name], v)
