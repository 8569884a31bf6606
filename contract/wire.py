"""A compiled fast path for the telemetry wire contract (msgspec), beside the documented pydantic schema.

:class:`contract.models.Telemetry` stays the schema: it is what the docs, the JSON Schema export and
every error message come from. This module mirrors its constraints in msgspec structs, which decode
and validate a message in one C pass (about 3 us against 15 us for ``Telemetry.model_validate_json``
on a 20-value message). It is only ever used as a *fast accept*:

* :func:`decode_telemetry` returns the decoded message, or ``None`` whenever msgspec refuses it or a
  value is not finite; the caller then runs the pydantic model, which gives the verdict and the reason;
* so a message is refused with exactly the reason and detail pydantic gives, and a message is accepted
  only if msgspec accepted it with the same values pydantic would have produced. The hypothesis test
  ``tests/gateway/test_wire.py`` checks the one direction that matters (msgspec accepts => pydantic
  accepts the same content) on generated valid, near-valid and hostile payloads.

Differences handled here: Python's ``re`` lets ``$`` match before a trailing newline, so the patterns
are anchored with ``\\A...\\Z``; msgspec parses ``1e400`` into a float field as an error but a huge
integer as ``inf``, which the finiteness check sends to pydantic (which refuses it as ``finite_number``).
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from contract.catalog import RANGES
from contract.ids import POLE_RE
from contract.models import MAX_METRICS_PER_SAMPLE, MAX_SAMPLES_PER_MESSAGE, TS_MAX_MS, TS_MIN_MS

_Pole = Annotated[str, Meta(pattern=rf"\A{POLE_RE.pattern}\Z")]
_Boot = Annotated[str, Meta(pattern=r"\A[A-Za-z0-9-]{1,64}\Z")]
#: the metric-name pattern is checked here, not by msgspec (which calls ``re`` once per key, 20 times a
#: message): a catalog name is known to match, so only an unknown name pays for the regex
_METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")


class WireSample(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    seq: Annotated[int, Meta(ge=0, le=2**63 - 1)]
    ts: Annotated[int, Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]
    m: Annotated[dict[str, float], Meta(min_length=1, max_length=MAX_METRICS_PER_SAMPLE)]


class WireTelemetry(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pole: _Pole
    boot: _Boot
    samples: Annotated[list[WireSample], Meta(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)]
    v: Literal[1] | UnsetType = UNSET
    evicted: Annotated[int, Meta(ge=0)] | UnsetType = UNSET

    @property
    def evicted_n(self) -> int:
        return 0 if self.evicted is UNSET else self.evicted  # type: ignore[return-value]

    def members(self) -> int:
        """How many JSON object members the message had (given fields plus metric entries), as
        ``gateway.decode`` counts them for its duplicate-key check."""
        n = 3 + (self.v is not UNSET) + (self.evicted is not UNSET)
        for s in self.samples:
            n += 3 + len(s.m)
        return n


_DECODER = msgspec.json.Decoder(WireTelemetry)


def decode_telemetry(payload: bytes | str) -> tuple[WireTelemetry, bool] | None:
    """``(message, clean)`` when msgspec accepts the message and every value is finite; ``None`` otherwise
    (then ask :class:`contract.models.Telemetry` for the verdict and the reason).

    ``clean`` is True when every metric is in the catalog and within its :data:`RANGES` bounds (the test
    :func:`contract.catalog.admits` makes): the decoder then takes each sample's values as they are,
    without its per-value loop, which could only have kept every one of them. One pass over the values
    here does both checks (a value outside finite bounds, NaN and infinities included, is the rare case
    that looks further)."""
    try:
        msg = _DECODER.decode(payload)
    except msgspec.DecodeError:  # ValidationError is a DecodeError
        return None
    isfinite, ranges, name_ok = math.isfinite, RANGES, _METRIC_RE.fullmatch
    clean = True
    for s in msg.samples:
        for k, v in s.m.items():
            b = ranges.get(k)
            if b is None:
                if name_ok(k) is None:
                    return None
                clean = False  # an unknown metric: the decoder refuses that value, keeps the rest
            elif not (b[0] <= v <= b[1]) or (b[2] and v != 0.0 and v != 1.0):
                if not isfinite(v):
                    return None
                clean = False  # out of range: the decoder refuses that value with its reason
    return msg, clean
