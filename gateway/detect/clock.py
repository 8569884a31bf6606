"""A pole that talks but whose clock is off: its messages arrive and are refused for their device time.

The decoder refuses a sample stamped too far ahead of the gateway clock (``ts_future``) or too far
back (``ts_past``). Such a pole is not silent: calling it ``pole_offline`` would send a crew to a
working pole with the wrong question. Instead every refused sample is proof of life (the silence
check counts it as heard) and, after three refused samples in a row (or ten minutes of them) with none
accepted in between, raises a ``ts_future`` / ``ts_past`` warning on the pole (key
``clock_skew.<reason>``); the first sample the gateway accepts from the pole clears it.

Pure: :meth:`ClockRule.refused` takes (row, reason, arrival) triples and returns conditions;
:meth:`ClockRule.accepted` the rows of accepted readings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.detect.types import AlarmSpec, Conditions, Tier

CLOCK_REASONS = ("ts_future", "ts_past")
RAISE_MS = 10 * 60_000  # ... or refused for this long without an accepted sample


def clock_specs() -> tuple[AlarmSpec, ...]:
    return tuple(
        AlarmSpec(f"clock_skew.{reason}", reason, None,
                  (Tier("warning", "pole's clock is off: its readings arrive but are refused for their device "
                                   f"time ({'ahead of' if reason == 'ts_future' else 'far behind'} the gateway)",
                        ),),
                  # refused samples in a row (an accepted one in between starts again): one stray
                  # message with a wild time (a hostile payload) is the decoder's business, not the clock's
                  raise_n=3, raise_ms=RAISE_MS, clear_n=1, unit="", decimals=0)
        for reason in CLOCK_REASONS)


class ClockRule:
    """Conditions for :func:`clock_specs` (spec ``j`` = ``CLOCK_REASONS[j]``)."""

    def __init__(self) -> None:
        self.specs = clock_specs()
        self._skewed: set[int] = set()  # rows refused since their last accepted reading

    def refused(self, rows: Sequence[int], reasons: Sequence[str], ts_ms: int) -> Conditions:
        keep = [(r, CLOCK_REASONS.index(x)) for r, x in zip(rows, reasons, strict=True) if x in CLOCK_REASONS]
        if not keep:
            return Conditions.empty()
        self._skewed.update(k[0] for k in keep)
        r = np.array([k[0] for k in keep], np.int64)
        j = np.array([k[1] for k in keep], np.int64)
        one = np.ones(len(r), np.int8)
        nan = np.full(len(r), np.nan)
        return Conditions(r, j, one, one.copy(), nan, nan.copy(), np.ones(len(r)), np.full(len(r), ts_ms, np.int64))

    def accepted(self, rows: np.ndarray, ts: np.ndarray) -> Conditions:
        """An accepted reading clears both clock conditions of its pole (only poles refused before)."""
        if not self._skewed or len(rows) == 0:
            return Conditions.empty()
        sel = np.isin(rows, np.fromiter(self._skewed, np.int64))
        rows, ts = np.asarray(rows, np.int64)[sel], np.asarray(ts, np.int64)[sel]
        if len(rows) == 0:
            return Conditions.empty()
        self._skewed.difference_update(rows.tolist())
        k = len(CLOCK_REASONS)
        r = np.repeat(rows, k)
        j = np.tile(np.arange(k, dtype=np.int64), len(rows))
        z = np.zeros(len(r), np.int8)
        nan = np.full(len(r), np.nan)
        return Conditions(r, j, z, z.copy(), nan, nan.copy(), np.zeros(len(r)), np.repeat(np.asarray(ts, np.int64), k))
