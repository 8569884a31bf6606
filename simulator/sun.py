"""Where the sun stands: the one astronomical fact the signals (lamps on at dusk) and the fault
planner (night-only faults) both need. A module of its own so that neither imports the other for it."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np


def sun_elevation_deg(t_ms: int, lat: float | np.ndarray, lon: float | np.ndarray) -> np.ndarray:
    """Solar elevation (degrees) at UTC time ``t_ms`` (NOAA's low-precision formulas, ~0.5 deg)."""
    dt = datetime.fromtimestamp(t_ms / 1000.0, tz=UTC)
    minutes = dt.hour * 60 + dt.minute + dt.second / 60.0 + dt.microsecond / 6e7
    year_days = 366 if dt.year % 4 == 0 and (dt.year % 100 != 0 or dt.year % 400 == 0) else 365
    g = 2 * math.pi / year_days * (dt.timetuple().tm_yday - 1 + (minutes / 60.0 - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                       - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g) - 0.006758 * math.cos(2 * g)
            + 0.000907 * math.sin(2 * g) - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    tst = minutes + eqtime + 4.0 * np.asarray(lon, dtype=float)
    ha = np.radians(tst / 4.0 - 180.0)
    la = np.radians(np.asarray(lat, dtype=float))
    cz = np.sin(la) * math.sin(decl) + np.cos(la) * math.cos(decl) * np.cos(ha)
    return np.asarray(90.0 - np.degrees(np.arccos(np.clip(cz, -1.0, 1.0))))
