"""The fleet's telemetry as MQTT messages: one Telemetry JSON per live pole per tick (pure, seeded).

``TelemetryStream(city, model, faults, start_ms, step_ms, seed).tick()`` advances device time by one
step and returns ``[(topic, payload), ...]`` in pole order. Payloads are pre-rendered from a string
template per pole (keys in ``contract.models.Telemetry`` field order, no spaces, each value printed
with its metric's catalog ``decimals``), which is both deterministic and fast; the tests check every
payload validates as ``contract.models.Telemetry``.

Delivery faults act here: ``offline`` sends nothing (and the pole comes back with a new boot id; its
seq carries on where it stopped, as the edge contract says: sequence numbers are per pole and persisted,
monotonic across restarts, so the gateway's per-pole dedup never mistakes a rebooted pole's samples
for duplicates), ``dropout`` loses messages at random (seq still advances: the gateway sees the gap),
``clock_skew`` shifts device time, ``duplicate`` delivers a message twice, ``malformed`` and ``hostile``
inject bad messages next to the good one. Counters:

* ``published_samples``: samples the gateway should accept (first delivery only);
* ``expected_rejects``: messages the gateway should refuse (malformed, hostile, skewed too far);
* ``duplicates``: re-deliveries of an accepted sample (duplicates and replays: dedup, not rejects);
* ``dropped``, ``published_messages``, ``out_of_order``.

The same (city, model seed, faults, start, step, seed) gives a byte-identical stream.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from contract.catalog import INDEX, METRICS
from contract.topics import telemetry
from gateway.decode import Limits
from simulator.city import City, boot_id
from simulator.faults import Fault, FaultSet
from simulator.hostile import ACCEPTED_KINDS, HOSTILE_KINDS, hostile_message
from simulator.signals import SignalModel

_DECIMALS = {m.name: m.decimals for m in METRICS}
_HOLD_TICKS = (1, 4)  # an out-of-order message arrives this many ticks late


def _body_template(sensors: Sequence[str]) -> str:
    return ",".join(f'"{name}":%.{_DECIMALS[name]}f' for name in sensors)


class TelemetryStream:
    """Messages of a city, tick by tick, from ``start_ms`` every ``step_ms``."""

    def __init__(self, city: City, model: SignalModel, faults: Sequence[Fault] | FaultSet = (),
                 start_ms: int = 1_705_334_400_000, step_ms: int = 10_000, seed: int = 0, *,
                 limits: Limits = Limits()) -> None:
        if step_ms <= 0:
            raise ValueError("step_ms must be > 0")
        self.city, self.model, self.seed, self.limits = city, model, seed, limits
        self.faults = faults if isinstance(faults, FaultSet) else FaultSet(faults, city)
        self.start_ms, self.step_ms = int(start_ms), int(step_ms)
        self.ticks_done = 0
        self._rng = np.random.default_rng([seed, 0x57EA])
        n = len(city)
        self.topics = [telemetry(p.district, p.pole_id) for p in city.poles]
        self.seq = [0] * n
        self.boot_no = [0] * n
        self._offline: set[int] = set()
        self._bodies = {kit: _body_template(next(p.sensors for p in city.poles if p.kit == kit))
                        for kit in {p.kit for p in city.poles}}
        self._tmpl = [self._template(i) for i in range(n)]
        groups: dict[str, list[int]] = {}
        for p in city.poles:
            groups.setdefault(p.kit, []).append(p.index)
        self._groups = [(np.array(ix, dtype=np.intp), np.array([INDEX[s] for s in city.poles[ix[0]].sensors],
                                                                 dtype=np.intp))
                        for _, ix in sorted(groups.items())]
        hostile_poles = {int(self.faults.pole_index[k]) for k, f in enumerate(self.faults.faults)
                         if f.kind == "hostile"}
        self._history: dict[int, deque[bytes]] = {i: deque(maxlen=16) for i in sorted(hostile_poles)}
        self._held: list[tuple[int, int, str, bytes]] = []  # (release tick, pole, topic, payload)
        self.published_samples = 0
        self.published_messages = 0
        self.expected_rejects = 0
        self.duplicates = 0
        self.dropped = 0
        self.out_of_order = 0

    def _template(self, i: int) -> str:
        p = self.city.poles[i]
        boot = boot_id(self.seed, p.pole_id, self.boot_no[i])
        head = f'{{"v":1,"pole":"{p.pole_id}","boot":"{boot}","samples":[{{"seq":%d,"ts":%d,"m":{{'
        return head + self._bodies[p.kit] + '}}],"evicted":0}'

    def boot(self, pole_index: int) -> str:
        return boot_id(self.seed, self.city.poles[pole_index].pole_id, self.boot_no[pole_index])

    @property
    def now_ms(self) -> int:
        """Device time of the next tick."""
        return self.start_ms + self.ticks_done * self.step_ms

    @property
    def counters(self) -> dict[str, int]:
        return {"published_messages": self.published_messages, "published_samples": self.published_samples,
                "expected_rejects": self.expected_rejects, "duplicates": self.duplicates,
                "dropped": self.dropped, "out_of_order": self.out_of_order}

    def render(self, t_ms: int, values: np.ndarray) -> list[bytes | None]:
        """Payloads of every pole for one instant (pole order), current seq, no delivery faults."""
        out: list[bytes | None] = [None] * len(self.city)
        seq, tmpl = self.seq, self._tmpl
        for idx, cols in self._groups:
            rows = values[np.ix_(idx, cols)].tolist()
            for i, row in zip(idx.tolist(), rows, strict=True):
                out[i] = (tmpl[i] % (seq[i], t_ms, *row)).encode()
        return out

    def tick(self) -> list[tuple[str, bytes]]:
        t = self.now_ms
        k = self.ticks_done
        self.ticks_done += 1
        values = self.model.sample(t, self.faults)
        active = self.faults.active(t, "delivery")
        by_pole: dict[int, list[Fault]] = {}
        for j in active:
            by_pole.setdefault(int(self.faults.pole_index[j]), []).append(self.faults.faults[j])

        # poles back from an outage reboot: new boot id, seq carries on (persisted on the device)
        for i in sorted(self._offline):
            if not any(f.kind == "offline" for f in by_pole.get(i, ())):
                self._offline.discard(i)
                self.boot_no[i] += 1
                self._tmpl[i] = self._template(i)
        for i, fs in by_pole.items():
            if any(f.kind == "offline" for f in fs):
                self._offline.add(i)

        payloads = self.render(t, values)
        out: list[tuple[str, bytes]] = []
        for held in [h for h in self._held if h[0] <= k]:
            self._held.remove(held)
            out.append((held[2], held[3]))
            self.published_samples += 1
        topics = self.topics
        if not by_pole:
            out.extend(zip(topics, payloads, strict=True))  # type: ignore[arg-type]
            self.published_samples += len(payloads)
        else:
            for i, payload in enumerate(payloads):
                pole_faults = by_pole.get(i)
                if pole_faults is None:
                    out.append((topics[i], payload))  # type: ignore[arg-type]
                    self.published_samples += 1
                elif i not in self._offline:
                    self._faulty(i, t, k, pole_faults, values, out)
        for i, hist in self._history.items():
            if i not in by_pole:
                hist.append(payloads[i])  # type: ignore[arg-type]
        offline = self._offline
        self.seq = [s if i in offline else s + 1 for i, s in enumerate(self.seq)] if offline else \
            [s + 1 for s in self.seq]
        self.published_messages += len(out)
        return out

    def _faulty(self, i: int, t: int, k: int, fs: list[Fault], values: np.ndarray,
                out: list[tuple[str, bytes]]) -> None:
        """One pole's message under delivery faults (rng draws in fault-list order: deterministic)."""
        rng, topic = self._rng, self.topics[i]
        skew = sum(int(f.mag) for f in fs if f.kind == "clock_skew")
        for f in fs:
            if f.kind == "dropout" and rng.random() < f.mag:
                self.dropped += 1
                return
        ts = t + skew
        row = values[i, [INDEX[s] for s in self.city.poles[i].sensors]].tolist()
        payload = (self._tmpl[i] % (self.seq[i], ts, *row)).encode()
        rejected = skew > self.limits.max_future_ms or skew < -self.limits.max_past_ms
        extra: list[tuple[str, bytes]] = []
        held = False
        for f in fs:
            if f.kind == "duplicate" and rng.random() < f.mag:
                extra.append((topic, payload))
                if not rejected:
                    self.duplicates += 1
                else:
                    self.expected_rejects += 1
            elif f.kind == "malformed" and rng.random() < f.mag:
                extra.append((topic, _malform(payload, rng)))
                self.expected_rejects += 1
            elif f.kind == "hostile" and rng.random() < f.mag:
                kind = HOSTILE_KINDS[int(rng.integers(len(HOSTILE_KINDS)))]
                if kind == "replay":
                    hist = self._history.get(i)
                    if hist:
                        extra.append((topic, hist[int(rng.integers(len(hist)))]))
                        self.duplicates += 1
                elif kind == "out_of_order":
                    if not held and not rejected:
                        lo, hi = _HOLD_TICKS
                        self._held.append((k + int(rng.integers(lo, hi + 1)), i, topic, payload))
                        self.out_of_order += 1
                        held = True
                else:
                    extra.append(hostile_message(kind, rng, self.city, self.city.poles[i], t))
                    if kind not in ACCEPTED_KINDS:
                        self.expected_rejects += 1
        if not held:
            out.append((topic, payload))
            if rejected:
                self.expected_rejects += 1
            else:
                self.published_samples += 1
                if i in self._history:
                    self._history[i].append(payload)
        out.extend(extra)

    def ticks(self, n: int) -> Iterator[list[tuple[str, bytes]]]:
        for _ in range(n):
            yield self.tick()

    def flush_held(self) -> list[tuple[str, bytes]]:
        """Release out-of-order messages still held back (call at the end of a run)."""
        out = [(h[2], h[3]) for h in self._held]
        self.published_samples += len(out)
        self.published_messages += len(out)
        self._held.clear()
        return out


