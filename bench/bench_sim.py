"""Message generation speed of the simulator: ``python -m bench.bench_sim``.

Generation only (signals, faults, rendering; no network): a 10k-pole city, one telemetry message per
pole per tick. The baseline, measured in the same run, renders the same messages through pydantic
(``Telemetry(...).model_dump_json()``). Prints
``sim: msgs_s=<n> pydantic_msgs_s=<n> ratio=<x>``.
"""

from __future__ import annotations

import math
import time

from contract.catalog import NAMES
from contract.models import Sample, Telemetry
from simulator.city import City, CityConfig
from simulator.faults import random_faults
from simulator.signals import SignalModel
from simulator.stream import TelemetryStream

START_MS = 1_705_334_400_000


def run(poles: int = 10_000, ticks: int = 10, seed: int = 7) -> dict[str, float]:
    """Rates of both renderings, and what each rendered (``messages``, ``baseline_messages``,
    ``invalid``: fast-path messages the contract refuses; a fast renderer that cut corners shows here)."""
    city = City(CityConfig(seed=seed, poles=poles, districts=8))
    model = SignalModel(city, seed)
    faults = random_faults(city, seed, START_MS, START_MS + 86_400_000, rate=0.5)
    stream = TelemetryStream(city, model, faults, START_MS, 10_000, seed)
    stream.tick()  # warm caches
    n = 0
    rendered: list[bytes] = []
    t0 = time.perf_counter()
    for _ in range(ticks):
        msgs = stream.tick()
        n += len(msgs)
        rendered.append(msgs[n % len(msgs)][1])  # one per tick, checked outside the timed loop
    fast = n / (time.perf_counter() - t0)
    invalid = 0
    for payload in rendered:
        try:
            Telemetry.model_validate_json(payload)
        except ValueError:
            invalid += 1

    # baseline: the same instant's values serialised by pydantic, for a slice of the fleet
    m = 0
    t0 = time.perf_counter()
    for _ in range(max(ticks // 5, 1)):
        t = stream.now_ms
        values = model.sample(t, stream.faults)
        for p in city.poles[: poles // 5]:
            row = {name: float(values[p.index, j]) for j, name in enumerate(NAMES)
                   if not math.isnan(values[p.index, j])}
            msg = Telemetry(pole=p.pole_id, boot=stream.boot(p.index),
                            samples=[Sample(seq=stream.seq[p.index], ts=t, m=row)])
            msg.model_dump_json().encode()
            m += 1
        stream.ticks_done += 1
    slow = m / (time.perf_counter() - t0)
    return {"msgs_s": fast, "pydantic_msgs_s": slow, "ratio": fast / slow, "messages": n,
            "baseline_messages": m, "invalid": invalid}


def main() -> None:
    r = run()
    print(f"sim: msgs_s={r['msgs_s']:.0f} pydantic_msgs_s={r['pydantic_msgs_s']:.0f} ratio={r['ratio']:.1f}")


if __name__ == "__main__":
    main()
