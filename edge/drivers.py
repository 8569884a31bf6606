"""Sensor drivers: how the agent gets a value for a metric.

A driver provides some metrics and reads them on demand::

    class Driver(Protocol):
        metrics: tuple[str, ...]
        def read(self, names, t_ms) -> dict[str, float]   # a name it could not read is left out
        def close(self) -> None

Three kinds, all selectable from configuration (see :mod:`edge.config`):

* ``SimulatedDriver(model)`` calls ``model(metric_name, t_ms) -> float | None``; the default model
  (:func:`catalog_model`) follows each catalog metric's ``Signal`` hint. The simulator plugs richer
  models in through the same callable.
* ``CommandDriver`` runs a command (no shell) that prints JSON and picks values out by dotted path
  (``"rcd.leak_ma"``, ``"adc.0.value"``), each with ``scale`` and ``offset``: one run per read.
* ``FileDriver`` reads one number per file, sysfs-style (``/sys/bus/iio/devices/.../in_voltage0_raw``),
  with ``scale`` and ``offset``.

So a real board is wired in by configuration, without code. Two more kinds: ``modbus`` (Modbus TCP or
RTU registers, :mod:`edge.modbus`) and ``plugin``: any driver another package registers in the
``lampwatch.drivers`` entry-point group (see docs/edge.md). A failing read raises ``DriverError``; the
sampler counts it and carries on with the other drivers. A driver may also have ``check() ->
list[str]``: what is wrong before any read (``lampwatch-edge check`` reports it).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from contract.catalog import BY_NAME, Metric
from contract.errors import LampwatchError

Model = Callable[[str, int], "float | None"]


class DriverError(LampwatchError):
    """A sensor read failed (command error, unreadable file, unparsable value)."""


class Driver(Protocol):
    metrics: tuple[str, ...]

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ValueSource:
    """Where one metric's raw value comes from, and how it becomes the metric's unit."""

    source: str  # a dotted JSON path (command driver) or a file path (file driver)
    scale: float = 1.0
    offset: float = 0.0

    def convert(self, raw: object) -> float:
        if isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, int | float):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                raise DriverError(f"{self.source}: not a number: {raw.strip()[:40]!r}") from None
        else:
            raise DriverError(f"{self.source}: not a number: {type(raw).__name__}")
        value = value * self.scale + self.offset
        if not math.isfinite(value):
            raise DriverError(f"{self.source}: not a finite number")
        return value


# --- simulated -----------------------------------------------------------------------------------
def _hour(t_ms: int) -> float:
    return (t_ms / 3_600_000.0) % 24.0


def catalog_model(seed: int | None = None) -> Model:
    """A model ``(metric, t_ms) -> value`` that follows the catalog's Signal hints (UTC hours)."""
    rng = random.Random(seed)
    walk: dict[str, float] = {}

    def value(m: Metric, t_ms: int) -> float:
        s = m.signal
        h = _hour(t_ms)
        noise = rng.gauss(0.0, s.noise) if s.noise else 0.0
        night = h < 6.0 or h >= 18.0
        if s.shape == "constant":
            v = s.base + abs(noise)
        elif s.shape == "noise":
            v = s.base + noise
        elif s.shape == "diurnal":
            v = s.base + s.amplitude * math.sin(2 * math.pi * (h - 9.0) / 24.0) + noise
        elif s.shape == "lamp":
            v = s.base + noise if night else 0.0
        elif s.shape == "rush_hour":
            peaks = math.exp(-((h - 8.0) ** 2) / 2.0) + math.exp(-((h - 18.0) ** 2) / 2.0)
            v = s.base + s.amplitude * peaks + noise
        elif s.shape == "binary":
            v = s.base
        else:  # slow_walk: a mean-reverting random walk around base
            w = walk.get(m.name, s.base)
            w += 0.05 * (s.base - w) + noise * 0.2
            walk[m.name] = w
            v = w
        if m.dtype == "bool":
            return 1.0 if v >= 0.5 else 0.0
        return round(min(m.hi, max(m.lo, v)), m.decimals)

    def model(name: str, t_ms: int) -> float | None:
        m = BY_NAME.get(name)
        return None if m is None else value(m, t_ms)

    return model


class SimulatedDriver:
    def __init__(self, metrics: Sequence[str], model: Model | None = None, *, seed: int | None = None) -> None:
        self.metrics = tuple(metrics)
        self.model = model if model is not None else catalog_model(seed)

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in names:
            v = self.model(n, t_ms)
            if v is not None and math.isfinite(v):
                out[n] = float(v)
        return out

    def close(self) -> None:
        pass


# --- generic: command JSON output --------------------------------------------------------------------
def json_path(doc: Any, path: str) -> Any:
    """``json_path({"a": [{"b": 1}]}, "a.0.b") == 1``; raises DriverError when absent."""
    cur = doc
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise DriverError(f"no value at {path!r} in the command output")
    return cur


