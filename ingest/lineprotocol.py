"""InfluxDB line protocol encoder (pure). Byte-identical to influxdb-client's serializer for the
values lampwatch writes (sorted tags and fields, floats without a trailing ``.0``), which a
hypothesis test checks differentially.

Newlines and tabs in tag keys/values and field keys are escaped as influxdb-client does; string field
values escape ``"`` and ``\\``. Non-finite floats are skipped (line protocol cannot carry them; the
gateway never lets them through anyway).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from contract.readings import Point

_ESC_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESC_KEY = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESC_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


def _field(key: str, value: object) -> str | None:
    k = key.translate(_ESC_KEY)
    if isinstance(value, bool):
        return f"{k}={'true' if value else 'false'}"
    if isinstance(value, int):
        return f"{k}={value}i"
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        s = str(value)
        return f"{k}={s[:-2] if s.endswith('.0') else s}"
    if isinstance(value, str):
        return f'{k}="{value.translate(_ESC_STRING)}"'
    raise TypeError(f"unsupported field type {type(value).__name__} for {key!r}")


_ESCAPED: dict[str, str] = {}  # keys, tag values and measurements recur endlessly: escape each once
_ORDERS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}  # field-key set -> sorted, escaped


def _esc(s: str) -> str:
    e = _ESCAPED.get(s)
    if e is None:
        e = s.translate(_ESC_KEY)
        if len(_ESCAPED) < 200_000:  # bounded: pole ids are many but finite
            _ESCAPED[s] = e
    return e


def encode(p: Point) -> str:
    """One point as one line (no trailing newline). Raises ``ValueError`` if no field survives.

    The hot path (the gateway encodes every reading) dispatches on exact types and escapes each
    distinct key once; anything unusual falls back to the general ``_field``."""
    parts = [p.measurement.translate(_ESC_MEASUREMENT)]
    for k, v in p.tags:
        if k and v:
            parts.append(f"{_esc(k)}={_esc(v)}")
    fields = []
    f = p.fields
    keys = tuple(f)
    order = _ORDERS.get(keys)
    if order is None:  # one per sensor kit in practice: sort and escape its keys once
        order = tuple((k, _esc(k)) for k in sorted(keys))
        if len(_ORDERS) < 10_000:
            _ORDERS[keys] = order
    for k, ek in order:
        val: Any = f[k]
        t = type(val)
        if t is float:
            if val - val != 0.0:  # NaN or +/-inf: line protocol cannot carry them
                continue
            r = repr(val)
            fields.append(f"{ek}={r[:-2] if r.endswith('.0') else r}")
        elif t is int:
            fields.append(f"{ek}={val}i")
        else:
            one = _field(k, val)
            if one is not None:
                fields.append(one)
    if not fields:
        raise ValueError(f"point for {p.measurement!r} has no writable field")
    return f"{','.join(parts)} {','.join(fields)} {p.ts_ns}"


def encode_many(points: Iterable[Point]) -> bytes:
    return "\n".join(encode(p) for p in points).encode("utf-8")
