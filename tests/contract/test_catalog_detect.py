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


def test_streamed_and_stuck_candidates_are_what_the_gateways_rules_said() -> None:
    # what detection.py (signal shape != lamp, not illuminance) and rules.py (noise > 0, not constant-shaped
    # unless a safety channel) derived from the simulator's hints before the catalog carried detection hints
    assert STREAM_METRICS == catalog.STREAMED == (
        "supply_voltage_v", "leakage_current_ma", "tilt_deg", "vibration_g", "water_level_cm", "cabinet_temp_c",
        "ambient_temp_c", "humidity_pct", "pm25_ugm3", "pm10_ugm3", "no2_ugm3", "noise_db", "radio_tx_power_dbm")
    assert tuple(m.name for m in stuck_metrics()) == catalog.STUCK_CANDIDATES == (
        "lamp_power_w", "supply_voltage_v", "lamp_current_a", "power_factor", "leakage_current_ma", "tilt_deg",
        "vibration_g", "water_level_cm", "cabinet_temp_c", "ambient_temp_c", "humidity_pct", "pm25_ugm3",
        "pm10_ugm3", "no2_ugm3", "noise_db", "illuminance_lux", "radio_tx_power_dbm")
    q = 10.0 ** -catalog.BY_NAME["humidity_pct"].decimals
    assert repeat_prior(catalog.BY_NAME["humidity_pct"]) == pytest.approx(
        q / (catalog.BY_NAME["humidity_pct"].noise * math.sqrt(math.pi)))


def test_production_detection_reads_no_simulator_signal_hint() -> None:
    """The simulator's ``Signal`` hints are the simulator's: detection reads ``Metric.detect`` and
    ``Metric.noise`` (the sensor's noise, which the simulator's signal also uses)."""
    files = [*sorted((REPO / "gateway" / "detect").glob("*.py")), REPO / "gateway" / "detection.py"]
    assert [f.name for f in files if ".signal" in f.read_text(encoding="utf-8")] == []


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
