"""Publish-to-queryable latency: a poller that stamps when each probe (pole, seq) first shows in InfluxDB."""

from __future__ import annotations

import threading
import time

from ingest.influx1 import Influx1Store


class Poller:
    """Polls last(seq) per probe pole; records when each (pole, seq) first became queryable."""

    def __init__(self, store: Influx1Store, poles: list[str], every_s: float) -> None:
        self.store, self.every_s = store, every_s
        rx = "|".join(poles)
        self.q = f'SELECT last("seq") FROM "telemetry" WHERE "pole" =~ /^({rx})$/ GROUP BY "pole"'
        self.first: dict[str, list[tuple[int, float]]] = {}  # pole -> [(last seq, wall time seen)]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                rows = self.store.rows(self.q)
            except Exception:
                continue
            t = time.time()
            for r in rows:
                hist = self.first.setdefault(r["pole"], [])
                seq = int(r["last"])
                if not hist or seq > hist[-1][0]:
                    hist.append((seq, t))

    def stop(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.store.close()

    def seen_at(self, pole: str, seq: int) -> float | None:
        for s, t in self.first.get(pole, ()):
            if s >= seq:
                return t
        return None


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

