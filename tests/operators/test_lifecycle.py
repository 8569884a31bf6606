"""Alarm lifecycle for people and the inventory as the truth (pure: the detection stage and pipeline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contract import topics
from contract.errors import ConfigError
from contract.models import AckRequest, Alert, MaintenanceRequest, Status
from contract.readings import Reading
from gateway.detection import DetectionStage, alerts_of
from gateway.inventory import Inventory, PoleRecord, parse
from gateway.pipeline import Outcome, Pipeline

T0 = 1_700_000_000_000
INV = """pole,district,lat,lon,rated_power_w,nominal_voltage_v,tilt_baseline_deg,sensors
p-1,north,52.5,13.4,120,230,0,leakage_current_ma;tilt_deg
p-2,south,52.6,13.5,,,,
"""


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> float:
        return self.ms / 1000


def _stage(clock: Clock, **kw: Any) -> tuple[DetectionStage, list[tuple[str, bytes, bool]], list[Alert]]:
    published: list[tuple[str, bytes, bool]] = []
    offered: list[Alert] = []
    kw.setdefault("spatial", None)
    kw.setdefault("stream", False)
    st = DetectionStage(clock=clock, publish=lambda t, p, r: published.append((t, p, r)),
                        on_alert=offered.append, **kw)
    return st, published, offered


def _reading(pole: str, district: str, seq: int, ts: int, **m: float) -> Outcome:
    return Outcome(readings=[Reading(pole, district, "b", seq, ts, m)])


def _birth(pole: str, district: str, ts: int, **attrs: float) -> Outcome:
    return Outcome(status=Status(pole=pole, district=district, state="birth", ts=ts, **attrs))


def test_device_declared_baseline_changes_nothing_with_the_inventory() -> None:
    """The issue's example: inventory baseline 0, device declares 40, a 42 degree lean is critical."""
    clock = Clock()
    st, _pub, offered = _stage(clock, inventory=parse(INV))
    pts = st(_birth("p-1", "north", T0, tilt_baseline_deg=40.0))
    notices = [a for a in alerts_of(pts) if a["kind"] == "inventory_mismatch"]
    assert notices and notices[0]["state"] == "raised"
    assert st.rules.baseline("p-1", "tilt_deg") == 0.0
    pts = st(_reading("p-1", "north", 1, T0 + 1000, tilt_deg=42.0))
    tilt = [a for a in alerts_of(pts) if a["kind"] == "tilt"]
    assert [(a["severity"], a["state"]) for a in tilt] == [("critical", "raised")]
    assert any(a.kind == "tilt" and a.severity == "critical" for a in offered)
    # a birth that agrees with the inventory clears the notice
    pts = st(_birth("p-1", "north", T0 + 2000, tilt_baseline_deg=0.0))
    assert [a["state"] for a in alerts_of(pts) if a["kind"] == "inventory_mismatch"] == ["cleared"]


def test_without_an_inventory_the_device_still_declares() -> None:
    """The old behaviour stays where no inventory is configured (the contrast to the test above)."""
    st, _pub, _off = _stage(Clock())
    st(_birth("p-1", "north", T0, tilt_baseline_deg=40.0))
    pts = st(_reading("p-1", "north", 1, T0 + 1000, tilt_deg=42.0))
    assert not [a for a in alerts_of(pts) if a["kind"] == "tilt" and a["severity"] == "critical"]


def test_unregistered_pole_is_flagged_under_policy_flag() -> None:
    st, _pub, _off = _stage(Clock(), inventory=parse(INV, unknown="flag"))
    pts = st(_birth("p-99", "north", T0, rated_power_w=100.0))
    assert [a["kind"] for a in alerts_of(pts) if a["state"] == "raised"] == ["unregistered"]


def _leak(st: DetectionStage, seq: int, ts: int, ma: float) -> list[Any]:
    return alerts_of(st(_reading("p-1", "north", seq, ts, leakage_current_ma=ma)))


def _ack(action: str = "ack", **kw: Any) -> AckRequest:
    base: dict[str, Any] = {"id": "r1", "action": action, "pole": "p-1", "district": "north", "key": "leakage",
                            "by": "alice", "ts": T0, "note": "crew on the way"}
    base.update(kw)
    return AckRequest(**base)


def test_acknowledge_is_stored_beside_the_alarm_and_reset_by_escalation(tmp_path: Path) -> None:
    clock = Clock()
    st, published, offered = _stage(clock, state_path=str(tmp_path / "state.json"))
    # the leakage warning is raised on its first sample; the second holds it
    assert _leak(st, 1, T0, 20.0)[0]["severity"] == "warning" and _leak(st, 2, T0 + 1000, 20.0) == []
    assert st.acknowledge(_ack(key="flood")) is not None  # nothing active under that key
    clock.ms = T0 + 5000
    assert st.acknowledge(_ack()) is None
    retained = [json.loads(p) for t, p, r in published if t == topics.alert("north", "p-1", "leakage") and r]
    assert retained[-1]["acked_by"] == "alice" and retained[-1]["ack_note"] == "crew on the way"
    assert offered[-1].acked_by == "alice" and offered[-1].acked_at == T0 + 5000
    pts = st.tick(T0 + 6000)  # the acknowledgement's alerts point goes out with the next call
    acked = [a for a in alerts_of(pts) if a["kind"] == "leakage"]
    assert acked and acked[0]["acked"] == 1 and acked[0]["acked_by"] == "alice"
    assert st.active()[0].acked_by == "alice"
    st.close()
    # it survives a restart: the state file holds it
    again, _p, _o = _stage(clock, state_path=str(tmp_path / "state.json"))
    assert [a.acked_by for a in again.active() if a.key == "leakage"] == ["alice"]
    # escalation to critical needs a fresh look: the acknowledgement is gone
    esc = _leak(again, 3, T0 + 7000, 40.0)
    assert esc[0]["severity"] == "critical" and esc[0]["acked"] == 0
    assert again.active()[0].acked_by is None


