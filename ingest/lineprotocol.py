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
_ORDERS: dict[tuple[str, ...], tuple[tuple[str, str], ...]] = {}  # field keys -> sorted, escaped "key="


def _esc(s: str) -> str:
    e = _ESCAPED.get(s)
    if e is None:
        e = s.translate(_ESC_KEY)
        if len(_ESCAPED) < 200_000:  # bounded: pole ids are many but finite
            _ESCAPED[s] = e
    return e


_PREFIXES: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}  # series -> "measurement,tag=v,..."
_MAX_PREFIXES = 200_000  # one per series (pole x measurement), ~190 bytes each with its key; beyond it,
# prefixes are built each time


def _prefix(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """Built once per series: tag values (pole ids) are escaped here, not kept in ``_ESCAPED`` too."""
    parts = [measurement.translate(_ESC_MEASUREMENT)]
    for k, v in tags:
        if k and v:
            parts.append(f"{_esc(k)}={v.translate(_ESC_KEY)}")
    return ",".join(parts)


def encode(p: Point) -> str:
    """One point as one line (no trailing newline). Raises ``ValueError`` if no field survives.

    The hot path (the gateway encodes every reading) builds each series' escaped
    ``measurement,tags`` prefix once, dispatches on exact types and escapes each distinct key once;
    anything unusual falls back to the general ``_field``."""
    series = (p.measurement, p.tags)
    prefix = _PREFIXES.get(series)
    if prefix is None:
        prefix = _prefix(p.measurement, p.tags)
        if len(_PREFIXES) < _MAX_PREFIXES:
            _PREFIXES[series] = prefix
    fields: list[str] = []
    add = fields.append
    f = p.fields
    keys = tuple(f)
    order = _ORDERS.get(keys)
    if order is None:  # one per sensor kit in practice: sort and escape its keys once
        order = tuple((k, _esc(k) + "=") for k in sorted(keys))
        if len(_ORDERS) < 10_000:
            _ORDERS[keys] = order
    for k, eq in order:
        val: Any = f[k]
        t = type(val)
        if t is float:
            if val - val != 0.0:  # NaN or +/-inf: line protocol cannot carry them
                continue
            r = repr(val)
            add(eq + r[:-2] if r[-2:] == ".0" else eq + r)
        elif t is int:
            add(f"{eq}{val}i")
        else:
            one = _field(k, val)
            if one is not None:
                add(one)
    if not fields:
        raise ValueError(f"point for {p.measurement!r} has no writable field")
    return f"{prefix} {','.join(fields)} {p.ts_ns}"


def encode_many(points: Iterable[Point]) -> bytes:
    return "\n".join(encode(p) for p in points).encode("utf-8")
