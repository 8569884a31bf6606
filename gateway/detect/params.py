"""The parameters of layer 1 (:mod:`gateway.detect.rules` and its rule families), in one place."""

from __future__ import annotations

from dataclasses import dataclass

from contract.catalog import UNRATED_FLOOR_W
from contract.levels import BASELINE_LEARN_N


@dataclass(frozen=True, slots=True)
class RuleParams:
    dusk_lux: float = 20.0  # below this the lamp should be lit when dimming is not reported
    raise_n: int = 3
    raise_n_safety: int = 2  # warning tiers of the catalog's critical (fast-path) metrics
    #: the mains (voltage_high / voltage_low): a swell or sag beyond 15 % is the event even when it lasts one
    #: 5-minute sample; a sensor that only reads it so is reported as the sensor (engine.sensor_fault)
    raise_n_mains: int = 1
    #: leakage past half the RCD trip level (15 mA) is the event on its first sample: a leak that ramps
    #: within minutes reaches the 30 mA tier before a second 5-minute sample confirms the warning, and a
    #: live sensor's noise (0.3 mA around ~2) never reaches 15
    raise_n_leakage: int = 1
    raise_ms: int = 60_000
    clear_n: int = 3
    tilt_learn_n: int = BASELINE_LEARN_N  # readings whose median becomes the installed tilt baseline
    lamp_on_frac: float = 0.05  # lamp counts as "on" (flicker) above this share of rated power
    # a lamp whose rating nobody declared: judged against the draw it was seen lit at (Rules._rating)
    unrated_floor_w: float = UNRATED_FLOOR_W  # ... never seen lit: judged as the smallest street lamp
    rating_min_dim: float = 20.0  # learnt from lit readings at a known dimming of at least this (%)
    rating_rate: float = 0.02  # each healthy reading moves the learnt rating by this share
    flicker_window_ms: int = 10 * 60_000
    flicker_on: int = 4  # toggles within the window that raise lamp_flicker ...
    flicker_clear: int = 1  # ... and the count at which it clears
    offline_k: float = 3.0  # silent for k x the reporting interval -> offline
    default_interval_ms: float = 60_000.0
    min_silence_ms: float = 30_000.0
    maintenance_slots: int = 4
    mean_cover: float = 0.63  # an averaged rule speaks once its mean covers this share of the weight
    #                           a full history would have (0.63: one averaging period of data)
    mean_max_step_s: float = 3_600.0  # a longer silence counts as this long (no reading rules a gap)
    # stuck sensor: a run of identical readings less likely than exp(-stuck_nats) for this series
    stuck_nats: float = 20.7  # ln(1e9)
    stuck_min_n: int = 6  # never fewer identical readings in a row than this ...
    stuck_max_n: int = 48  # ... nor more (a series needing more repeats itself too often to judge)
    stuck_p_max: float = 0.5  # a series repeating its previous value more often than this is not judged
    # the lamp current's run is judged once the power moved by this many current steps x nominal voltage
    stuck_current_quanta: float = 3.0
    stuck_a_eq: float = 0.002  # EW rate of the repeat rate (slow: it spans day and night regimes)
    stuck_warm: int = 144  # transitions seen before a series is judged
    stuck_warm_safety: int = 12  # ... on a safety channel (its catalog prior is trusted sooner)
    #: the catalog prior counts as this many learned transitions on a safety channel (0 elsewhere: the
    #: first finished run replaces it): a water sensor drifting below its resting 0 reads runs of 0.00 that
    #: would otherwise teach the pole, within hours, that a dead sensor's 0.00 is normal
    stuck_prior_n_safety: int = 144
