"""The edge agent: sampler thread -> outbox (disk) -> network thread -> broker, acked back into the outbox.

    sampler thread   clock-driven schedule: read drivers, safety check, Outbox.append (durable),
                     then wake the network thread (a crossing is published at once)
    network thread   MqttLink: reconnect with jittered backoff; on every turn pump the outbox:
                     publish the oldest unsent samples (several per message while a backlog exists,
                     capped by count and bytes) within a window of in-flight messages; on PUBACK
                     success delete them from the outbox; on a refusal (e.g. 135 not authorised)
                     count and log them as denied
    commands         cmd topic -> edge.commands.handle -> CommandAck on cmd/ack

With ``host=`` (an :class:`edge.host.AgentHost`, the simulator's per-device mode) the agent runs on
the host's shared network and sampler threads instead of two of its own; nothing else changes.

Sequence numbers come from the outbox (persisted, monotonic across restarts); the boot id is new for
every process start and travels with the samples it produced.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract import topics
from contract.catalog import BY_NAME, CRITICAL
from edge import __version__
from edge.clock import Clock, SystemClock
from edge.commands import Result, handle
from edge.config import CommandSource, EdgeConfig, FileSource, SimulatedSource
from edge.drivers import CommandDriver, Driver, FileDriver, Model, SimulatedDriver, ValueSource, other_driver
from edge.link import LinkSettings, MqttLink
from edge.outbox import Outbox
from edge.safety import SafetyMonitor
from edge.sampler import Sampler
from edge.wire import ENVELOPE_BYTES, status_payload, telemetry_payload

if TYPE_CHECKING:
    from edge.host import AgentHost

log = logging.getLogger("lampwatch.edge")

#: MQTT 5 reason codes on PUBACK after which re-sending the same message can succeed later
RETRYABLE = {0x83, 0x97}  # implementation specific error, quota exceeded


def build_drivers(cfg: EdgeConfig, model: Model | None = None) -> dict[str, Driver]:
    """metric -> driver, from the configuration (``model`` replaces the simulated drivers' model)."""
    made: list[Driver] = []
    for i, spec in enumerate(cfg.drivers):
        if isinstance(spec, SimulatedSource):
            names = spec.metrics if spec.metrics is not None else list(BY_NAME)
            seed = spec.seed if spec.seed is not None else zlib.crc32(f"{cfg.pole}/{i}".encode())
            made.append(SimulatedDriver(names, model, seed=seed))
        elif isinstance(spec, CommandSource):
            mp = {n: ValueSource(s.path, s.scale, s.offset) for n, s in spec.metrics.items()}
            made.append(CommandDriver(spec.argv, mp, timeout_s=spec.timeout_s))
        elif isinstance(spec, FileSource):
            made.append(FileDriver({n: ValueSource(s.path, s.scale, s.offset) for n, s in spec.metrics.items()}))
        else:  # modbus and plugins (edge.drivers, edge.modbus): imported only when a pole uses them
            made.append(other_driver(spec))
    return {n: made[i] for n, i in cfg.assignment().items()}


@dataclass(slots=True)
class _Batch:
    seqs: list[int]
    boot: str


class EdgeAgent:
    """One pole's agent. ``start()`` returns at once (the broker may be down: samples queue on disk).

    ``host``: run on an :class:`edge.host.AgentHost`'s shared threads (the agent then samples on the
    host's clock) instead of a network and a sampler thread of its own."""

    def __init__(self, cfg: EdgeConfig, *, clock: Clock | None = None,
                 drivers: Mapping[str, Driver] | None = None, model: Model | None = None,
                 rng: random.Random | None = None, host: AgentHost | None = None) -> None:
        if host is not None and clock is not None and clock is not host.clock:
            raise ValueError("an agent on an AgentHost samples on the host's clock: pass no clock")
        self.cfg = cfg
        self.host = host
        self.clock: Clock = host.clock if host is not None else (clock or SystemClock())
        self.boot_id = uuid.uuid4().hex
        self.pole, self.district = cfg.pole, cfg.district
        self.t_telemetry = topics.telemetry(cfg.district, cfg.pole)
        self.t_status = topics.status(cfg.district, cfg.pole)
        self.t_cmd = topics.cmd(cfg.district, cfg.pole)
        self.t_ack = topics.cmd_ack(cfg.district, cfg.pole)
        self.drivers = dict(drivers) if drivers is not None else build_drivers(cfg, model)
        self.sensors = tuple(n for n in cfg.sensors if n in self.drivers)
        self.safety = SafetyMonitor([n for n in CRITICAL if n in self.sensors],
                                    tilt_baseline=cfg.tilt_baseline_deg, overrides=cfg.thresholds)
        self.counts: Counter[str] = Counter()
        self.outbox: Outbox | None = None
        self.sampler: Sampler | None = None
        self.link: MqttLink | None = None
        self._inflight: dict[int, _Batch] = {}
        self._other_mids: dict[int, str] = {}  # status / acks: mid -> what, for refusal logs
        self._cursor = -1  # highest seq handed to paho in this process
        self._born = False
        self._stop = threading.Event()
        self._stopped = False
        self._wake = threading.Event()
        self._sampler_thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()  # host mode: held while the host's sampler ticks this agent
        self._next_evict = 0.0
        self._started_mono = 0.0
        self._rng = rng or random.Random()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        self.outbox = Outbox(cfg.outbox_file, max_bytes=cfg.outbox_max_bytes, max_age_s=cfg.outbox_max_age_s,
                             sync=cfg.outbox_sync)
        if self.outbox.depth:
            log.info("outbox holds %d samples from before this start; they go first", self.outbox.depth)
        self.sampler = Sampler(self.sensors, self.drivers, {n: cfg.interval_of(n) for n in self.sensors},
                               safety=self.safety, safety_interval_s=cfg.safety_interval_s,
                               now=self.clock.time())
        pw = cfg.password.get_secret_value() if cfg.password is not None else None
        settings = LinkSettings(
            host=cfg.host, port=cfg.port, client_id=cfg.pole, keepalive_s=cfg.keepalive_s,
            session_expiry_s=cfg.session_expiry_s, username=cfg.username, password=pw, tls=cfg.use_tls,
            tls_ca=str(cfg.tls_ca) if cfg.tls_ca else None, tls_cert=str(cfg.tls_cert) if cfg.tls_cert else None,
            tls_key=str(cfg.tls_key) if cfg.tls_key else None, connect_timeout_s=cfg.connect_timeout_s,
            backoff_min_s=cfg.backoff_min_s, backoff_max_s=cfg.backoff_max_s,
            max_inflight=cfg.inflight_window + 16, brokers=cfg.broker_list, mqtt_version=cfg.mqtt_version)
        self.link = MqttLink(settings, self, rng=self._rng, host=self.host)
        self._started_mono = time.monotonic()
        if self.host is not None:
            self.host._add_agent(self)
        else:
            self._sampler_thread = threading.Thread(target=self._sample_loop, name=f"edge-sampler-{self.pole}",
                                                    daemon=True)
            self._sampler_thread.start()
        self.link.start()
        log.info("edge agent %s started (boot %s, %d sensors, outbox %s)", self.pole, self.boot_id,
                 len(self.sensors), cfg.outbox_file)

    def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Stop sampling, let the outbox drain (while connected, up to the timeout), publish the retained
        offline status (reason "shutdown"), disconnect cleanly (no Last Will) and close the outbox.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self._wake.set()
        if self._sampler_thread is not None:
            self._sampler_thread.join(30.0)
        with self._tick_lock:  # host mode: the host's sampler is done with us once we hold it
            pass
        if self.link is not None:
            deadline = time.monotonic() + flush_timeout_s
            while time.monotonic() < deadline and self.link.connected and self.backlog() > 0:
                self.link.wake()
                time.sleep(0.02)
            final = (self.t_status, self._status("offline", reason="shutdown"))
            self.link.close(final=final, timeout_s=max(1.0, deadline - time.monotonic()))
        for d in {id(d): d for d in self.drivers.values()}.values():
            d.close()
        if self.outbox is not None:
            self.outbox.close()
        log.info("edge agent %s stopped: %s", self.pole, self.summary())

    def __enter__(self) -> EdgeAgent:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # --- observation (any thread) ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    def backlog(self) -> int:
        return self.outbox.depth if self.outbox is not None else 0

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected:
                return True
            time.sleep(0.02)
        return self.connected

    def wait_drained(self, timeout_s: float) -> bool:
        """Wait until every sample produced so far has been acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.backlog() == 0:
                return True
            if self.link is not None:
                self.link.wake()
            time.sleep(0.02)
        return self.backlog() == 0

    def counters(self) -> dict[str, float]:
        out: dict[str, float] = dict(self.counts)
        if self.sampler is not None:
            out.update(self.sampler.counts)
        if self.link is not None:
            out.update(self.link.counts)
        if self.outbox is not None:
            out.update(backlog=self.outbox.depth, outbox_bytes=self.outbox.bytes,
                       evicted=self.outbox.evicted_session, evicted_total=self.outbox.evicted_total,
                       next_seq=self.outbox.next_seq)
        out["inflight"] = len(self._inflight)
        out["connected"] = int(self.connected)
        return out

    def summary(self) -> str:
        c = self.counters()
        keys = ("produced", "acked", "backlog", "evicted", "denied", "refused_publishes", "crossings", "connects",
                "disconnects")
        return " ".join(f"{k}={int(c.get(k, 0))}" for k in keys)

    # --- sampler thread --------------------------------------------------------------------------
    def _sample_loop(self) -> None:
        assert self.sampler is not None
        while not self._stop.is_set():
            if not self._sample_once(self.clock.time()):
                self._stop.wait(1.0)
            due = self.sampler.next_due()
            self.clock.wait(self._wake, due - self.clock.time())
            self._wake.clear()

    def _sample_once(self, now: float) -> bool:
        """One tick: sample what is due, store it, wake the link; False if it failed (said and counted)."""
        assert self.sampler is not None and self.outbox is not None
        try:
            tick = self.sampler.step(now)
            if tick is not None:
                self.outbox.append(int(now * 1000), tick.values, self.boot_id)
                self.counts["produced"] += 1
                if tick.crossings:
                    self.counts["fast_path"] += 1
                if self.link is not None:
                    self.link.wake()
            if now >= self._next_evict:
                self._next_evict = now + 60.0
                if n := self.outbox.evict_expired(int(now * 1000)):
                    log.warning("outbox: evicted %d samples older than %.0f s", n, self.cfg.outbox_max_age_s)
        except Exception as exc:  # disk full, driver bug: keep sampling, say so
            self.counts["sample_errors"] += 1
            log.error("sampling failed: %s", exc)
            return False
        return True

    def _host_tick(self, now: float) -> float | None:
        """Host mode (the host's sampler thread): one tick; the next due device time, None once stopped."""
        with self._tick_lock:
            if self._stop.is_set() or self.sampler is None:
                return None
            ok = self._sample_once(now)
            due = self.sampler.next_due()
            return due if ok else max(due, now + 1.0)

    def _wake_sampler(self) -> None:
        if self.host is not None:
            self.host._wake_sampler(self)
        else:
            self._wake.set()

    # --- network thread (LinkHandler) -----------------------------------------------------------------
    def will(self) -> tuple[str, bytes]:
        return self.t_status, self._status("offline", reason="will")

    def on_connected(self, session_present: bool) -> None:
        assert self.link is not None
        self.link.subscribe(self.t_cmd, qos=1)
        state = "online" if self._born else "birth"
        self._born = True
        mid = self.link.publish(self.t_status, self._status(state), qos=1, retain=True)
        if mid is not None:
            self._other_mids[mid] = f"status {state}"

    def on_disconnected(self, reason: str) -> None:
        pass  # in-flight messages stay with paho, which re-sends them after the reconnect

    def on_idle(self) -> None:
        self._pump()

    def on_published(self, mid: int, reason_code: int, reason: str) -> None:
        assert self.outbox is not None
        batch = self._inflight.pop(mid, None)
        if reason_code >= 0x80:
            self.counts["refused_publishes"] += 1
            self.counts[f"refused_rc_{reason_code}"] += 1
        if batch is None:
            what = self._other_mids.pop(mid, None)
            if what is not None and reason_code >= 0x80:
                log.error("broker refused %s on pole %s: %s (reason code %d)", what, self.pole, reason,
                          reason_code)
            return
        n = len(batch.seqs)
        self.counts["messages_acked"] += 1
        if reason_code < 0x80:
            self.outbox.ack(batch.seqs)
            self.counts["acked"] += n
            return
        if reason_code in RETRYABLE:
            # keep them in the outbox; resend from the oldest unacked sample after a pause
            self.counts["retry"] += n
            log.warning("broker deferred %d samples (%s, reason code %d); will resend", n, reason, reason_code)
            self._cursor = min(self._cursor, batch.seqs[0] - 1)
            return
        self.outbox.ack(batch.seqs)  # refused for good: drop, count and say so
        self.counts["denied"] += n
        log.error("broker refused telemetry of pole %s on %s: %s (reason code %d); %d samples dropped "
                  "(seq %d..%d)", self.pole, self.t_telemetry, reason, reason_code, n, batch.seqs[0],
                  batch.seqs[-1])

    def on_message(self, topic: str, payload: bytes) -> None:
        assert self.link is not None
        if topic != self.t_cmd:
            return
        ack = handle(payload, self, pole=self.pole, now_ms=int(self.clock.time() * 1000))
        self.counts["commands_ok" if ack.ok else "commands_rejected"] += 1
        if not ack.ok:
            log.warning("command %r rejected: %s", ack.id, ack.reason)
        mid = self.link.publish(self.t_ack, ack.model_dump_json(exclude_none=True).encode(), qos=1)
        if mid is not None:
            self._other_mids[mid] = "command ack"

    def _pump(self) -> None:
        """Publish the oldest unsent samples, in sequence order, within the in-flight window."""
        assert self.outbox is not None and self.link is not None
        cfg = self.cfg
        budget = cfg.max_message_bytes - ENVELOPE_BYTES - len(self.pole) - len(self.boot_id)
        while len(self._inflight) < cfg.inflight_window and self._cursor < self.outbox.last_seq:
            batch = self.outbox.peek(self._cursor, cfg.max_message_samples, budget)
            if not batch:
                self._cursor = self.outbox.last_seq  # everything after the cursor was evicted/acked
                break
            payload = telemetry_payload(self.pole, batch[0].boot, [p.body for p in batch],
                                        self.outbox.evicted_session)
            mid = self.link.publish(self.t_telemetry, payload, qos=1)
            if mid is None:
                break
            self._inflight[mid] = _Batch([p.seq for p in batch], batch[0].boot)
            self._cursor = batch[-1].seq
            self.counts["messages_sent"] += 1
            self.counts["samples_sent"] += len(batch)

    def _status(self, state: str, reason: str | None = None) -> bytes:
        interval = self.sampler.interval() if self.sampler is not None else self.cfg.report_interval_s
        return status_payload(pole=self.pole, district=self.district, state=state,
                              ts_ms=int(self.clock.time() * 1000), boot=self.boot_id, agent_version=__version__,
                              firmware=self.cfg.firmware, sensors=self.sensors, location=self.cfg.location,
                              interval_s=interval, reason=reason, rated_power_w=self.cfg.rated_power_w,
                              nominal_voltage_v=self.cfg.nominal_voltage_v,
                              tilt_baseline_deg=self.cfg.tilt_baseline_deg)

    # --- commands (network thread; edge.commands.CommandTarget) ----------------------------------
    def set_interval(self, interval_s: float, metric: str | None) -> Result:
        assert self.sampler is not None and self.link is not None
        self.sampler.set_interval(interval_s, metric, self.clock.time())
        self._wake_sampler()
        if metric is None:  # the reporting interval changed: say so in the retained presence
            mid = self.link.publish(self.t_status, self._status("online"), qos=1, retain=True)
            if mid is not None:
                self._other_mids[mid] = "status online"
        return {"interval_s": interval_s, "metric": metric or "*"}

    def sample_now(self) -> Result:
        assert self.sampler is not None
        self.sampler.request_now()
        self._wake_sampler()
        return {"queued": True}

    def set_thresholds(self, thresholds: dict[str, float]) -> Result:
        for name in thresholds:  # validate all before applying any
            if name not in self.safety.rules:
                raise ValueError(f"{name} is not checked on this pole (checked: {', '.join(self.safety.rules)})")
            m = BY_NAME[name]
            if not m.lo <= thresholds[name] <= m.hi:
                raise ValueError(f"{name} threshold {thresholds[name]} outside [{m.lo}, {m.hi}]")
        for name, value in thresholds.items():
            self.safety.set_threshold(name, value)
        self._wake_sampler()
        return {k: float(v) for k, v in thresholds.items()}

    def ping(self) -> Result:
        return {"uptime_s": round(time.monotonic() - self._started_mono, 3), "backlog": float(self.backlog()),
                "boot": self.boot_id, "version": __version__}


def agents_summary(agents: Sequence[EdgeAgent]) -> dict[str, float]:
    total: Counter[str] = Counter()
    for a in agents:
        total.update({k: v for k, v in a.counters().items()})
    return dict(total)
