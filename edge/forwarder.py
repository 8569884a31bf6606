"""The forwarder: outbox -> publish window -> ack. It owns every piece of forwarding state.

    pump()      publish the oldest unsent samples, in sequence order (several per message while a
                backlog exists, capped by count and bytes), while fewer than ``window`` messages are
                unacknowledged; the outbox (:mod:`edge.outbox`, the durable store) keeps them until
                then
    settle()    PUBACK for one of our messages: success -> delete its samples from the outbox; a
                retryable refusal (0x83, 0x97) -> keep them and resend from the oldest; any other
                refusal (e.g. 135 not authorised) -> drop them, count and log them as denied

Called on the network thread only (:class:`edge.loop.EdgeLoop` pumps after a step of a live link);
``publish`` is the link's :meth:`edge.link.MqttLink.publish`. A reconnect changes nothing here: paho
re-sends in-flight QoS 1 messages itself (same packet ids), and their PUBACKs settle as usual.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from edge.outbox import Outbox
from edge.wire import ENVELOPE_BYTES, telemetry_payload

log = logging.getLogger("lampwatch.edge.forwarder")

#: MQTT 5 reason codes on PUBACK after which re-sending the same message can succeed later
RETRYABLE = {0x83, 0x97}  # implementation specific error, quota exceeded


class Forwarder:
    def __init__(self, outbox: Outbox, publish: Callable[[str, bytes], int | None], *, pole: str, boot_id: str,
                 topic: str, window: int, max_samples: int, max_message_bytes: int) -> None:
        self.outbox = outbox
        self.publish = publish
        self.pole = pole
        self.topic = topic
        self.window = window
        self.max_samples = max_samples
        self.budget = max_message_bytes - ENVELOPE_BYTES - len(pole) - len(boot_id)
        self.counts: Counter[str] = Counter()
        self._inflight: dict[int, list[int]] = {}  # packet id -> the seqs it carries
        self._cursor = -1  # highest seq handed to paho in this process

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def pump(self) -> None:
        """Publish the oldest unsent samples, in sequence order, within the in-flight window."""
        ob = self.outbox
        while len(self._inflight) < self.window and self._cursor < ob.last_seq:
            batch = ob.peek(self._cursor, self.max_samples, self.budget)
            if not batch:
                self._cursor = ob.last_seq  # everything after the cursor was evicted/acked
                break
            payload = telemetry_payload(self.pole, batch[0].boot, [p.body for p in batch], ob.evicted_session)
            mid = self.publish(self.topic, payload)
            if mid is None:
                break
            self._inflight[mid] = [p.seq for p in batch]
            self._cursor = batch[-1].seq
            self.counts["messages_sent"] += 1
            self.counts["samples_sent"] += len(batch)

    def settle(self, mid: int, reason_code: int, reason: str) -> bool:
        """The broker answered ``mid``; False if it was not one of our telemetry messages."""
        seqs = self._inflight.pop(mid, None)
        if seqs is None:
            return False
        n = len(seqs)
        self.counts["messages_acked"] += 1
        if reason_code < 0x80:
            self.outbox.ack(seqs)
            self.counts["acked"] += n
            return True
        if reason_code in RETRYABLE:
            # keep them in the outbox; resend from the oldest unacked sample after a pause
            self.counts["retry"] += n
            log.warning("broker deferred %d samples (%s, reason code %d); will resend", n, reason, reason_code)
            self._cursor = min(self._cursor, seqs[0] - 1)
            return True
        self.outbox.ack(seqs)  # refused for good: drop, count and say so
        self.counts["denied"] += n
        log.error("broker refused telemetry of pole %s on %s: %s (reason code %d); %d samples dropped "
                  "(seq %d..%d)", self.pole, self.topic, reason, reason_code, n, seqs[0], seqs[-1])
        return True
