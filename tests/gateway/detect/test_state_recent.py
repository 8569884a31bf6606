"""The state saved a second after an alarm change is the recent document (alarms, acknowledgements,
offline and maintenance marks), not the pole table: a restart from a crash between full saves gets back
everything that changed since the last one, and a recent file older than the state file is ignored."""

from __future__ import annotations

import json
from pathlib import Path

from contract.models import AckRequest, MaintenanceRequest, Status
from contract.readings import Reading
from gateway.detection import DetectionStage, alerts_of, read_state
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
POLES = 2_000


class City:
    """``POLES`` poles reporting every 10 s on a clock the test moves (the stage's and the devices')."""

    def __init__(self, path: Path, t_ms: int = T0) -> None:
        self.path, self.t = path, t_ms
        self.stage = self.open()
        self.seq = 0

    def open(self) -> DetectionStage:
        return DetectionStage(state_path=str(self.path), clock=lambda: self.t / 1000, spatial=None, stream=False)

    def readings(self, poles: range = range(POLES), **over: dict[str, float]) -> list[dict[str, object]]:
        self.seq += 1
        batch = [Reading(f"p-{i}", f"d{i % 8}", "b", self.seq, self.t + i,
                         {"leakage_current_ma": 2.0 + 0.01 * (self.seq % 4), **over.get(f"p-{i}", {})})
                 for i in poles]
        return alerts_of(self.stage(Outcome(readings=batch)))

    def step(self, ms: int = 10_000) -> None:
        self.t += ms


def _said_offline(stage: DetectionStage) -> set[str]:
    st = stage.det.rules.presence_.st
    return {stage.state.poles[r] for r in range(stage.state.n) if st.said_offline[r]}


def test_an_alarm_change_saves_the_alarms_not_the_pole_table(tmp_path: Path) -> None:
    """One alarm in a 2,000-pole city: the save a second later writes a document the size of the alarms.
    It rewrote the whole pole table (~0.25 CPU-s a save at 30,000 poles, up to once a second)."""
    c = City(tmp_path / "d.json")
    c.readings()  # the first save is a full one
    c.stage.flush()
    table = (tmp_path / "d.json").read_bytes()
    c.step()
    (a,) = c.readings(**{"p-7": {"leakage_current_ma": 40.0}})
    assert a["key"] == "leakage"
    c.stage.flush()
    assert (tmp_path / "d.json").read_bytes() == table, "the pole table was rewritten for one alarm change"
    recent = (tmp_path / "d.json.recent.json").read_bytes()
    assert len(recent) < 1_500, f"{len(recent)} bytes saved for one alarm"
    assert [(x["entity"], x["key"]) for x in json.loads(recent)["alarms"]] == [("p-7", "leakage")]
    assert len(table) > 50 * len(recent)


def test_a_crash_between_full_saves_restores_what_changed_since_the_last_one(tmp_path: Path) -> None:
    """After the full save: an alarm on a pole first heard since, an acknowledgement, a pole's Last Will
    and a maintenance window. The gateway dies without closing; the restart has all four, and every pole
    of the saved table keeps its row."""
    c = City(tmp_path / "d.json")
    c.readings(range(10))
    c.stage.flush()
    c.step()
    (a,) = c.readings(range(12), **{"p-11": {"leakage_current_ma": 40.0}})  # p-10, p-11: new since
    assert (a["pole"], a["key"]) == ("p-11", "leakage")
    assert c.stage.acknowledge(AckRequest(id="a1", action="ack", pole="p-11", district="d3", key="leakage",
                                          by="ops", ts=c.t, note="crew sent")) is None
    c.stage(Outcome(status=Status(pole="p-2", district="d2", state="offline", ts=c.t, reason="will")))
    assert c.stage.maintenance(MaintenanceRequest(id="m1", action="start", pole="p-3", district="d3", by="ops",
                                                  ts=c.t, start=c.t, end=c.t + 3_600_000)) is None
    c.step(2_000)
    c.stage.tick(c.t)  # the offline alarm, from the Last Will
    c.stage.flush()
    rows = {p: c.stage.state.row(p, d) for p, d in zip(c.stage.state.poles, c.stage.state.pole_district,
                                                        strict=True)}
    active = sorted((x.pole, x.key, x.acked_by) for x in c.stage.active())
    assert active == [("p-11", "leakage", "ops"), ("p-2", "pole_offline", None)]
    assert read_state(tmp_path / "d.json")["seq"] > json.loads((tmp_path / "d.json").read_bytes())["seq"]

    b = c.open()  # no close(): what the disk holds is all there is
    assert sorted((x.pole, x.key, x.acked_by) for x in b.active()) == active
    assert [x.ack_note for x in b.active() if x.pole == "p-11"] == ["crew sent"]
    assert _said_offline(b) == {"p-2"}
    assert b.maintenance_windows("p-3") == [(c.t - 2_000, c.t - 2_000 + 3_600_000)]
    assert {p: rows[p] for p in b.state.poles[:10]} == {f"p-{i}": i for i in range(10)}
    assert b.counters()["alarms_raised_leakage"] == 1
    c.stage = b
    c.step(1_000)
    assert [(x["pole"], x["key"]) for x in alerts_of(b.tick(c.t))] == []  # the Last Will still holds


def test_a_recent_file_older_than_the_state_file_is_ignored(tmp_path: Path) -> None:
    """An alarm raised and saved in the recent document, then cleared and saved whole: the restart must not
    bring the cleared alarm back from the older recent file."""
    c = City(tmp_path / "d.json")
    c.readings(range(5))
    c.step()
    assert c.readings(range(5), **{"p-1": {"leakage_current_ma": 40.0}})
    c.stage.flush()
    assert (tmp_path / "d.json.recent.json").exists()
    for _ in range(8):
        c.step()
        c.readings(range(5))
    assert c.stage.active() == []
    c.stage.save()  # full, on this thread
    assert c.open().active() == []


def test_a_damaged_recent_file_is_set_aside_and_the_state_file_still_loads(tmp_path: Path) -> None:
    c = City(tmp_path / "d.json")
    c.readings(range(5), **{"p-1": {"leakage_current_ma": 40.0}})  # in the full save
    c.stage.flush()
    (tmp_path / "d.json.recent.json").write_text('{"v": 2, "kind": "recent", "seq": 99, "alarms": [{"key"')
    b = c.open()
    assert [(x.pole, x.key) for x in b.active()] == [("p-1", "leakage")]
    assert (tmp_path / "d.json.recent.json.corrupt").exists()
    # a recent file of the right shape but damaged inside: the state file's alarms, and the next saves are
    # numbered past it (a file left behind never outranks them)
    (tmp_path / "d.json.recent.json").write_text(json.dumps({"v": 2, "kind": "recent", "seq": 99, "alarms": [],
                                                              "district_alarms": [], "acks": [],
                                                              "said_offline": [["d1"]], "maintenance": []}))
    b = c.open()
    assert [(x.pole, x.key) for x in b.active()] == [("p-1", "leakage")]
    b.save()
    assert json.loads((tmp_path / "d.json").read_bytes())["seq"] > 99
