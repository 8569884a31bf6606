"""Layer 1 safety rules: derived from the catalog, exercised at every threshold boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contract.catalog import (
    BY_NAME,
    DEFAULT_NOMINAL_VOLTAGE_V,
    DEFAULT_RATED_POWER_W,
    METRICS,
)
from contract.models import Status
from contract.readings import Reading
from gateway.detect.rules import RuleParams, derive_rules, levels
from gateway.detection import DetectionStage, alerts_of
from gateway.pipeline import Outcome

T0 = 1_700_000_000_000
TILT_BASE = 1.0


class Pole:
    """One pole fed sample by sample (1 s apart) through a detection stage (rules only).

    The threshold rules are exercised on identical readings, which on a safety channel is also what a
    stuck sensor reads (judged from the first reading there): ``feed`` leaves the stuck rule's alerts
    out (tests/gateway/detect/test_rules_stuck.py and test_health.py hold that rule)."""

    def __init__(self, stage: DetectionStage | None = None, pole: str = "p-1", district: str = "north",
                 context: dict[str, float] | None = None, dt_ms: int = 1000) -> None:
        self.now = [1_700_000_000.0]
        self.stage = stage or DetectionStage(clock=lambda: self.now[0], spatial=None, stream=False)
        self.pole, self.district, self.dt = pole, district, dt_ms
        self.context = context or {}
        self.t = T0
        self.seq = 0
        self.alerts: list[dict[str, Any]] = []

    def feed(self, n: int = 1, **values: float) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        for _ in range(n):
            self.seq += 1
            self.t += self.dt
            self.now[0] += self.dt / 1000
            r = Reading(self.pole, self.district, "b", self.seq, self.t, {**self.context, **values})
            got += [a for a in alerts_of(self.stage(Outcome(readings=[r]))) if a["kind"] != "sensor_stuck"]
        self.alerts += got
        return got

    def level(self, key: str) -> int:
        row = self.stage.state.find(self.pole)
        return 0 if row is None else self.stage.poles.level(row, key)

    def severity(self, key: str) -> str | None:
        for a in self.stage.active():
            if a.pole == self.pole and a.key == key:
                return a.severity
        return None


# --- the table -----------------------------------------------------------------------------------------
def test_every_catalog_threshold_is_a_tier_of_one_rule() -> None:
    rules = derive_rules()
    tiers = {(r.spec.metric, r.spec.kind, t.severity) for r in rules for t in r.spec.tiers}
    expected = {(m.name, t.kind, t.severity) for m in METRICS for t in m.thresholds}
    assert tiers == expected
    by_key = {r.spec.key: r for r in rules}
    assert by_key["leakage"].trig_at == (15.0, 30.0)
    assert [t.severity for t in by_key["leakage"].spec.tiers] == ["warning", "critical"]
    assert [t.fast for t in by_key["leakage"].spec.tiers] == [False, True]
    assert by_key["smoke"].spec.tiers[0].fast and by_key["door_open"].spec.tiers[0].fast
    assert by_key["tilt"].relative_to == "baseline" and by_key["lamp_failure"].lamp_on


def test_levels_trigger_and_strict_clear() -> None:
    import numpy as np

    trig, hold = levels(np.array([11.9, 12.0, 12.1, 14.9, 15.0, 25.0, 25.1, 30.0, np.nan]), ">=",
                        (15.0, 30.0), (12.0, 25.0))
    assert trig.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 0]
    assert hold.tolist() == [0, 0, 1, 1, 1, 1, 2, 2, 0]


# --- boundaries of every catalog rule ------------------------------------------------------------------
def _cases() -> list[tuple[str, str, int]]:
    """Every tier of every rule on single readings (averaged rules: tests/gateway/detect/test_rules_averaged.py)."""
    out = []
    for r in derive_rules():
        if r.mean_over_s is not None:
            continue
        for i in range(len(r.spec.tiers)):
            out.append((r.spec.metric or "", r.spec.key, i))
    return out


def _raw(rule_key: str, x: float) -> float:
    """The reading that compares as ``x`` for the rule (undoing nominal / rated / baseline)."""
    r = {r.spec.key: r for r in derive_rules()}[rule_key]
    if r.relative_to == "nominal":
        return x * DEFAULT_NOMINAL_VOLTAGE_V
    if r.relative_to == "rated":
        return x * DEFAULT_RATED_POWER_W  # dimming 100 %
    if r.relative_to == "baseline":
        return TILT_BASE + x
    return x


def _pole(metric: str) -> Pole:
    p = Pole(context={"dimming_pct": 100.0} if metric != "dimming_pct" else {})
    p.stage.set_pole("p-1", "north", tilt_baseline_deg=TILT_BASE, rated_power_w=DEFAULT_RATED_POWER_W)
    return p


@pytest.mark.parametrize(("metric", "key", "tier"), _cases())
def test_threshold_boundaries_and_hysteresis(metric: str, key: str, tier: int) -> None:
    rule = {r.spec.key: r for r in derive_rules()}[key]
    v, c = rule.trig_at[tier], rule.clear_at[tier]
    sign = 1.0 if rule.op == ">=" else -1.0
    is_bool = BY_NAME[metric].dtype == "bool"
    eps = 1.0 if is_bool else 0.01
    n = rule.spec.raise_n + 2
    level = tier + 1

    below = _pole(metric)  # just on the safe side of the trigger: never this tier
    below.feed(n, **{metric: _raw(key, v - sign * eps)})
    assert below.level(key) < level

    at = _pole(metric)
    at.feed(n, **{metric: _raw(key, v)})
    assert at.level(key) == level

    if not is_bool:
        past = _pole(metric)
        past.feed(n, **{metric: _raw(key, v + sign * eps)})
        assert past.level(key) >= level

    # hysteresis: between clear and trigger the alarm stays; at the clear level it drops, once
    h = _pole(metric)
    h.feed(n, **{metric: _raw(key, v)})
    assert h.level(key) == level
    if not is_bool:
        changes = h.feed(3 * rule.spec.clear_n, **{metric: _raw(key, (v + c) / 2)})
        assert changes == [] and h.level(key) == level
        changes = h.feed(3 * rule.spec.clear_n, **{metric: _raw(key, c + sign * eps)})
        assert changes == [] and h.level(key) == level
    h.feed(rule.spec.clear_n - 1, **{metric: _raw(key, c)})
    assert h.level(key) == level
    changes = h.feed(1, **{metric: _raw(key, c)})
    assert [x["key"] for x in changes] == [key]
    assert h.level(key) < level
    assert h.feed(2 * rule.spec.clear_n, **{metric: _raw(key, c)}) == []  # cleared exactly once


def test_leakage_explanation_carries_the_value() -> None:
    p = Pole()
    (a,) = p.feed(leakage_current_ma=31.2)
    assert a["explain"] == "leakage current at or past the 30 mA RCD trip level: shock risk (31.2 mA)"
    assert (a["severity"], a["state"], a["kind"]) == ("critical", "raised", "leakage")


def test_warning_tier_needs_a_minimum_duration_and_an_interruption_resets_it() -> None:
    p = Pole()
    assert p.feed(water_level_cm=6.0) == []
    assert p.feed(water_level_cm=2.0) == []
    assert p.feed(water_level_cm=6.0) == []
    (a,) = p.feed(water_level_cm=6.0)
    assert (a["key"], a["severity"]) == ("flood", "warning")


# --- lamp-on context -------------------------------------------------------------------------------------
def _rated(watts: float = 120.0) -> Pole:
    p = Pole()
    p.stage.set_pole(p.pole, p.district, rated_power_w=watts)
    return p


def test_lamp_failure_uses_dimming_for_expected_power() -> None:
    off = _rated()
    off.feed(5, dimming_pct=0.0, lamp_power_w=0.0)  # commanded off: a dark lamp is right
    assert off.level("lamp_failure") == 0
    dim = _rated()
    dim.feed(5, dimming_pct=50.0, lamp_power_w=50.0)  # 50/60 = 83 %: fine
    assert dim.level("lamp_failure") == 0
    weak = _rated()
    weak.feed(5, dimming_pct=50.0, lamp_power_w=47.0)  # 47/60 = 78 %
    assert weak.severity("lamp_failure") == "warning"
    assert "expected 60 W" in weak.alerts[0]["explain"]


def test_lamp_failure_falls_back_to_illuminance_and_knows_nothing_without_context() -> None:
    dark = _rated()
    dark.feed(5, illuminance_lux=5.0, lamp_power_w=50.0)
    assert dark.level("lamp_failure") == 1
    day = _rated()
    day.feed(5, illuminance_lux=5000.0, lamp_power_w=0.0)
    assert day.level("lamp_failure") == 0
    blind = _rated()
    blind.feed(5, lamp_power_w=0.0)
    assert blind.level("lamp_failure") == 0


def test_lamp_failure_stays_through_the_day_until_the_lamp_is_seen_working() -> None:
    p = _rated()
    p.feed(5, dimming_pct=100.0, lamp_power_w=10.0)
    assert p.level("lamp_failure") == 1
    assert p.feed(10, dimming_pct=0.0, lamp_power_w=0.0) == []  # day: no evidence either way
    assert p.level("lamp_failure") == 1
    p.feed(3, dimming_pct=100.0, lamp_power_w=119.0)
    assert p.level("lamp_failure") == 0


def test_rated_power_and_nominal_voltage_are_per_pole() -> None:
    big = Pole()
    big.stage.set_pole("p-1", "north", rated_power_w=200.0, nominal_voltage_v=120.0)
    big.feed(5, dimming_pct=100.0, lamp_power_w=150.0, supply_voltage_v=120.0)
    assert big.level("lamp_failure") == 1  # 150 / 200 = 75 %
    assert big.level("voltage_low") == 0  # 120 V is nominal here
    std = Pole()
    std.feed(5, dimming_pct=100.0, lamp_power_w=150.0, supply_voltage_v=120.0)
    assert std.level("lamp_failure") == 0
    assert std.level("voltage_low") == 1


def test_a_lamp_of_unknown_rating_is_judged_against_its_own_lit_draw() -> None:
    # a 60 W lamp whose device declares no rated_power_w (it is optional in the birth and the inventory):
    # judged against a 120 W default it read as failed at every lit sample, for ever
    p = Pole()
    p.feed(10, dimming_pct=100.0, lamp_power_w=60.0)
    assert p.level("lamp_failure") == 0
    p.feed(10, dimming_pct=50.0, lamp_power_w=30.5)  # dimmed: half the learned draw is right
    assert p.level("lamp_failure") == 0
    p.feed(5, dimming_pct=100.0, lamp_power_w=40.0)  # 40 / 60 = 67 %: the lamp lost a third of its light
    assert p.severity("lamp_failure") == "warning"
    assert "expected 60." in p.alerts[-1]["explain"]  # learnt: 60 W and a little of the dimmed readings
    p.feed(20, dimming_pct=100.0, lamp_power_w=40.0)  # a failing lamp does not teach its own rating
    assert p.level("lamp_failure") == 1
    p.feed(3, dimming_pct=100.0, lamp_power_w=60.0)
    assert p.level("lamp_failure") == 0


def test_a_lamp_of_unknown_rating_never_seen_lit_is_judged_as_the_smallest_lamp() -> None:
    dark = Pole()
    dark.feed(5, dimming_pct=100.0, lamp_power_w=0.4)  # a dark street from its first night
    assert dark.level("lamp_failure") == 1
    small = Pole()
    small.feed(5, dimming_pct=100.0, lamp_power_w=12.0)  # a 12 W lamp is lit, not failed
    assert small.level("lamp_failure") == 0
    lux_only = Pole()  # no dimming reported: nothing is learnt, only a dark lamp is called failed
    lux_only.feed(5, illuminance_lux=5.0, lamp_power_w=35.0)
    assert lux_only.level("lamp_failure") == 0


def test_a_learned_rating_survives_a_restart(tmp_path: Path) -> None:
    now = [1_700_000_000.0]

    def stage() -> DetectionStage:
        return DetectionStage(state_path=str(tmp_path / "state.json"), clock=lambda: now[0], spatial=None,
                              stream=False, background_save=False)

    p = Pole(stage())
    p.now = now
    p.feed(10, dimming_pct=100.0, lamp_power_w=60.0)
    p.stage.close()
    q = Pole(stage())
    q.now, q.t, q.seq = now, p.t, p.seq
    q.feed(5, dimming_pct=100.0, lamp_power_w=40.0)  # a restart does not learn the failed lamp afresh
    assert q.level("lamp_failure") == 1


def test_power_factor_only_while_the_lamp_should_be_on() -> None:
    off = Pole()
    off.feed(5, dimming_pct=0.0, power_factor=0.4)
    assert off.level("power_factor_low") == 0
    on = Pole()
    on.feed(5, dimming_pct=80.0, power_factor=0.4)
    assert on.level("power_factor_low") == 1


def test_flicker_raises_on_repeated_toggling_and_clears_when_steady() -> None:
    p = Pole(context={"dimming_pct": 100.0})
    for i in range(3):
        p.feed(1, lamp_power_w=120.0 if i % 2 == 0 else 0.0)
    assert p.level("lamp_flicker") == 0  # two toggles
    p.feed(1, lamp_power_w=0.0)
    assert p.level("lamp_flicker") == 0  # three toggles
    p.feed(1, lamp_power_w=120.0)
    assert p.level("lamp_flicker") == 1  # four toggles within the window
    p.dt = 60_000
    p.feed(15, lamp_power_w=120.0)  # steady for longer than the window
    assert p.level("lamp_flicker") == 0
    assert [a["state"] for a in p.alerts if a["key"] == "lamp_flicker"] == ["raised", "cleared"]


# --- door and maintenance ---------------------------------------------------------------------------
def test_door_open_inside_a_maintenance_window_is_no_alarm_outside_it_is_at_once() -> None:
    p = Pole()
    p.stage.set_maintenance("p-1", "north", T0, T0 + 10_000)
    assert p.feed(5, door_open=1.0) == []  # t = T0 + 1..5 s: inside
    p.feed(4, door_open=1.0)
    assert p.level("door_open") == 0
    (a,) = p.feed(1, door_open=1.0)  # t = T0 + 10 s: the window has ended
    assert (a["key"], a["state"], a["severity"]) == ("door_open", "raised", "warning")
    other = Pole(pole="p-2")
    assert len(other.feed(1, door_open=1.0)) == 1


def test_maintenance_windows_are_listed_and_clearable() -> None:
    p = Pole()
    p.stage.set_maintenance("p-1", "north", T0 + 100, T0 + 200)
    p.stage.set_maintenance("p-1", "north", T0, T0 + 50)
    assert p.stage.rules.maintenance("p-1") == [(T0, T0 + 50), (T0 + 100, T0 + 200)]
    p.stage.rules.clear_maintenance("p-1")
    assert p.stage.rules.maintenance("p-1") == []
    with pytest.raises(ValueError):
        p.stage.set_maintenance("p-1", "north", T0, T0)


# --- tilt against the pole's own baseline ---------------------------------------------------------------
def test_tilt_uses_the_poles_learned_baseline() -> None:
    n = RuleParams().tilt_learn_n
    crooked = Pole(pole="p-crooked")
    crooked.feed(n + 20, tilt_deg=3.0)  # installed at 3 degrees: that is its normal
    assert crooked.alerts == []
    assert crooked.stage.rules.baseline("p-crooked", "tilt_deg") == pytest.approx(3.0)
    leaning = Pole(pole="p-lean")
    leaning.feed(n, tilt_deg=0.5)
    assert leaning.alerts == []
    (a,) = leaning.feed(1, tilt_deg=5.6)
    assert (a["severity"], a["key"]) == ("critical", "tilt")
    assert "5.6 deg" in a["explain"] and "baseline 0.5 deg" in a["explain"]


def test_tilt_baseline_is_robust_to_a_bad_first_reading_and_can_be_given() -> None:
    n = RuleParams().tilt_learn_n
    p = Pole()
    p.feed(1, tilt_deg=40.0)  # a glitch during learning
    p.feed(n - 1, tilt_deg=0.5)
    assert p.stage.rules.baseline("p-1", "tilt_deg") == pytest.approx(0.5)
    given = Pole()
    given.stage.set_pole("p-1", "north", tilt_baseline_deg=0.5)
    (a,) = given.feed(1, tilt_deg=5.6)  # no learning period when the baseline is given
    assert a["severity"] == "critical"


def test_tilt_gives_no_condition_while_learning() -> None:
    p = Pole()
    p.feed(RuleParams().tilt_learn_n - 1, tilt_deg=30.0)
    assert p.alerts == [] and p.stage.rules.baseline("p-1", "tilt_deg") is None


# --- presence ---------------------------------------------------------------------------------------------
def test_pole_offline_after_k_intervals_of_silence_and_back_on_a_reading() -> None:
    p = Pole()
    p.stage(Outcome(status=Status(pole="p-1", district="north", state="birth", ts=T0, interval_s=10.0)))
    p.feed(1, leakage_current_ma=1.0)
    heard = int(p.now[0] * 1000)
    assert alerts_of(p.stage.tick(heard + 30_000)) == []  # 3 x 10 s: not yet
    (a,) = alerts_of(p.stage.tick(heard + 30_001))
    assert (a["key"], a["state"], a["kind"]) == ("pole_offline", "raised", "pole_offline")
    assert alerts_of(p.stage.tick(heard + 60_000)) == []  # raised once
    (b,) = p.feed(1, leakage_current_ma=1.0)
    assert (b["key"], b["state"]) == ("pole_offline", "cleared")


def test_last_will_raises_offline_at_once_and_birth_clears_it() -> None:
    p = Pole()
    p.feed(1, leakage_current_ma=1.0)
    off = Status(pole="p-1", district="north", state="offline", ts=T0 + 5000, reason="will")
    (a,) = alerts_of(p.stage(Outcome(status=off)))
    assert (a["key"], a["state"]) == ("pole_offline", "raised")
    assert alerts_of(p.stage.tick(int(p.now[0] * 1000) + 1)) == []  # silence is not yet long: stays
    birth = Status(pole="p-1", district="north", state="birth", ts=T0 + 9000)
    (b,) = alerts_of(p.stage(Outcome(status=birth)))
    assert b["state"] == "cleared"


def test_a_run_of_status_messages_in_one_call_decides_as_one_call_each() -> None:
    """The service hands detection consecutive statuses at once (``Outcome.statuses``): each pole's are
    taken in turn, so a will then a birth of one pole, or a birth then a will, ends as one by one."""
    def run(batched: bool) -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
        p = Pole()
        for pole in ("p-1", "p-2", "p-3"):
            p.pole = pole
            p.feed(1, leakage_current_ma=1.0, lamp_power_w=100.0)
        sts = [Status(pole="p-1", district="north", state="offline", ts=T0 + 5000, reason="will"),
               Status(pole="p-2", district="north", state="birth", ts=T0 + 5000, rated_power_w=250.0),
               Status(pole="p-1", district="north", state="birth", ts=T0 + 6000),
               Status(pole="p-3", district="north", state="offline", ts=T0 + 6000, reason="will"),
               Status(pole="p-2", district="north", state="offline", ts=T0 + 7000, reason="will")]
        got = []
        if batched:
            got = alerts_of(p.stage(Outcome(statuses=sts)))
        else:
            for st in sts:
                got += alerts_of(p.stage(Outcome(status=st)))
        active = sorted((a.pole, a.key) for a in p.stage.active())
        return [(a["pole"], a["key"], a["state"]) for a in got], active

    one_by_one = run(False)
    assert one_by_one[0] == [("p-1", "pole_offline", "raised"), ("p-1", "pole_offline", "cleared"),
                             ("p-3", "pole_offline", "raised"), ("p-2", "pole_offline", "raised")]
    assert run(True) == one_by_one


def test_backhaul_down_is_a_catalog_rule() -> None:
    p = Pole()
    p.feed(RuleParams().raise_n, backhaul_up=0.0)
    assert p.severity("backhaul_down") == "warning"
