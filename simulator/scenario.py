"""Scenario files: a city, a run window, faults and events in TOML (read with ``tomllib``).

    name = "safety-drill"
    description = "leakage, a knock-down and a flood in one evening"
    seed = 7                                 # seeds the city, signals, random faults and stream

    [city]                                   # any CityConfig field; seed defaults to the top seed
    poles = 40
    districts = ["centre", "north", "harbour"]

    [run]
    start = 2024-01-15T15:00:00Z             # a TOML datetime (UTC if no offset) or epoch ms
    duration = "6h"                          # "90s", "30m", "6h", "2d" or a number of seconds
    step = "10s"

    [random_faults]                          # optional: random_faults(rate=..., kinds=...)
    rate = 0.5
    kinds = ["leakage", "stuck"]

    [random_events]                          # optional: random_events(rate=...)
    rate = 0.1

    [[faults]]                               # explicit faults; times are offsets from run start
    pole = "p-000003"
    kind = "leakage"
    at = "30m"
    for = "2h"
    magnitude = 45                           # optional (kind default); metric: sensor faults only

    [[events]]
    district = "harbour"
    kind = "pollution_episode"
    at = "1h"
    for = "4h"
    magnitude = 4

Anything wrong in a file raises :class:`contract.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from contract.errors import ConfigError
from simulator.city import City, CityConfig
from simulator.faults import Fault, Label, random_faults
from simulator.signals import Event, SignalModel, random_events
from simulator.stream import TelemetryStream

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = r"(\d+(?:\.\d+)?)(ms|s|m|h|d)"
_DUR_RE = re.compile(rf"(?:{_PART})+")


def parse_duration_ms(value: object, what: str = "duration") -> int:
    """``"90s"``, ``"30m"``, ``"1h30m"``, ``"2d"``, ``"250ms"`` or a number of seconds -> ms."""
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        ms = round(float(value) * 1000)
    elif isinstance(value, str) and _DUR_RE.fullmatch(value.replace(" ", "")):
        ms = round(sum(float(n) * _UNITS_MS[u] for n, u in re.findall(_PART, value.replace(" ", ""))))
    else:
        raise ConfigError(f"{what}: expected a duration like '30m' or seconds, got {value!r}")
    if ms < 0:
        raise ConfigError(f"{what}: must not be negative")
    return ms


def _time_ms(value: object, what: str) -> int:
    if isinstance(value, datetime):
        dt = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    if isinstance(value, date):
        return int(datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{what}: expected a TOML datetime or epoch milliseconds, got {value!r}")


@dataclass(frozen=True, slots=True)
class Run:
    """A scenario made real: the objects the CLI, the publisher and the drills drive."""

    scenario: Scenario
    city: City
    model: SignalModel
    stream: TelemetryStream

    @property
    def labels(self) -> list[Label]:
        return [f.label for f in self.scenario.faults]

    @property
    def n_ticks(self) -> int:
        return -(-self.scenario.duration_ms // self.scenario.step_ms)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    seed: int
    city: CityConfig
    start_ms: int
    duration_ms: int
    step_ms: int
    faults: tuple[Fault, ...]  # explicit and random, absolute times, sorted
    events: tuple[Event, ...]

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms

    def build(self) -> Run:
        city = City(self.city)
        model = SignalModel(city, self.seed, self.events)
        stream = TelemetryStream(city, model, self.faults, self.start_ms, self.step_ms, self.seed)
        return Run(self, city, model, stream)


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    got = data.get(key, {})
    if not isinstance(got, Mapping):
        raise ConfigError(f"{where}: [{key}] must be a table")
    return got


def _table_array(data: Mapping[str, Any], key: str, allowed: set[str],
                 where: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each table of a ``[[key]]`` array, checked for unknown keys, with its place for error messages."""
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: [[{key}]] must be an array of tables")
    for n, t in enumerate(raw):
        w = f"{where} {key}[{n}]"
        if not isinstance(t, Mapping):
            raise ConfigError(f"{w}: must be a table")
        _check_keys(t, allowed, w)
        yield w, t


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def parse_scenario(data: Mapping[str, Any], where: str = "scenario") -> Scenario:
    """Build a :class:`Scenario` from parsed TOML; :class:`ConfigError` on any mistake."""
    _check_keys(data, {"name", "description", "seed", "city", "run", "random_faults", "random_events",
                       "faults", "events"}, where)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"{where}: seed must be a non-negative integer")
    city_t = dict(_table(data, "city", where))
    _check_keys(city_t, {f.name for f in fields(CityConfig)}, f"{where} [city]")
    city_t.setdefault("seed", seed)
    if isinstance(city_t.get("districts"), list):
        city_t["districts"] = tuple(city_t["districts"])
    try:
        city_cfg = CityConfig(**city_t)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} [city]: {exc}") from exc

    run_t = _table(data, "run", where)
    _check_keys(run_t, {"start", "duration", "step"}, f"{where} [run]")
    if "start" not in run_t or "duration" not in run_t:
        raise ConfigError(f"{where} [run]: start and duration are required")
    start_ms = _time_ms(run_t["start"], f"{where} [run] start")
    duration_ms = parse_duration_ms(run_t["duration"], f"{where} [run] duration")
    step_ms = parse_duration_ms(run_t.get("step", "10s"), f"{where} [run] step")
    if duration_ms <= 0 or step_ms <= 0:
        raise ConfigError(f"{where} [run]: duration and step must be > 0")
    end_ms = start_ms + duration_ms
    city = City(city_cfg)

    faults: list[Fault] = []
    for w, ft in _table_array(data, "faults", {"pole", "kind", "metric", "at", "for", "magnitude"}, where):
        try:
            s = start_ms + parse_duration_ms(ft.get("at", 0), f"{w} at")
            f = Fault.make(str(ft["kind"]), str(ft["pole"]), s, s + parse_duration_ms(ft["for"], f"{w} for"),
                           metric=ft.get("metric"),
                           magnitude=None if ft.get("magnitude") is None else float(ft["magnitude"]))
            p = city.pole(f.pole)
        except KeyError as exc:
            raise ConfigError(f"{w}: {exc.args[0] if exc.args else exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{w}: {exc}") from exc
        if f.metric is not None and not p.has(f.metric):
            raise ConfigError(f"{w}: pole {f.pole} has no {f.metric} sensor (kit {p.kit})")
        faults.append(f)
    rf = _table(data, "random_faults", where)
    if rf:
        _check_keys(rf, {"rate", "kinds", "seed"}, f"{where} [random_faults]")
        try:
            faults += random_faults(city, int(rf.get("seed", seed)), start_ms, end_ms,
                                    float(rf.get("rate", 0.2)), rf.get("kinds"))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} [random_faults]: {exc}") from exc
    faults.sort(key=lambda f: (f.start_ms, f.pole, f.kind, f.metric or ""))

    events: list[Event] = []
    for w, et in _table_array(data, "events", {"district", "kind", "at", "for", "magnitude"}, where):
        try:
            s = start_ms + parse_duration_ms(et.get("at", 0), f"{w} at")
            e = Event(str(et["district"]), str(et["kind"]), s, s + parse_duration_ms(et["for"], f"{w} for"),
                      float(et["magnitude"]))
        except KeyError as exc:
            raise ConfigError(f"{w}: missing {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{w}: {exc}") from exc
        if e.district not in city.districts:
            raise ConfigError(f"{w}: unknown district {e.district!r}")
        events.append(e)
    re_t = _table(data, "random_events", where)
    if re_t:
        _check_keys(re_t, {"rate"}, f"{where} [random_events]")
        events += random_events(city, seed, start_ms, end_ms, float(re_t.get("rate", 0.05)))
    events.sort(key=lambda e: (e.start_ms, e.district, e.kind))

    return Scenario(str(data.get("name", where)), str(data.get("description", "")), seed, city_cfg,
                    start_ms, duration_ms, step_ms, tuple(faults), tuple(events))


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file; a bare name (``"safety-drill"``) means a bundled example."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = SCENARIO_DIR / f"{p.name}.toml"
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read scenario {p}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: invalid TOML: {exc}") from exc
    return parse_scenario(data, str(p.name))


def bundled_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.toml"))
