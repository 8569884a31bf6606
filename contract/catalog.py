"""The metric catalog: every sensor metric lampwatch knows, declared once.

Validation (gateway), detection defaults (gateway.detect), the simulator's signal models,
line-protocol field names (ingest) and Grafana panels are all derived from this table.
Adding a sensor is one entry in ``METRICS`` below, nothing else.

Thresholds come from published references where one exists:

* residual-current devices (RCD, IEC 61008 / 30 mA class) trip at 30 mA of leakage;
* lamp fault when power < 80 % of rated while the lamp should be on;
* supply voltage alarm at +/-15 % of nominal (EN 50160 allows +/-10 % for 95 % of the week;
  +/-15 % is the hard band most driver datasheets give);
* power factor < 0.65 while on (typical minimum in LED-driver tender specs);
* WHO 2021 air-quality guidelines: PM2.5 15 ug/m3 (24 h; interim target 1 is 75),
  PM10 45 ug/m3 (24 h), NO2 25 ug/m3 (24 h). They are 24-hour means, so these thresholds carry
  ``mean_over_s=86_400``: the rule compares the pole's running 24-hour mean, never a single reading
  (rush-hour peaks above the guideline are normal), and reports it as ``info`` or ``warning``
  (context for operators), never as a safety alarm.
* Tilt has no published standard for lamp poles, so it is judged against each pole's own installed
  baseline (``relative_to="baseline"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

Severity = Literal["info", "warning", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
Dtype = Literal["float", "bool"]
RelativeTo = Literal["absolute", "nominal", "rated", "baseline"]
Op = Literal[">=", "<="]
Shape = Literal["constant", "noise", "diurnal", "lamp", "rush_hour", "binary", "slow_walk"]


@dataclass(frozen=True, slots=True)
class Threshold:
    """One safety rule on one metric.

    ``value`` is compared with the reading directly (``absolute``), or as a factor of the pole's
    nominal supply voltage / rated lamp power (``nominal``/``rated``), or as an offset from the pole's
    own learned baseline (``baseline``). ``clear`` is the hysteresis level at which a raised alarm
    clears (same units as ``value``); ``lamp_on`` restricts the rule to when the lamp should be lit.

    ``mean_over_s`` is the averaging period of a threshold defined on a mean (the WHO air-quality
    guidelines are 24-hour means: ``86_400``). The rule then compares a per-pole, time-weighted running
    mean of the reading over that period (an exponentially weighted mean with that time constant),
    and only once the pole has reported for long enough to have one; ``None`` compares every reading.
    The tiers of one rule share the same averaging period.
    """

    kind: str
    op: Op
    value: float
    severity: Severity
    clear: float
    explain: str
    relative_to: RelativeTo = "absolute"
    lamp_on: bool = False
    mean_over_s: float | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.mean_over_s is not None and not (math.isfinite(self.mean_over_s) and self.mean_over_s > 0):
            raise ValueError(f"{self.kind}: mean_over_s must be a positive number of seconds")
        # hysteresis must sit on the safe side of the trigger level
        if self.op == ">=" and not self.clear <= self.value:
            raise ValueError(f"{self.kind}: clear level must be <= trigger for '>='")
        if self.op == "<=" and not self.clear >= self.value:
            raise ValueError(f"{self.kind}: clear level must be >= trigger for '<='")


@dataclass(frozen=True, slots=True)
class Signal:
    """Hints for the simulator's signal model (typical level, noise and shape)."""

    shape: Shape
    base: float
    noise: float = 0.0
    amplitude: float = 0.0


class Bounds(NamedTuple):
    """A metric's valid values: ``lo..hi`` inclusive (both finite), and only 0 or 1 for a bool; ``unit``
    names them in a refusal. The decoder's hot loop looks these up in :data:`RANGES`."""

    lo: float
    hi: float
    is_bool: bool
    unit: str


def admits(b: Bounds, value: float) -> bool:
    """The one range check: ``value`` is a valid reading for bounds ``b`` (NaN and infinities never are:
    the bounds are finite). ``Metric.in_range`` and ``gateway.decode`` both call this."""
    return b[0] <= value <= b[1] and (not b[2] or value == 0.0 or value == 1.0)


