"""contract/: catalog sanity, topic round-trips, payload JSON round-trips (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contract import topics
from contract.catalog import BY_NAME, CRITICAL, METRICS, Threshold
from contract.ids import DISTRICT_RE, POLE_RE, District, PoleId
from contract.models import COMMAND, TS_MAX_MS, TS_MIN_MS, Alert, CommandAck, Sample, Status, Telemetry

poles = st.from_regex(POLE_RE, fullmatch=True)
districts = st.from_regex(DISTRICT_RE, fullmatch=True)
metric_names = st.sampled_from([m.name for m in METRICS])
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def test_catalog_has_the_required_sensors_and_published_thresholds() -> None:
    required = {"lamp_power_w", "supply_voltage_v", "lamp_current_a", "power_factor", "dimming_pct",
                "leakage_current_ma", "tilt_deg", "vibration_g", "water_level_cm", "cabinet_temp_c", "smoke",
                "door_open", "ambient_temp_c", "humidity_pct", "pm25_ugm3", "pm10_ugm3", "no2_ugm3", "noise_db",
                "illuminance_lux", "radio_tx_power_dbm", "backhaul_up"}
    assert required <= set(BY_NAME)
    leak = {t.severity: t.value for t in BY_NAME["leakage_current_ma"].thresholds}
    assert leak["critical"] == 30.0
    lamp = BY_NAME["lamp_power_w"].thresholds[0]
    assert (lamp.relative_to, lamp.value, lamp.lamp_on) == ("rated", 0.8, True)
    volts = {t.op: t.value for t in BY_NAME["supply_voltage_v"].thresholds}
    assert volts == {">=": 1.15, "<=": 0.85}
    assert BY_NAME["power_factor"].thresholds[0].value == 0.65
    assert {t.value for t in BY_NAME["pm25_ugm3"].thresholds} == {15.0, 75.0}
    assert BY_NAME["pm10_ugm3"].thresholds[0].value == 45.0 and BY_NAME["no2_ugm3"].thresholds[0].value == 25.0
    assert all(t.relative_to == "baseline" for t in BY_NAME["tilt_deg"].thresholds)
    assert set(CRITICAL) == {"leakage_current_ma", "tilt_deg", "water_level_cm", "smoke", "door_open"}


def test_hysteresis_must_sit_on_the_safe_side() -> None:
    with pytest.raises(ValueError, match="clear level"):
        Threshold("x", ">=", 10, "warning", 11, "bad")
    with pytest.raises(ValueError, match="clear level"):
        Threshold("x", "<=", 10, "warning", 9, "bad")


def test_in_range_rejects_non_finite_and_non_binary_bools() -> None:
    leak, smoke = BY_NAME["leakage_current_ma"], BY_NAME["smoke"]
    assert leak.in_range(0) and leak.in_range(5000) and not leak.in_range(-0.01)
    assert not leak.in_range(float("nan")) and not leak.in_range(float("inf"))
    assert smoke.in_range(1.0) and not smoke.in_range(0.5)


@given(districts, poles, st.sampled_from(["telemetry", "status", "cmd", "cmd/ack"]))
def test_topic_build_parse_round_trip(district: str, pole: str, kind: str) -> None:
    t = topics.pole_topic(district, pole, kind)  # type: ignore[arg-type]
    p = topics.parse(t)
    assert (p.district, p.pole, p.kind, str(p)) == (district, pole, kind, t)


@given(districts, poles, st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True))
def test_alert_topic_round_trip(district: str, pole: str, key: str) -> None:
    t = topics.alert(district, pole, key)
    assert topics.parse(t).key == key and str(topics.parse(t)) == t


@given(st.text(max_size=40))
def test_ids_never_carry_wildcards_separators_or_line_protocol_syntax(s: str) -> None:
    for make in (PoleId, District):
        try:
            v = make(s)
        except ValueError:
            continue
        assert not set(v) & set("+#/ ,=\"'\\\n\r\t.") and not v.startswith("_")


@pytest.mark.parametrize("bad", ["p+1", "p#", "a/b", "x y", "a,b", "a=b", "..", "_sys", "", "A" * 70, "P-1"])
def test_hostile_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        PoleId(bad)
    with pytest.raises(ValueError):
        topics.telemetry("north", bad)


def test_parse_refuses_foreign_topics() -> None:
    for t in ["lampwatch/v2/n/p/telemetry", "lampwatch/v1/n/p", "lampwatch/v1/n/p/foo",
              "lampwatch/v1/_sys/p/telemetry", "other/v1/n/p/telemetry", "lampwatch/v1/n/p/alert/+"]:
        with pytest.raises(topics.TopicError):
            topics.parse(t)


samples = st.builds(Sample, seq=st.integers(0, 2**63 - 1), ts=st.integers(TS_MIN_MS, TS_MAX_MS),
                    m=st.dictionaries(metric_names, finite, min_size=1, max_size=8))


@settings(max_examples=200)
@given(poles, st.from_regex(r"[A-Za-z0-9-]{1,64}", fullmatch=True), st.lists(samples, min_size=1, max_size=5),
       st.integers(0, 10**9))
def test_telemetry_json_round_trip(pole: str, boot: str, ss: list[Sample], evicted: int) -> None:
    t = Telemetry(pole=pole, boot=boot, samples=ss, evicted=evicted)
    assert Telemetry.model_validate_json(t.model_dump_json()) == t


@given(poles, districts, st.sampled_from(["birth", "online", "offline"]), st.integers(TS_MIN_MS, TS_MAX_MS))
def test_status_json_round_trip(pole: str, district: str, state: str, ts: int) -> None:
    s = Status(pole=pole, district=district, state=state, ts=ts, sensors=("tilt_deg",))  # type: ignore[arg-type]
    assert Status.model_validate_json(s.model_dump_json()) == s


def test_commands_alerts_acks_round_trip_and_refuse_garbage() -> None:
    for raw in ['{"cmd":"set_interval","id":"c1","interval_s":5}', '{"cmd":"sample_now","id":"c2"}',
                '{"cmd":"set_thresholds","id":"c3","thresholds":{"leakage_current_ma":20}}',
                '{"cmd":"ping","id":"c4"}']:
        c = COMMAND.validate_json(raw)
        assert COMMAND.validate_json(c.model_dump_json()) == c
    for raw in ['{"cmd":"reboot","id":"x"}', '{"cmd":"set_interval","id":"x","interval_s":0}',
                '{"cmd":"ping"}', '{"cmd":"ping","id":"x","extra":1}', "[]"]:
        with pytest.raises(ValidationError):
            COMMAND.validate_json(raw)
    a = Alert(pole="p-1", district="north", key="leakage.critical", kind="leakage", metric="leakage_current_ma",
              severity="critical", state="raised", value=31.0, score=1.0, raised_at=TS_MIN_MS, ts=TS_MIN_MS,
              explain="leak")
    assert Alert.model_validate_json(a.model_dump_json()) == a
    ack = CommandAck(id="c1", pole="p-1", ok=False, ts=TS_MIN_MS, reason="unknown command")
    assert CommandAck.model_validate_json(ack.model_dump_json()) == ack


def test_models_are_frozen_strict_and_versioned() -> None:
    t = Telemetry(pole="p-1", boot="b", samples=[Sample(seq=0, ts=TS_MIN_MS, m={"tilt_deg": 1.0})])
    with pytest.raises(ValidationError):
        t.pole = "p-2"  # type: ignore[misc]
    for bad in ['{"v":1,"pole":"p-1","boot":"b","samples":[{"seq":0,"ts":%d,"m":{"tilt_deg":"1"}}]}',
                '{"v":1,"pole":"p-1","boot":"b","samples":[{"seq":0,"ts":%d,"m":{"tilt_deg":true}}]}',
                '{"v":2,"pole":"p-1","boot":"b","samples":[{"seq":0,"ts":%d,"m":{"tilt_deg":1}}]}',
                '{"v":1,"pole":"p-1","boot":"b","samples":[{"seq":-1,"ts":%d,"m":{"tilt_deg":1}}]}',
                '{"v":1,"pole":"p-1","boot":"b","samples":[]}']:
        with pytest.raises(ValidationError):
            Telemetry.model_validate_json(bad.replace("%d", str(TS_MIN_MS)))


def test_topic_ids_are_checked_once_and_kept_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from contract import topics as tp

    a = tp.parse("lampwatch/v1/north/p-cache-1/telemetry")
    b = tp.parse("lampwatch/v1/north/p-cache-1/status")
    assert a.pole is b.pole and a.district is b.district  # one validated id per text
    assert isinstance(a.pole, PoleId) and isinstance(a.district, District)
    for bad in ("lampwatch/v1/north/P-BAD/telemetry", "lampwatch/v1/No rth/p-1/telemetry"):
        with pytest.raises(tp.TopicError):
            tp.parse(bad)
        with pytest.raises(tp.TopicError):  # a refused id is never remembered as valid
            tp.parse(bad)
    assert "P-BAD" not in tp._POLES and "No rth" not in tp._DISTRICTS
    monkeypatch.setattr(tp, "_MAX_IDS", len(tp._POLES))  # full: still parsed and checked, not kept
    c = tp.parse("lampwatch/v1/north/p-cache-2/telemetry")
    assert c.pole == "p-cache-2" and "p-cache-2" not in tp._POLES