def test_shelve_needs_a_future_time_and_clear_carries_the_record() -> None:
    clock = Clock()
    st, _pub, offered = _stage(clock)
    _leak(st, 1, T0, 40.0)
    assert st.acknowledge(_ack("shelve", until=T0 - 1)) is not None
    assert st.acknowledge(_ack("shelve", until=T0 + 3_600_000, silence_id="abc-1")) is None
    assert offered[-1].shelved_until == T0 + 3_600_000 and offered[-1].silence_id == "abc-1"
    cleared: list[Any] = []
    for i in range(5):
        cleared += _leak(st, 2 + i, T0 + 1000 * (i + 1), 1.0)
    # first out: the shelve's own alerts point (raised, shelved); then the clear, still carrying it
    assert [(a["state"], a["shelved_until"]) for a in cleared] == [("raised", T0 + 3_600_000),
                                                                   ("cleared", T0 + 3_600_000)]
    assert st.active() == []


def test_maintenance_request_suppresses_door_alarms_in_the_window() -> None:
    clock = Clock()
    st, _pub, _off = _stage(clock)
    st(_birth("p-1", "north", T0))
    req = MaintenanceRequest(id="m1", action="start", pole="p-1", district="north", by="bob", ts=T0,
                             start=T0, end=T0 + 60_000)
    assert st.maintenance(req) is None
    assert st.maintenance_windows("p-1") == [(T0, T0 + 60_000)]
    assert not [a for a in alerts_of(st(_reading("p-1", "north", 1, T0 + 1000, door_open=1.0)))
                if a["kind"] == "door_open"]
    st.maintenance(req.model_copy(update={"action": "end"}))
    door = [a for a in alerts_of(st(_reading("p-1", "north", 2, T0 + 2000, door_open=1.0)))
            if a["kind"] == "door_open"]
    assert [a["state"] for a in door] == ["raised"]
    assert st.maintenance(req.model_copy(update={"pole": "p-404"})) is not None


def test_old_alert_payloads_stay_valid() -> None:
    old = ('{"v":1,"pole":"p-1","district":"north","key":"leakage","kind":"leakage","severity":"warning",'
           '"state":"raised","raised_at":1700000000000,"ts":1700000000000,"explain":"x"}')
    a = Alert.model_validate_json(old)
    assert a.acked_by is None and a.shelved_until is None


# --- the pipeline's district / inventory check ------------------------------------------------------
def _telemetry(district: str, pole: str) -> tuple[str, bytes]:
    body = {"v": 1, "pole": pole, "boot": "b1", "samples": [{"seq": 1, "ts": T0, "m": {"leakage_current_ma": 2.0}}]}
    return topics.telemetry(district, pole), json.dumps(body).encode()


def test_district_hopping_is_refused_and_unregistered_by_policy() -> None:
    p = Pipeline(inventory=parse(INV))
    out = p.telemetry(*_telemetry("south", "p-1"), now_ms=T0)
    assert out.readings == [] and [r.reason for r in out.rejects] == ["wrong_district"]
    assert "belongs to district north" in out.rejects[0].detail
    assert p.rejects_by_reason["wrong_district"] == 1 and p.counts["samples_rejected"] == 1
    assert len(p.telemetry(*_telemetry("north", "p-1"), now_ms=T0).readings) == 1
    assert [r.reason for r in p.telemetry(*_telemetry("north", "p-77"), now_ms=T0).rejects] == ["unregistered"]
    st = Status(pole="p-1", district="south", state="birth", ts=T0)
    out = p.status(topics.status("south", "p-1"), st.model_dump_json().encode(), T0)
    assert out.status is None and [r.reason for r in out.rejects] == ["wrong_district"]
    flag = Pipeline(inventory=parse(INV, unknown="flag"))
    assert len(flag.telemetry(*_telemetry("north", "p-77"), now_ms=T0).readings) == 1


@pytest.mark.parametrize("text,msg", [
    ("pole,district\np-1,north\np-1,north\n", "twice"),
    ("pole,district,lat\np-1,north,91\n", "outside"),
    ("pole,district,sensors\np-1,north,no_such\n", "unknown sensor"),
    ("pole,district\nP 1,north\n", "invalid pole id"),
    ("district,pole\n", "header"),
])
def test_inventory_errors_are_one_clear_line(text: str, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        parse(text)


def test_inventory_record_round_trip() -> None:
    from gateway.inventory import to_csv

    inv = parse(INV)
    again = parse(to_csv(inv.records()))
    assert again.records() == inv.records()
    assert isinstance(inv, Inventory) and inv.get("p-2") == PoleRecord("p-2", "south", 52.6, 13.5)


def test_one_structured_log_line_per_change_and_acknowledgement(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    st, _pub, _off = _stage(clock)
    with caplog.at_level("INFO", logger="lampwatch.detect"):
        _leak(st, 1, T0, 20.0)
        _leak(st, 2, T0 + 1000, 20.0)  # raised (warning)
        _leak(st, 3, T0 + 2000, 40.0)  # escalated (critical)
        st.acknowledge(_ack())
        for i in range(3):
            _leak(st, 4 + i, T0 + 3000 + 1000 * i, 1.0)  # cleared
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("alarm ")]
    assert [line.split()[1] for line in lines] == ["raised", "escalated", "acknowledged", "cleared"]
    assert "pole=p-1 district=north key=leakage kind=leakage severity=critical" in lines[1]
    assert 'by=alice' in lines[2] and 'note="crew on the way"' in lines[2]
    assert 'explain="cleared: ' in lines[3]