def _malform(payload: bytes, rng: np.random.Generator) -> bytes:
    """A broken copy of a good payload; every variant is refused by the gateway as a whole."""
    v = int(rng.integers(7))
    if v == 0:
        return payload[: int(rng.integers(1, len(payload) - 1))]  # truncated
    if v == 1:
        return b""
    if v == 2:
        return b"null"
    if v == 3:
        return payload.replace(b'"seq":', b'"seq":"', 1).replace(b',"ts"', b'","ts"', 1)  # seq as text
    if v == 4:
        obj = json.loads(payload)
        del obj["boot"]
        return json.dumps(obj, separators=(",", ":")).encode()
    if v == 5:
        return b"\xff" + rng.bytes(int(rng.integers(8, 64)))
    return payload.replace(b'"v":1', b'"v":1,"v2":true', 1)  # an extra field


def birth_messages(stream: TelemetryStream, ts_ms: int, interval_s: float | None = None, *,
                   unrated: frozenset[str] = frozenset()) -> list[tuple[str, bytes]]:
    """One retained birth Status per pole, carrying what the pole's inventory record says (rated lamp
    power, nominal voltage, installed tilt, sensor kit, location): the safety rules judge against it.
    The poles in ``unrated`` leave ``rated_power_w`` out, as a device whose maker did not declare it."""
    from contract.models import Location, Status
    from contract.topics import status

    out = []
    for i, p in enumerate(stream.city.poles):
        st = Status(pole=p.pole_id, district=p.district, state="birth", ts=ts_ms, boot=stream.boot(i),
                    agent_version="sim", sensors=p.sensors, location=Location(lat=p.lat, lon=p.lon),
                    interval_s=interval_s or stream.step_ms / 1000,
                    rated_power_w=None if p.pole_id in unrated else p.rated_power_w,
                    nominal_voltage_v=p.nominal_voltage_v, tilt_baseline_deg=p.tilt_baseline_deg)
        out.append((status(p.district, p.pole_id), st.model_dump_json(exclude_none=True).encode()))
    return out
