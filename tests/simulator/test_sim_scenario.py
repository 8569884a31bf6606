from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from contract.errors import ConfigError
from simulator.faults import labels_csv
from simulator.scenario import bundled_scenarios, load_scenario, parse_duration_ms, parse_scenario

MINIMAL = {"run": {"start": 1_705_334_400_000, "duration": "1h"}, "city": {"poles": 5, "districts": 1}}


def test_bundled_scenarios_load_and_build() -> None:
    paths = bundled_scenarios()
    assert len(paths) >= 3
    for p in paths:
        sc = load_scenario(p)
        run = sc.build()
        assert sc.name == p.stem
        assert run.n_ticks > 0 and len(run.city) == sc.city.poles
        assert all(sc.start_ms <= f.start_ms < f.end_ms for f in sc.faults)
        assert run.labels == [f.label for f in sc.faults]
        assert run.stream.tick()


def test_safety_drill_by_name_has_every_safety_fault() -> None:
    sc = load_scenario("safety-drill")
    assert {"leakage", "knockdown", "tilt_lean", "flood", "overheat", "smoke", "door_forced",
            "lamp_failure", "voltage_sag", "voltage_surge"} <= {f.kind for f in sc.faults}
    leak = next(f for f in sc.faults if f.kind == "leakage")
    assert leak.start_ms == sc.start_ms + 30 * 60_000 and leak.end_ms == leak.start_ms + 2 * 3_600_000
    assert leak.magnitude == 45.0


def test_scenario_run_is_reproducible() -> None:
    def digest() -> tuple[str, str]:
        run = load_scenario("hostile-night").build()
        h = hashlib.sha256()
        for _ in range(120):
            for t, p in run.stream.tick():
                h.update(t.encode() + p)
        return h.hexdigest(), labels_csv(run.labels)
    assert digest() == digest()


@pytest.mark.parametrize(("text", "ms"), [("90s", 90_000), ("30m", 1_800_000), ("1h30m", 5_400_000),
                                          ("2d", 172_800_000), ("250ms", 250), (12, 12_000), (0.5, 500)])
def test_durations(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["", "5 parsecs", "h", True, None, -3, "1x"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration_ms(bad)


@pytest.mark.parametrize("patch", [
    {"colour": "blue"},
    {"seed": -1},
    {"run": {"duration": "1h"}},
    {"run": {"start": "yesterday", "duration": "1h"}},
    {"city": {"poles": 0}},
    {"city": {"rivers": 2}},
    {"faults": [{"pole": "p-999999", "kind": "leakage", "for": "1h"}]},
    {"faults": [{"pole": "p-000001", "kind": "meteor", "for": "1h"}]},
    {"faults": [{"pole": "p-000001", "kind": "leakage"}]},
    {"faults": [{"pole": "p-000001", "kind": "stuck", "for": "1h"}]},
    {"faults": "nope"},
    {"events": [{"district": "nowhere", "kind": "heat_wave", "for": "1h", "magnitude": 5}]},
    {"events": [{"district": "centre", "kind": "volcano", "for": "1h", "magnitude": 5}]},
    {"random_faults": {"kinds": ["meteor"]}},
])
def test_config_errors_are_config_errors(patch: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        parse_scenario({**MINIMAL, **patch})


def test_minimal_and_file_errors(tmp_path: Path) -> None:
    sc = parse_scenario(MINIMAL)
    assert sc.duration_ms == 3_600_000 and sc.step_ms == 10_000 and sc.faults == ()
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [", encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_scenario(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_scenario(tmp_path / "missing.toml")


def test_safety_drill_faults_cross_their_critical_thresholds() -> None:
    from contract.catalog import INDEX
    from simulator.faults import FaultSet

    sc = load_scenario("safety-drill")
    run = sc.build()
    fs = FaultSet(sc.faults, run.city)
    crit = {"leakage": ("leakage_current_ma", 30.0), "flood": ("water_level_cm", 15.0),
            "overheat": ("cabinet_temp_c", 75.0), "smoke": ("smoke", 1.0), "door_forced": ("door_open", 1.0)}
    for f in sc.faults:
        i = run.city.pole(f.pole).index
        xs = [run.model.sample(t, fs)[i] for t in range(f.start_ms, f.end_ms, 60_000)]
        if f.kind in crit:
            name, level = crit[f.kind]
            assert max(x[INDEX[name]] for x in xs) >= level, f
        elif f.kind in ("tilt_lean", "knockdown"):
            base = run.city.pole(f.pole).tilt_baseline_deg
            assert max(x[INDEX["tilt_deg"]] for x in xs) - base >= 5.0, f
        elif f.kind == "lamp_failure":
            rated = run.city.pole(f.pole).rated_power_w
            lit = [x for x in xs if x[INDEX["dimming_pct"]] > 0]
            assert lit and all(x[INDEX["lamp_power_w"]] < 0.8 * rated for x in lit), f
        elif f.kind in ("voltage_sag", "voltage_surge"):
            u = [x[INDEX["supply_voltage_v"]] / 230.0 for x in xs]
            assert all(v <= 0.85 for v in u) if f.kind == "voltage_sag" else all(v >= 1.15 for v in u)
