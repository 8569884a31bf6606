"""What the agent puts on the wire (pure): telemetry batches and presence messages.

A telemetry payload is assembled from the samples' stored JSON (encoded and validated once, at
append) instead of re-validating every sample at every send: the envelope is the contract's
``Telemetry`` field for field (a test round-trips it through ``Telemetry.model_validate_json``).
"""

from __future__ import annotations

from collections.abc import Sequence

from contract.ids import PoleId
from contract.models import Location, Status

#: bytes of the envelope around the samples, beyond pole and boot ids
ENVELOPE_BYTES = 64


def telemetry_payload(pole: str, boot: str, sample_bodies: Sequence[str], evicted: int = 0) -> bytes:
    """``{"v":1,"pole":..,"boot":..,"samples":[..],"evicted":n}`` from already-encoded samples."""
    if not sample_bodies:
        raise ValueError("a telemetry message carries at least one sample")
    PoleId(pole)  # ids are pattern-checked, so they never need JSON escaping
    if not boot or not all(c.isalnum() or c == "-" for c in boot):
        raise ValueError(f"invalid boot id {boot!r}")
    return (f'{{"v":1,"pole":"{pole}","boot":"{boot}","samples":[{",".join(sample_bodies)}],'
            f'"evicted":{int(evicted)}}}').encode()


def status_payload(*, pole: str, district: str, state: str, ts_ms: int, boot: str | None = None,
                   agent_version: str | None = None, firmware: str | None = None,
                   sensors: Sequence[str] = (), location: Location | None = None,
                   interval_s: float | None = None, reason: str | None = None,
                   rated_power_w: float | None = None, nominal_voltage_v: float | None = None,
                   tilt_baseline_deg: float | None = None) -> bytes:
    st = Status(pole=pole, district=district, state=state, ts=ts_ms, boot=boot,  # type: ignore[arg-type]
                agent_version=agent_version, firmware=firmware, sensors=tuple(sensors),
                location=location, interval_s=interval_s, reason=reason, rated_power_w=rated_power_w,
                nominal_voltage_v=nominal_voltage_v, tilt_baseline_deg=tilt_baseline_deg)
    return st.model_dump_json(exclude_none=True).encode()