@dataclass(frozen=True, slots=True)
class Detect:
    """Which of the gateway's detection layers judge the metric (production detection reads these; the
    simulator's :class:`Signal` hints are for the simulator only).

    * ``peers``: smooth at district scale, so one pole is judged against its district at the same moment
      (``sensor_suspect``) and the district against its own usual hour (``district_event``);
    * ``drift``: pole-to-pole differences are stable, so a sensor walking away from its usual place among
      its peers is ``sensor_drift``;
    * ``physics``: that drift is judged on what physics says the reading should be (the cabinet over its
      ambient, the lamp against rated x dimming), not on the raw reading;
    * ``while_lit``: judged only while the lamp is lit (the lamp's own readings, the light under it);
    * ``schedule``: the reading follows the lamp schedule or the sun (dusk and dawn are steps), so the
      per-series streaming detector does not score it (the rules judge the lamp against expectation);
    * ``stuck``: a live sensor wavers, so an unchanged reading for too long is ``sensor_stuck``.
    """

    peers: bool = False
    drift: bool = False
    physics: bool = False
    while_lit: bool = False
    schedule: bool = False
    stuck: bool = False

    def __post_init__(self) -> None:
        if (self.physics or self.while_lit) and not self.drift:
            raise ValueError("physics / while_lit qualify the drift judgement: they need drift=True")


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    description: str
    lo: float  # valid physical range, inclusive; values outside are rejected
    hi: float
    signal: Signal
    group: str
    dtype: Dtype = "float"
    thresholds: tuple[Threshold, ...] = field(default_factory=tuple)
    critical: bool = False  # safety fast path on the edge: sampled often, published at once
    decimals: int = 2  # precision the simulator and dashboards use
    detect: Detect = Detect()  # which detection layers judge it

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)):
            raise ValueError(f"{self.name}: the valid range must be finite")
        if not self.lo < self.hi:
            raise ValueError(f"{self.name}: empty valid range")
        if self.dtype == "bool" and (self.lo, self.hi) != (0.0, 1.0):
            raise ValueError(f"{self.name}: a bool metric has range 0..1")
        d = self.detect
        if self.dtype != "float" and (d.peers or d.drift or d.stuck):
            raise ValueError(f"{self.name}: peers, drift and stuck judge float metrics only")
        if d.stuck and not self.signal.noise > 0:
            raise ValueError(f"{self.name}: a stuck candidate needs sensor noise > 0")

    @property
    def noise(self) -> float:
        """The sensor's noise (one standard deviation, in the metric's unit): detection's scale floors and
        stuck prior; the simulator draws its noise from the same figure (declared in ``signal``)."""
        return self.signal.noise

    @property
    def safety_channel(self) -> bool:
        """A float safety sensor a threshold judges (leakage, tilt, water level, cabinet temperature): a
        failed one blinds a safety rule, so its health is judged even where other sensors' is not."""
        return self.group == "safety" and self.dtype == "float" and bool(self.thresholds)

    @property
    def bounds(self) -> Bounds:
        return Bounds(self.lo, self.hi, self.dtype == "bool", self.unit)

    def in_range(self, value: float) -> bool:
        return admits(self.bounds, value)


T = Threshold
S = Signal
D = Detect
#: Detection presets: air and weather (district peers, drift, stuck), a stable local float (drift, stuck),
#: a lamp reading that follows the schedule (stuck only; drift through physics where noted).
D_AIR = D(peers=True, drift=True, stuck=True)
D_STABLE = D(drift=True, stuck=True)
DAY_S = 86_400.0  # averaging period of the WHO 24-hour guidelines

