"""Hostile and broken telemetry traffic, for drills and for the gateway's decoder tests.

``hostile_messages(rng, n, city)`` returns ``n`` (topic, payload, kind) triples, cycling through
``HOSTILE_KINDS`` so that any ``n >= len(HOSTILE_KINDS)`` covers every kind. Every topic is a valid
MQTT *publish* topic (non-empty UTF-8, no ``+``/``#`` wildcard, no NUL or control character): the
attacks live inside topic levels and payloads, where a broker would deliver them.

Every kind is refused by ``gateway.decode.decode_telemetry`` as a whole (no reading survives) except
those in ``ACCEPTED_KINDS``: a replay is a valid message with an old seq (a duplicate for the dedup
stage, not a reject) and an out-of-order message is valid but older than what the pole sent since.

``now_ms`` is the device time the traffic pretends to be sent at; ``clock_ms`` is the receiving
gateway's clock (default: the same). A simulated city often runs behind the wall clock (a demo starts a
day back), and a "future" timestamp must be ahead of the *gateway's* clock, or it is a valid reading
that the dedup stage counts as a duplicate: one demo lost a message to exactly that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

import numpy as np
import paho.mqtt.client as mqtt

from contract.models import TS_MAX_MS
from contract.topics import ROOT, filter_for, telemetry
from simulator.city import City, PoleSpec, boot_id

MAX_PAYLOAD_BYTES = 256 * 1024
_TELEMETRY_FILTER = filter_for("telemetry")
DEFAULT_NOW_MS = 1_705_334_400_000  # 2024-01-15T16:00:00Z

HOSTILE_KINDS: tuple[str, ...] = (
    "wrong_type", "huge", "deep_nesting", "nan_inf", "bad_utf8", "injection_payload",
    "injection_topic", "out_of_range", "unknown_metric", "pole_mismatch", "future_ts", "stale_ts",
    "replay", "out_of_order",
)
ACCEPTED_KINDS: frozenset[str] = frozenset({"replay", "out_of_order"})
#: The reject reasons the gateway should give for each refused kind.
EXPECTED_REASONS: dict[str, frozenset[str]] = {
    "wrong_type": frozenset({"bad_schema"}),
    "huge": frozenset({"too_large"}),
    "deep_nesting": frozenset({"bad_json"}),
    "nan_inf": frozenset({"bad_json", "bad_schema"}),
    "bad_utf8": frozenset({"bad_utf8"}),
    "injection_payload": frozenset({"bad_schema"}),
    "injection_topic": frozenset({"bad_topic"}),
    "out_of_range": frozenset({"out_of_range", "no_valid_values"}),
    "unknown_metric": frozenset({"unknown_metric", "no_valid_values"}),
    "pole_mismatch": frozenset({"pole_mismatch"}),
    "future_ts": frozenset({"ts_future", "bad_schema"}),
    "stale_ts": frozenset({"ts_past", "bad_schema"}),
}

# ids and values that try to break out of a topic level, a tag or a line-protocol line
INJECTIONS: tuple[str, ...] = (
    "p-1+", "p-#", "p-1,district=evil", "p-1=1", "p 1", 'p-1"', "p-1\nevil,x=1 value=1 1",
    "p-1\\", "P-UPPER", "../etc", "p-1 value=1i", "'p-1'", "p-1\r\n", "p-1\tx", "",
)
TOPIC_INJECTIONS: tuple[str, ...] = (
    "p-1,district=evil", "p-1=1", "p 1", 'p-1"', "p-1\\", "P-UPPER", "..", "_sys", "p-1 value=1i",
    "'p-1'", "p-" + "x" * 80, "ünïcode",
)


def is_valid_publish_topic(topic: str) -> bool:
    """MQTT 3.1.1/5 rules for a PUBLISH topic name (plus: no control characters at all)."""
    if not topic or len(topic.encode("utf-8", "surrogatepass")) > 65_535:
        return False
    if "+" in topic or "#" in topic:
        return False
    return not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF
                   for ch in topic)


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _msg(pole: str, boot: str, seq: int, ts: int, m: dict[str, object], **extra: object) -> dict[str, object]:
    return {"v": 1, "pole": pole, "boot": boot, "samples": [{"seq": seq, "ts": ts, "m": m}],
            "evicted": 0, **extra}


def _ok_values(rng: np.random.Generator) -> dict[str, object]:
    return {"leakage_current_ma": round(float(rng.uniform(1.0, 4.0)), 2),
            "tilt_deg": round(float(rng.uniform(0.1, 1.0)), 2)}


_Maker = Callable[[np.random.Generator, City, PoleSpec, int], tuple[str, bytes]]


def _wrong_type(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    b = boot_id(city.config.seed, p.pole_id)
    ok = _ok_values(rng)
    variants: list[object] = [
        _msg(p.pole_id, b, "7", now, ok),  # type: ignore[arg-type]
        _msg(p.pole_id, b, 7, now + 0.5, ok),  # type: ignore[arg-type]
        _msg(p.pole_id, b, 7, now, {"leakage_current_ma": "2.5"}),
        _msg(p.pole_id, b, 7, now, {"smoke": True}),
        _msg(p.pole_id, b, 7, now, {"leakage_current_ma": None}),
        _msg(p.pole_id, b, 7, now, {"leakage_current_ma": [2.5]}),
        _msg(p.pole_id, b, 7, now, {}),
        _msg(p.pole_id, b, -1, now, ok),
        {"v": 1, "pole": p.pole_id, "boot": b, "samples": {"seq": 1, "ts": now, "m": ok}},
        {"v": 1, "pole": p.pole_id, "boot": b, "samples": []},
        {**_msg(p.pole_id, b, 7, now, ok), "v": 2},
        {**_msg(p.pole_id, b, 7, now, ok), "pole": 123},
        {**_msg(p.pole_id, b, 7, now, ok), "extra_field": 1},
        [_msg(p.pole_id, b, 7, now, ok)],
        None,
        "telemetry",
    ]
    return telemetry(p.district, p.pole_id), _dumps(variants[int(rng.integers(len(variants)))])


def _huge(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    b = boot_id(city.config.seed, p.pole_id)
    size = MAX_PAYLOAD_BYTES + int(rng.integers(1, 64 * 1024))
    if rng.random() < 0.5:  # a valid-looking message stuffed with samples
        s = {"seq": 1, "ts": now, "m": {"leakage_current_ma": 2.0}}
        n = size // len(_dumps(s)) + 1
        body = {"v": 1, "pole": p.pole_id, "boot": b, "samples": [dict(s, seq=i) for i in range(n)]}
        return telemetry(p.district, p.pole_id), _dumps(body)
    return telemetry(p.district, p.pole_id), b'{"v":1,"pad":"' + b"A" * size + b'"}'


def _deep(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    depth = int(rng.integers(5_000, 40_000))  # far past any parser limit, still under 256 KiB
    opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
    head = f'{{"v":1,"pole":"{p.pole_id}","boot":"b","samples":'.encode()
    return telemetry(p.district, p.pole_id), head + opener * depth + b"1" + closer * depth + b"}"


def _nan_inf(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    lit = ("NaN", "Infinity", "-Infinity", "nan", "inf", "1e999", "-1e999")[int(rng.integers(7))]
    b = boot_id(city.config.seed, p.pole_id)
    text = (f'{{"v":1,"pole":"{p.pole_id}","boot":"{b}","samples":[{{"seq":1,"ts":{now},'
            f'"m":{{"leakage_current_ma":{lit}}}}}],"evicted":0}}')
    return telemetry(p.district, p.pole_id), text.encode()


def _bad_utf8(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    junk = (b"\xff\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf8\x88\x80\x80\x80",
            b"p-1\xe2\x82")[int(rng.integers(6))]
    good = _dumps(_msg(p.pole_id, "BOOTX", 1, now, _ok_values(rng)))
    return telemetry(p.district, p.pole_id), good.replace(b"BOOTX", junk, 1)


def _injection_payload(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    inj = INJECTIONS[int(rng.integers(len(INJECTIONS)))]
    b = boot_id(city.config.seed, p.pole_id)
    where = int(rng.integers(4))
    if where == 0:
        body = _msg(inj, b, 1, now, _ok_values(rng))
    elif where == 1:
        bad_boot = inj if re.fullmatch(r"[A-Za-z0-9-]{1,64}", inj) is None else inj + ",x=1"
        body = _msg(p.pole_id, bad_boot, 1, now, _ok_values(rng))
    elif where == 2:
        body = _msg(p.pole_id, b, 1, now, {f"leakage_current_ma{inj or ','}": 1.0})
    else:
        body = _msg(p.pole_id, b, 1, now, {"leakage_current_ma": f"1{inj}"})
    return telemetry(p.district, p.pole_id), _dumps(body)


def _injection_topic(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    inj = TOPIC_INJECTIONS[int(rng.integers(len(TOPIC_INJECTIONS)))]
    body = _dumps(_msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 1, now, _ok_values(rng)))
    variant = int(rng.integers(4))
    if variant == 0:
        topic = f"{ROOT}/{p.district}/{inj}/telemetry"
    elif variant == 1:
        topic = f"{ROOT}/{inj}/{p.pole_id}/telemetry"
    elif variant == 2:
        topic = f"{ROOT}/{p.district}/{p.pole_id}/telemetry/{inj or 'x'}"
    else:
        topic = f"lampwatch/v2/{p.district}/{p.pole_id}/telemetry"
    return topic, body


def _out_of_range(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    bad = {"leakage_current_ma": -1.0, "tilt_deg": 120.0, "humidity_pct": 150.0, "smoke": 0.5,
           "power_factor": 1.5, "supply_voltage_v": 9999.0, "ambient_temp_c": -273.2,
           "noise_db": 1e12, "door_open": 2.0}
    keys = sorted(bad)
    pick = rng.choice(len(keys), size=int(rng.integers(1, 4)), replace=False)
    m: dict[str, object] = {keys[int(i)]: bad[keys[int(i)]] for i in sorted(pick)}
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 1, now, m)
    return telemetry(p.district, p.pole_id), _dumps(body)


def _unknown_metric(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    name = ("flux_capacitor_gw", "leakage_current_ua", "tilt", "x", "smoke2")[int(rng.integers(5))]
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 1, now, {name: 1.21})
    return telemetry(p.district, p.pole_id), _dumps(body)


def _pole_mismatch(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    other = f"p-{(p.index + 1 + int(rng.integers(1000))) % 1_000_000:06d}"
    other = other if other != p.pole_id else "p-999999x"
    body = _msg(other, boot_id(city.config.seed, other), 1, now, _ok_values(rng))
    return telemetry(p.district, p.pole_id), _dumps(body)


def _future_ts(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    ts = (now + int(rng.integers(6 * 60_000, 365 * 86_400_000)) if rng.random() < 0.8
          else TS_MAX_MS + 1)
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 1, ts, _ok_values(rng))
    return telemetry(p.district, p.pole_id), _dumps(body)


def _stale_ts(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    ts = now - int(rng.integers(31 * 86_400_000, 900 * 86_400_000)) if rng.random() < 0.8 else 0
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 1, ts, _ok_values(rng))
    return telemetry(p.district, p.pole_id), _dumps(body)


def _replay(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    seq = int(rng.integers(0, 50))
    ts = now - int(rng.integers(60_000, 3_600_000))
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), seq, ts, _ok_values(rng))
    return telemetry(p.district, p.pole_id), _dumps(body)


def _out_of_order(rng: np.random.Generator, city: City, p: PoleSpec, now: int) -> tuple[str, bytes]:
    lag = int(rng.integers(1, 10))
    body = _msg(p.pole_id, boot_id(city.config.seed, p.pole_id), 100 - lag, now - lag * 10_000,
                _ok_values(rng))
    return telemetry(p.district, p.pole_id), _dumps(body)


MAKERS: dict[str, _Maker] = {
    "wrong_type": _wrong_type, "huge": _huge, "deep_nesting": _deep, "nan_inf": _nan_inf,
    "bad_utf8": _bad_utf8, "injection_payload": _injection_payload,
    "injection_topic": _injection_topic, "out_of_range": _out_of_range,
    "unknown_metric": _unknown_metric, "pole_mismatch": _pole_mismatch, "future_ts": _future_ts,
    "stale_ts": _stale_ts, "replay": _replay, "out_of_order": _out_of_order,
}
if set(MAKERS) != set(HOSTILE_KINDS):  # pragma: no cover
    raise RuntimeError("every hostile kind needs a maker")


def hostile_message(kind: str, rng: np.random.Generator, city: City, pole: PoleSpec,
                    now_ms: int = DEFAULT_NOW_MS) -> tuple[str, bytes]:
    """One hostile (topic, payload) of ``kind`` aimed at ``pole``."""
    try:
        maker = MAKERS[kind]
    except KeyError:
        raise ValueError(f"unknown hostile kind {kind!r}") from None
    return maker(rng, city, pole, now_ms)


def routed_to_gateway(topic: str) -> bool:
    """Whether the broker delivers ``topic`` to a gateway at all (it subscribes to ``lampwatch/v1/+/+/telemetry``
    and the status topics). A hostile message on another topic (an extra level, another root) reaches no
    gateway: it can be neither stored nor refused there, so a count of what must come back as a reject
    leaves it out (a deployment's broker ACL, ``ingest/credentials.py``, lets a pole write its own
    telemetry, status and command-ack topics only, so there it is refused at the broker)."""
    return bool(mqtt.topic_matches_sub(_TELEMETRY_FILTER, topic))


def hostile_messages(rng: np.random.Generator, n: int, city: City, *, now_ms: int = DEFAULT_NOW_MS,
                     clock_ms: int | None = None, kinds: Sequence[str] = HOSTILE_KINDS,
                     poles: Sequence[PoleSpec] | None = None, first: int = 0) -> list[tuple[str, bytes, str]]:
    """``n`` hostile messages cycling through ``kinds`` from ``kinds[first % len(kinds)]``, aimed at random
    poles of ``city``, sent at device time ``now_ms`` to a gateway whose clock reads ``clock_ms`` (default
    ``now_ms``). A caller drawing a few at a time passes how many it drew before as ``first``: starting
    every call at the first kind sent only the first two or three kinds at the demo's 1 % (two a tick)."""
    targets = list(poles) if poles is not None else city.poles
    clock = now_ms if clock_ms is None else clock_ms
    # the time-window attacks are judged against the gateway's clock: out of the window on both clocks
    ref = {"future_ts": max(now_ms, clock), "stale_ts": min(now_ms, clock)}
    out: list[tuple[str, bytes, str]] = []
    for i in range(n):
        kind = kinds[(first + i) % len(kinds)]
        pole = targets[int(rng.integers(len(targets)))]
        topic, payload = hostile_message(kind, rng, city, pole, ref.get(kind, now_ms))
        out.append((topic, payload, kind))
    return out