class CommandDriver:
    """Runs ``argv`` once per read; its stdout must be one JSON document."""

    def __init__(self, argv: Sequence[str], mapping: Mapping[str, ValueSource], *, timeout_s: float = 5.0) -> None:
        if not argv:
            raise ValueError("command driver needs a command")
        self.argv = list(argv)
        self.mapping = dict(mapping)
        self.metrics = tuple(self.mapping)
        self.timeout_s = timeout_s

    def run(self) -> Any:
        try:
            proc = subprocess.run(self.argv, capture_output=True, timeout=self.timeout_s, check=False,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            raise DriverError(f"sensor command {self.argv[0]!r} failed: {exc}") from exc
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DriverError(f"sensor command {self.argv[0]!r} exited {proc.returncode}: {tail[0][:200]}")
        try:
            return json.loads(proc.stdout)
        except ValueError as exc:
            raise DriverError(f"sensor command {self.argv[0]!r} printed invalid JSON: {exc}") from exc

    def check(self) -> list[str]:
        exe = self.argv[0]
        if shutil.which(exe) is None:
            return [f"sensor command {exe!r} not found" + ("" if "/" in exe else " on PATH")
                    + ("" if not Path(exe).exists() else " or not executable")]
        return []

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        wanted = [n for n in names if n in self.mapping]
        if not wanted:
            return {}
        doc = self.run()
        return _read_each(wanted, lambda n: self.mapping[n].convert(json_path(doc, self.mapping[n].source)))

    def close(self) -> None:
        pass


def _read_each(names: Sequence[str], read_one: Callable[[str], float]) -> dict[str, float]:
    """Read every metric on its own: a broken sensor costs only its value. Raise only if all failed."""
    out: dict[str, float] = {}
    errors = []
    for n in names:
        try:
            out[n] = read_one(n)
        except DriverError as exc:
            errors.append(f"{n}: {exc}")
    if errors and not out:
        raise DriverError("; ".join(errors)[:500])
    return out


# --- generic: files (sysfs style) ------------------------------------------------------------------
class FileDriver:
    def __init__(self, mapping: Mapping[str, ValueSource]) -> None:
        self.mapping = dict(mapping)
        self.metrics = tuple(self.mapping)

    def check(self) -> list[str]:
        return [f"cannot read {mp.source}: {'no such file' if not Path(mp.source).exists() else 'permission denied'}"
                for mp in self.mapping.values() if not os.access(mp.source, os.R_OK)]

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        def one(n: str) -> float:
            mp = self.mapping[n]
            try:
                raw = Path(mp.source).read_text(errors="replace")
            except OSError as exc:
                raise DriverError(f"cannot read {mp.source}: {exc.strerror or exc}") from exc
            return mp.convert(raw)

        return _read_each([n for n in names if n in self.mapping], one)

    def close(self) -> None:
        pass


# --- preflight, plugins and the drivers built from other modules ------------------------------------
ENTRY_POINT_GROUP = "lampwatch.drivers"


def preflight(driver: Driver) -> list[str]:
    """What is wrong with a driver before any read (a missing command, an unreadable file)."""
    check = getattr(driver, "check", None)
    return list(check()) if callable(check) else []


def plugin_names() -> list[str]:
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def load_plugin(name: str, metrics: Sequence[str], options: Mapping[str, Any]) -> Driver:
    """Build a driver from the ``lampwatch.drivers`` entry point ``name``: a callable
    ``factory(metrics: tuple[str, ...], options: dict) -> Driver``. Raises ``ValueError`` with a clear
    message (unknown plugin, failing factory, or an object that is not a driver)."""
    eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not eps:
        known = ", ".join(plugin_names()) or "none installed"
        raise ValueError(f"no driver plugin {name!r} in entry-point group {ENTRY_POINT_GROUP} (installed: {known})")
    try:
        factory = eps[0].load()
        driver = factory(tuple(metrics), dict(options))
    except Exception as exc:  # a third party's code: say whose it was
        raise ValueError(f"driver plugin {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    for attr in ("metrics", "read", "close"):
        if not hasattr(driver, attr):
            raise ValueError(f"driver plugin {name!r} returned {type(driver).__name__}, which has no {attr}")
    return driver  # type: ignore[no-any-return]


def plugin_driver(spec: Any) -> Driver:
    """The driver of a ``plugin`` config entry (edge.config.PluginSource). ``modbus`` entries are built
    by edge.agent.build_drivers (edge.modbus stands on this module, not the other way round)."""
    kind = getattr(spec, "kind", None)
    if kind == "plugin":
        return load_plugin(spec.name, spec.metrics, spec.options)
    raise ValueError(f"unknown driver kind {kind!r}")