#: Every sensor metric, in dashboard order. Names carry their unit.
METRICS: tuple[Metric, ...] = (
    # --- lamp and driver -------------------------------------------------------------------
    Metric("lamp_power_w", "W", "LED driver input power", 0, 2000, S("lamp", 120, 1.0), "lamp",
           detect=D(drift=True, physics=True, while_lit=True, schedule=True, stuck=True),
           thresholds=(T("lamp_failure", "<=", 0.8, "warning", 0.85, "lamp draws under 80 % of its "
                         "rated power while it should be lit", relative_to="rated", lamp_on=True),)),
    Metric("supply_voltage_v", "V", "mains supply voltage at the pole", 0, 500, S("noise", 230, 1.5),
           "lamp", detect=D_STABLE,
           thresholds=(
               T("voltage_high", ">=", 1.15, "warning", 1.12, "supply voltage more than 15 % above "
                 "nominal", relative_to="nominal"),
               T("voltage_low", "<=", 0.85, "warning", 0.88, "supply voltage more than 15 % below "
                 "nominal", relative_to="nominal"),
           )),
    Metric("lamp_current_a", "A", "LED driver input current", 0, 20, S("lamp", 0.55, 0.01), "lamp",
           detect=D(drift=True, physics=True, while_lit=True, schedule=True, stuck=True)),
    Metric("power_factor", "", "driver power factor (0..1)", 0, 1, S("lamp", 0.95, 0.005), "lamp",
           decimals=3, detect=D(drift=True, schedule=True, stuck=True),
           thresholds=(T("power_factor_low", "<=", 0.65, "warning", 0.7, "power factor below 0.65 "
                         "while lit: driver degrading", lamp_on=True),)),
    Metric("dimming_pct", "%", "commanded dimming level", 0, 100, S("lamp", 100, 0.0), "lamp",
           decimals=0, detect=D(schedule=True)),
    # --- electrical safety and structure -----------------------------------------------------
    Metric("leakage_current_ma", "mA", "residual (leakage) current to earth", 0, 5000,
           S("noise", 2.0, 0.3), "safety", critical=True, detect=D_STABLE,
           thresholds=(
               T("leakage", ">=", 15.0, "warning", 12.0, "leakage current past half the 30 mA "
                 "RCD trip level"),
               T("leakage", ">=", 30.0, "critical", 25.0, "leakage current at or past the 30 mA "
                 "RCD trip level: shock risk"),
           )),
    Metric("tilt_deg", "deg", "pole inclination from vertical", 0, 90, S("slow_walk", 0.5, 0.02),
           "safety", critical=True, detect=D(stuck=True),  # tilt drift reads as a lean: detect.trend's
           thresholds=(
               T("tilt", ">=", 2.0, "warning", 1.5, "pole leans 2 degrees or more beyond its "
                 "installed baseline", relative_to="baseline"),
               T("tilt", ">=", 5.0, "critical", 4.0, "pole leans 5 degrees or more beyond its "
                 "installed baseline: fall risk", relative_to="baseline"),
           )),
    Metric("vibration_g", "g", "peak vibration", 0, 16, S("noise", 0.02, 0.01), "safety", decimals=3,
           detect=D_STABLE),
    Metric("water_level_cm", "cm", "water level in the base cabinet", 0, 200, S("constant", 0, 0.05),
           "safety", critical=True, detect=D_STABLE,
           thresholds=(
               T("flood", ">=", 5.0, "warning", 3.0, "water is rising in the base cabinet"),
               T("flood", ">=", 15.0, "critical", 12.0, "base cabinet flooded: live parts under water"),
           )),
    Metric("cabinet_temp_c", "degC", "equipment cabinet temperature", -50, 150, S("diurnal", 25, 0.3, 6),
           "safety", detect=D(drift=True, physics=True, stuck=True),
           thresholds=(
               T("overheat", ">=", 60.0, "warning", 55.0, "cabinet above 60 degC"),
               T("overheat", ">=", 75.0, "critical", 70.0, "cabinet above 75 degC: equipment at risk"),
           )),
    Metric("smoke", "", "cabinet smoke detector (1 = smoke)", 0, 1, S("binary", 0), "safety",
           dtype="bool", critical=True, decimals=0,
           thresholds=(T("smoke", ">=", 1.0, "critical", 0.0, "smoke detected in the cabinet"),)),
    Metric("door_open", "", "cabinet door contact (1 = open)", 0, 1, S("binary", 0), "safety",
           dtype="bool", critical=True, decimals=0,
           thresholds=(T("door_open", ">=", 1.0, "warning", 0.0, "cabinet door open outside a "
                         "maintenance window"),)),
    # --- environment -------------------------------------------------------------------------
    Metric("ambient_temp_c", "degC", "outdoor air temperature", -60, 70, S("diurnal", 12, 0.2, 5),
           "environment", detect=D_AIR),
    Metric("humidity_pct", "%", "relative humidity", 0, 100, S("diurnal", 65, 1.0, -12), "environment",
           decimals=1, detect=D_AIR),
    Metric("pm25_ugm3", "ug/m3", "fine particulate matter PM2.5", 0, 2000, S("rush_hour", 9, 1.5, 6),
           "environment", decimals=1, detect=D_AIR,
           thresholds=(
               T("pm25_high", ">=", 15.0, "info", 12.0, "PM2.5 24-hour mean above the WHO 2021 guideline",
                 mean_over_s=DAY_S),
               T("pm25_high", ">=", 75.0, "warning", 60.0, "PM2.5 24-hour mean above WHO interim target 1",
                 mean_over_s=DAY_S),
           )),
    Metric("pm10_ugm3", "ug/m3", "coarse particulate matter PM10", 0, 3000, S("rush_hour", 18, 2.5, 10),
           "environment", decimals=1, detect=D_AIR,
           thresholds=(T("pm10_high", ">=", 45.0, "info", 40.0, "PM10 24-hour mean above the WHO 2021 "
                         "guideline", mean_over_s=DAY_S),)),
    Metric("no2_ugm3", "ug/m3", "nitrogen dioxide", 0, 2000, S("rush_hour", 14, 2.0, 12), "environment",
           decimals=1, detect=D_AIR,
           thresholds=(T("no2_high", ">=", 25.0, "info", 22.0, "NO2 24-hour mean above the WHO 2021 "
                         "guideline", mean_over_s=DAY_S),)),
    Metric("noise_db", "dB(A)", "sound pressure level", 0, 160, S("rush_hour", 55, 2.0, 12),
           "environment", decimals=1, detect=D_STABLE),  # local by nature: no district peers
    Metric("illuminance_lux", "lx", "ambient light at the luminaire", 0, 200000, S("diurnal", 0, 1, 0),
           "environment", decimals=1,
           detect=D(drift=True, physics=True, while_lit=True, schedule=True, stuck=True)),
    # --- 5G small cell -------------------------------------------------------------------------
    Metric("radio_tx_power_dbm", "dBm", "5G radio transmit power", -50, 60, S("noise", 30, 0.3),
           "radio", decimals=1, detect=D_STABLE),
    Metric("backhaul_up", "", "5G backhaul link state (1 = up)", 0, 1, S("binary", 1), "radio",
           dtype="bool", decimals=0,
           thresholds=(T("backhaul_down", "<=", 0.0, "warning", 1.0, "5G backhaul link down"),)),
)

