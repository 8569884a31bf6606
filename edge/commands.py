"""Commands on the pole's ``cmd`` topic (pure): decode, validate, apply, answer with a CommandAck.

The agent implements :class:`CommandTarget`; a semantic refusal is a ``ValueError`` whose message
becomes the ack's ``reason``. Nothing here raises on input: malformed JSON, an unknown ``cmd`` or a
bad field is answered ``ok=false`` with the reason, under the command's ``id`` when one could be read.
"""

from __future__ import annotations

import json
from typing import Protocol

from pydantic import ValidationError

from contract.models import COMMAND, CommandAck, Ping, SampleNow, SetInterval, SetThresholds

Result = dict[str, float | str | bool]
KNOWN = ("set_interval", "sample_now", "set_thresholds", "ping")


class CommandTarget(Protocol):
    def set_interval(self, interval_s: float, metric: str | None) -> Result: ...

    def sample_now(self) -> Result: ...

    def set_thresholds(self, thresholds: dict[str, float]) -> Result: ...

    def ping(self) -> Result: ...


def _peek(payload: bytes) -> tuple[str, object]:
    """Best-effort (id, cmd) of a payload that may be invalid."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return "", None
    if not isinstance(doc, dict):
        return "", None
    cid = doc.get("id")
    return (cid if isinstance(cid, str) and len(cid) <= 64 else ""), doc.get("cmd")


def handle(payload: bytes, target: CommandTarget, *, pole: str, now_ms: int) -> CommandAck:
    cid, cmd = _peek(payload)

    def ack(ok: bool, reason: str | None = None, result: Result | None = None) -> CommandAck:
        return CommandAck(id=cid, pole=pole, ok=ok, ts=now_ms, reason=reason, result=result)

    if cmd is not None and cmd not in KNOWN:
        return ack(False, f"unknown command {str(cmd)[:60]!r} (known: {', '.join(KNOWN)})")
    try:
        c = COMMAND.validate_json(payload)
    except ValidationError as exc:
        e = exc.errors(include_url=False, include_input=False)[0]
        loc = ".".join(str(x) for x in e["loc"])
        return ack(False, f"malformed command: {loc + ': ' if loc else ''}{e['msg']}"[:500])
    try:
        if isinstance(c, SetInterval):
            result = target.set_interval(c.interval_s, c.metric)
        elif isinstance(c, SampleNow):
            result = target.sample_now()
        elif isinstance(c, SetThresholds):
            result = target.set_thresholds(dict(c.thresholds))
        elif isinstance(c, Ping):
            result = target.ping()
        else:  # pragma: no cover - the union is closed
            return ack(False, "unsupported command")
    except ValueError as exc:
        return ack(False, str(exc)[:500])
    return ack(True, result=result)
