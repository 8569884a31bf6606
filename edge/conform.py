"""Device conformance: watch one pole's topics on a live broker and judge each requirement of
docs/contract.md (section Conformance) as ``pass``, ``fail`` or ``not-seen``.

Two halves, as everywhere here: :func:`judge` is pure (a list of :class:`Seen` messages and the ping
it sent -> one :class:`Verdict` per requirement), :func:`watch` is the MQTT adapter that collects
them (MQTT 5, retain-as-published so a live message keeps its retain flag, subscribed at QoS 2 so a
QoS 0 publish shows as 0) and sends one ``ping``.

    lampwatch-edge conform --pole p-000001 --district north --duration 60 --host broker --port 1883
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from contract import topics
from contract.catalog import BY_NAME
from contract.errors import BrokerError
from contract.models import CommandAck, Ping, Status, Telemetry

REQUIREMENTS = ("birth-retained", "last-will", "telemetry-qos1", "seq-continuity", "timestamps",
                "payloads-valid", "commands-acked")
MAX_PAYLOAD_BYTES = 256 * 1024
MAX_FUTURE_MS = 300_000
MAX_PAST_MS = 30 * 86_400_000
Outcome = Literal["pass", "fail", "not-seen"]


@dataclass(frozen=True, slots=True)
class Seen:
    """One message as the checker received it."""

    t_ms: int  # checker clock at arrival
    topic: str
    payload: bytes
    qos: int
    retain: bool
    at_subscribe: bool = False  # delivered as the retained message when the checker subscribed


@dataclass(frozen=True, slots=True)
class Verdict:
    requirement: str
    outcome: Outcome
    detail: str

    def line(self) -> str:
        shown = "FAIL" if self.outcome == "fail" else self.outcome
        return f"{shown:8} {self.requirement:15} {self.detail}"


@dataclass
class _Findings:
    fails: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in REQUIREMENTS})
    notes: dict[str, str] = field(default_factory=dict)

    def fail(self, req: str, why: str) -> None:
        if len(self.fails[req]) < 3:  # the first few say enough
            self.fails[req].append(why)


def _parse(model: Any, payload: bytes) -> tuple[Any, str | None]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}"
    try:
        return model.model_validate_json(payload), None
    except ValidationError as exc:
        e = exc.errors(include_url=False, include_input=False)[0]
        return None, f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"


def _raw_ts_in_seconds(payload: bytes) -> int | None:
    """A sample ``ts`` that is plausible as seconds since the epoch (the commonest clock mistake)."""
    try:
        doc = json.loads(payload)
        for s in doc.get("samples", []):
            ts = s.get("ts")
            if isinstance(ts, int | float) and 9.46e8 <= ts <= 4.11e9:
                return int(ts)
    except (ValueError, AttributeError, TypeError):
        return None
    return None


def judge(pole: str, district: str, seen: Sequence[Seen], ping_id: str | None) -> list[Verdict]:
    """Judge every requirement from what was seen (pure)."""
    f = _Findings()
    t_status, t_tel, t_ack = topics.status(district, pole), topics.telemetry(district, pole), \
        topics.cmd_ack(district, pole)
    births_retained = births = 0
    will_seen: str | None = None
    active = False  # live traffic from the device since the last offline status
    last_birth_boot: str | None = None
    tel_msgs = tel_qos1 = 0
    acks: list[CommandAck] = []
    by_key: dict[tuple[str, int], str] = {}  # (boot, seq) -> sample JSON
    max_seq: int | None = None
    max_seq_boot: str | None = None
    evicted: dict[str, int] = {}
    last_ts: dict[str, int] = {}
    boots: list[str] = []
    reboots: list[str] = []
    samples = 0
    valid_msgs = 0
    for s in seen:
        if s.topic == t_status:
            st, err = _parse(Status, s.payload)
            if st is None:
                f.fail("payloads-valid", f"status: {err}")
                continue
            valid_msgs += 1
            if st.pole != pole or st.district != district:
                f.fail("payloads-valid", f"status names {st.district}/{st.pole}, topic {district}/{pole}")
            is_will = st.state == "offline" and st.reason == "will"  # its ts is when it was set: at CONNECT
            if not s.at_subscribe and not is_will and abs(st.ts - s.t_ms) > MAX_FUTURE_MS:
                f.fail("timestamps", f"status ts {st.ts} is {(st.ts - s.t_ms) / 1000:+.0f} s from the checker's clock")
            if st.state == "birth":
                births += 1
                if s.retain:
                    births_retained += 1
                else:
                    f.fail("birth-retained", "birth published without the retain flag")
                if s.qos != 1:
                    f.fail("birth-retained", f"birth at QoS {s.qos}")
                if not s.at_subscribe:
                    if active:
                        f.fail("last-will", "a new birth arrived with no offline status before it: the device "
                                            "dropped without a Last Will (or its will is not an offline status)")
                    if last_birth_boot is not None and st.boot == last_birth_boot:
                        f.fail("seq-continuity", f"a new birth reuses boot id {st.boot}: each boot needs a new one")
                    if last_birth_boot is not None:
                        reboots.append(str(st.boot))
                    last_birth_boot = st.boot
                    active = True
            elif st.state == "offline":
                if not s.at_subscribe:
                    active = False
                if st.reason == "will":
                    if not s.retain:
                        f.fail("last-will", "the Last Will (offline, reason will) is not retained")
                    else:
                        will_seen = "after a drop in the window" if not s.at_subscribe else \
                            "retained from an earlier drop"
            else:
                active = active or not s.at_subscribe
        elif s.topic == t_tel:
            tel_msgs += 1
            tel_qos1 += s.qos == 1
            if s.qos != 1:
                f.fail("telemetry-qos1", f"telemetry at QoS {s.qos}")
            active = True
            if (secs := _raw_ts_in_seconds(s.payload)) is not None:
                f.fail("timestamps", f"sample ts {secs} is in seconds: the contract wants integer milliseconds")
            msg, err = _parse(Telemetry, s.payload)
            if msg is None:
                f.fail("payloads-valid", f"telemetry: {err}")
                continue
            valid_msgs += 1
            if msg.pole != pole:
                f.fail("payloads-valid", f"telemetry names pole {msg.pole}, topic {pole}")
            if msg.boot not in boots:
                boots.append(msg.boot)
            prev_evicted = evicted.get(msg.boot, 0)
            evicted[msg.boot] = max(prev_evicted, msg.evicted)
            seqs = [x.seq for x in msg.samples]
            if any(b != a + 1 for a, b in itertools.pairwise(seqs)):
                f.fail("seq-continuity", f"samples of one message not consecutive: {seqs[:6]}")
            for x in msg.samples:
                samples += 1
                body = x.model_dump_json()
                key = (msg.boot, x.seq)
                if key in by_key:
                    if by_key[key] != body:
                        f.fail("seq-continuity", f"seq {x.seq} of boot {msg.boot} re-sent with different content")
                    continue
                for name, v in x.m.items():
                    m = BY_NAME.get(name)
                    if m is None:
                        f.fail("payloads-valid", f"unknown metric {name!r}")
                    elif not m.in_range(v):
                        f.fail("payloads-valid", f"{name}={v} outside [{m.lo:g}, {m.hi:g}]")
                if max_seq is not None and x.seq <= max_seq:
                    if msg.boot != max_seq_boot:
                        f.fail("seq-continuity", f"seq restarted at {x.seq} under new boot {msg.boot} (last seq "
                                                 f"{max_seq} under boot {max_seq_boot}): the sequence number "
                                                 "must persist across reboots")
                    else:
                        f.fail("seq-continuity", f"seq went back from {max_seq} to {x.seq} within boot {msg.boot}")
                elif max_seq is not None and x.seq > max_seq + 1:
                    gap = x.seq - max_seq - 1
                    if evicted[msg.boot] - prev_evicted < gap and msg.boot == max_seq_boot:
                        f.fail("seq-continuity", f"{gap} sample(s) missing after seq {max_seq} (not reported "
                                                 "as evicted)")
                by_key[key] = body
                if max_seq is None or x.seq > max_seq:
                    max_seq, max_seq_boot = x.seq, msg.boot
                if x.ts > s.t_ms + MAX_FUTURE_MS:
                    f.fail("timestamps", f"seq {x.seq}: ts {x.ts} is {(x.ts - s.t_ms) / 1000:.0f} s ahead")
                elif x.ts < s.t_ms - MAX_PAST_MS:
                    f.fail("timestamps", f"seq {x.seq}: ts {x.ts} is more than 30 days old")
                if x.ts < last_ts.get(msg.boot, -math.inf):
                    f.fail("timestamps", f"seq {x.seq}: ts went backwards within boot {msg.boot}")
                last_ts[msg.boot] = max(x.ts, last_ts.get(msg.boot, x.ts))
        elif s.topic == t_ack:
            ack, err = _parse(CommandAck, s.payload)
            if ack is None:
                f.fail("payloads-valid", f"cmd/ack: {err}")
                continue
            valid_msgs += 1
            acks.append(ack)
            if ack.pole != pole:
                f.fail("payloads-valid", f"ack names pole {ack.pole}, topic {pole}")

    def verdict(req: str, passed: str | None, not_seen: str) -> Verdict:
        if f.fails[req]:
            return Verdict(req, "fail", "; ".join(f.fails[req]))
        return Verdict(req, "pass", passed) if passed is not None else Verdict(req, "not-seen", not_seen)

    mine = [a for a in acks if ping_id is not None and a.id == ping_id]
    if ping_id is not None and not mine:
        f.fail("commands-acked", f"no cmd/ack with id {ping_id} to the ping within the window")
    for a in mine:
        if not a.ok:
            f.fail("commands-acked", f"ping refused: {a.reason}")
    seq_note = None
    if samples:
        seq_note = f"{samples} samples, seq up to {max_seq}, {len(boots)} boot id(s)"
        if reboots:
            seq_note += f", {len(reboots)} reboot(s) with new boot id and seq continuing"
    return [
        verdict("birth-retained", f"{births_retained} birth(s), retained, QoS 1" if births_retained else None,
                "no birth in the window (restart the device during the watch)"),
        verdict("last-will", f"offline with reason will, retained ({will_seen})" if will_seen else None,
                "no drop in the window (cut the device's network or power while watching)"),
        verdict("telemetry-qos1", f"{tel_qos1} telemetry message(s) at QoS 1" if tel_msgs else None,
                "no telemetry in the window"),
        verdict("seq-continuity", seq_note, "no telemetry in the window"),
        verdict("timestamps", "integer ms UTC, within the accepted window" if samples else None,
                "no telemetry in the window"),
        verdict("payloads-valid", f"{valid_msgs} message(s) valid" if valid_msgs else None, "nothing received"),
        verdict("commands-acked", f"ping {ping_id} acknowledged ok" if mine else None,
                "no ping sent (the device was never seen online)"),
    ]


def summary(pole: str, verdicts: Sequence[Verdict]) -> str:
    n = {o: sum(v.outcome == o for v in verdicts) for o in ("pass", "fail", "not-seen")}
    return f"conform {pole}: pass={n['pass']} fail={n['fail']} not-seen={n['not-seen']}"


# --- the MQTT adapter --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    connect_timeout_s: float = 10.0


def watch(broker: Broker, pole: str, district: str, duration_s: float, *, ping: bool = True,
          settle_s: float = 0.3, on_watching: Callable[[], None] | None = None) -> tuple[list[Seen], str | None]:
    """Collect the pole's messages for ``duration_s`` seconds; send one ping as soon as the device is
    seen online (``on_watching`` is called once the checker is subscribed). Raises
    :class:`BrokerError` if the broker cannot be reached or refuses."""
    seen: list[Seen] = []
    lock = threading.Lock()
    state: dict[str, Any] = {}
    subscribed = threading.Event()
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lampwatch-conform-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5)
    if broker.username:
        c.username_pw_set(broker.username, broker.password)
    if broker.tls_ca:
        c.tls_set(ca_certs=broker.tls_ca)
    c.connect_timeout = broker.connect_timeout_s
    opts = mqtt.SubscribeOptions(qos=2, retainAsPublished=True)
    subs = [(topics.status(district, pole), opts), (topics.telemetry(district, pole), opts),
            (topics.cmd_ack(district, pole), opts)]

    def on_connect(cl: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        state["connack"] = rc
        if rc.is_failure:
            done.set()
            return
        cl.subscribe(subs)

    def on_subscribe(_c: mqtt.Client, _u: Any, _m: int, rcs: Any, _p: Any) -> None:
        state["suback"] = rcs
        if any(r.is_failure for r in rcs):
            done.set()
        state["subscribed_ms"] = int(time.time() * 1000)
        subscribed.set()

    t_status, t_cmd = topics.status(district, pole), topics.cmd(district, pole)

    def send_ping(cl: mqtt.Client) -> None:
        """Once, as soon as the device is seen online (a command to an absent device may be lost)."""
        if ping and "ping_id" not in state:
            state["ping_id"] = f"conform-{uuid.uuid4().hex[:12]}"
            cl.publish(t_cmd, Ping(id=state["ping_id"], cmd="ping").model_dump_json().encode(), qos=1)

    def on_message(cl: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        now = int(time.time() * 1000)
        early = "settled" not in state  # before settling: the retained messages delivered on subscribe
        payload = bytes(m.payload)
        with lock:
            seen.append(Seen(now, m.topic, payload, m.qos, bool(m.retain), at_subscribe=early and bool(m.retain)))
            offline = m.topic == t_status and b'"offline"' in payload
            if m.topic != t_status or not offline:
                send_ping(cl)

    def on_disconnect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not done.is_set():
            state.setdefault("lost", str(rc))

    c.on_connect, c.on_subscribe, c.on_message, c.on_disconnect = on_connect, on_subscribe, on_message, on_disconnect
    where = f"{broker.host}:{broker.port}"
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    try:
        c.connect(broker.host, broker.port, keepalive=30, clean_start=True, properties=props)
    except (OSError, ValueError) as exc:
        raise BrokerError(f"cannot reach broker {where}: {exc}") from exc
    c.loop_start()
    try:
        if not subscribed.wait(broker.connect_timeout_s):
            rc = state.get("connack")
            raise BrokerError(f"broker {where} refused the checker: {rc}" if rc is not None and rc.is_failure
                              else f"broker {where}: no subscription acknowledged within "
                                   f"{broker.connect_timeout_s:g} s")
        failed = [r for r in state.get("suback", []) if r.is_failure]
        if failed:
            raise BrokerError(f"broker {where} refused the checker's subscriptions to {pole}'s topics: {failed[0]}")
        time.sleep(settle_s)  # the retained messages arrive right after the SUBACK
        with lock:
            state["settled"] = True
        if on_watching is not None:
            on_watching()
        done.wait(max(0.0, duration_s - settle_s))
    finally:
        done.set()
        c.disconnect()
        c.loop_stop()
    with lock:
        return list(seen), state.get("ping_id")


def conform(broker: Broker, pole: str, district: str, duration_s: float, *, ping: bool = True,
            on_watching: Callable[[], None] | None = None) -> list[Verdict]:
    seen, ping_id = watch(broker, pole, district, duration_s, ping=ping, on_watching=on_watching)
    return judge(pole, district, seen, ping_id)