BY_NAME: Mapping[str, Metric] = {m.name: m for m in METRICS}
NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
INDEX: Mapping[str, int] = {m.name: i for i, m in enumerate(METRICS)}
CRITICAL: tuple[str, ...] = tuple(m.name for m in METRICS if m.critical)
#: name -> valid values, for :func:`admits` (the decoder's table: one lookup per value).
RANGES: Mapping[str, Bounds] = {m.name: m.bounds for m in METRICS}

# --- detection membership, derived from the ``detect`` hints -----------------------------------------
#: Judged against the district at the same moment (sensor_suspect) and as a district (district_event).
PEER_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.detect.peers)
#: Judged for drift among the district's peers. The physics channels come last: their references (the
#: ambient temperature under the cabinet) are judged first in one evaluation.
DRIFT_METRICS: tuple[str, ...] = (tuple(m.name for m in METRICS if m.detect.drift and not m.detect.physics)
                                  + tuple(m.name for m in METRICS if m.detect.physics))
#: Drift judged through physics rather than on the raw reading.
PHYSICS_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if m.detect.physics)
#: Safety channels judged for drift (both ways: reading low hides the hazard, high is a false one).
SAFETY_DRIFT_METRICS: tuple[str, ...] = tuple(n for n in DRIFT_METRICS if BY_NAME[n].safety_channel)
#: Drift channels judged only while the lamp is lit.
LIT_DRIFT_METRICS: tuple[str, ...] = tuple(n for n in DRIFT_METRICS if BY_NAME[n].detect.while_lit)
#: Readings that follow the lamp schedule or the sun.
SCHEDULE_DRIVEN: tuple[str, ...] = tuple(m.name for m in METRICS if m.detect.schedule)
#: Scored by the per-series streaming detector: every float metric not driven by the schedule.
STREAMED: tuple[str, ...] = tuple(m.name for m in METRICS if m.dtype == "float" and not m.detect.schedule)
#: Judged by the stuck-sensor rule.
STUCK_CANDIDATES: tuple[str, ...] = tuple(m.name for m in METRICS if m.detect.stuck)


def repeat_prior(m: Metric) -> float:
    """P(two successive readings of a live sensor are identical): its noise rounded to ``decimals``."""
    q = 10.0 ** -m.decimals
    return float(min(q / (m.noise * math.sqrt(math.pi)), 0.99)) if m.noise > 0 else 0.99

#: Nominal supply voltage and rated lamp power when a pole does not say otherwise.
DEFAULT_NOMINAL_VOLTAGE_V = 230.0
DEFAULT_RATED_POWER_W = 120.0
#: A lamp whose rating nobody declared and that was never seen lit is judged as this, the smallest street
#: lamp: it is called failed (dark) only below 80 % of it. Once seen lit, its own draw is its rating
#: (gateway.detect.rules.Rules._rating; ingest.opendata.aggregate).
UNRATED_FLOOR_W = 10.0


def metric(name: str) -> Metric:
    """Look a metric up by name; ``KeyError`` names the unknown metric."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}") from None


def _check_catalog() -> None:
    if len(BY_NAME) != len(METRICS):
        raise ValueError("duplicate metric name in the catalog")
    for m in METRICS:
        if not m.name.replace("_", "").isalnum() or not m.name[0].isalpha():
            raise ValueError(f"metric name {m.name!r} is not a plain identifier")


_check_catalog()
