"""A Modbus driver (pymodbus): energy meters, lamp controllers and RCD monitors on Modbus TCP or RTU.

The register map lives in the pole config (``[[drivers]] kind = "modbus"``, see docs/edge.md): per
metric a register ``address``, its ``table`` (holding or input), a ``type`` (int16, uint16: one
register; int32, uint32, float32: two, ``word_order`` big = high word first), then
``value = raw * scale + offset``. One request per metric, on one connection kept open between reads and
reopened after a failure. A failed read raises :class:`edge.drivers.DriverError` naming the register.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ModbusException

from edge.config import ModbusRegister, ModbusSource
from edge.drivers import DriverError, _read_each

log = logging.getLogger("lampwatch.edge.modbus")
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


def decode(registers: Sequence[int], reg: ModbusRegister) -> float:
    """Raw 16-bit registers -> the metric's value (pure)."""
    if len(registers) != _WIDTH[reg.type]:
        raise DriverError(f"register {reg.address}: expected {_WIDTH[reg.type]} register(s), got {len(registers)}")
    dt = getattr(ModbusTcpClient.DATATYPE, reg.type.upper())
    raw = ModbusTcpClient.convert_from_registers(list(registers), dt, word_order=reg.word_order)
    value = float(raw) * reg.scale + reg.offset  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise DriverError(f"register {reg.address}: not a finite number")
    return value


class ModbusDriver:
    def __init__(self, spec: ModbusSource, *, client: Any | None = None) -> None:
        self.spec = spec
        self.registers: Mapping[str, ModbusRegister] = dict(spec.metrics)
        self.metrics = tuple(self.registers)
        self._client = client

    @property
    def where(self) -> str:
        s = self.spec
        return f"modbus {s.transport} {s.host}:{s.port}" if s.transport == "tcp" else f"modbus rtu {s.device}"

    def _connected(self) -> Any:
        if self._client is None:
            s = self.spec
            if s.transport == "tcp":
                self._client = ModbusTcpClient(s.host or "", port=s.port, timeout=s.timeout_s, retries=1)
            else:
                self._client = ModbusSerialClient(s.device or "", baudrate=s.baudrate, parity=s.parity,
                                                  stopbits=s.stopbits, bytesize=s.bytesize, timeout=s.timeout_s,
                                                  retries=1)
        if not self._client.connected and not self._client.connect():
            raise DriverError(f"{self.where}: cannot connect")
        return self._client

    def read_one(self, name: str) -> float:
        reg = self.registers[name]
        client = self._connected()
        fn = client.read_holding_registers if reg.table == "holding" else client.read_input_registers
        try:
            rr = fn(reg.address, count=_WIDTH[reg.type], device_id=self.spec.unit)
        except ModbusException as exc:
            self.close()  # reopen on the next read
            raise DriverError(f"{self.where} unit {self.spec.unit} {reg.table} register {reg.address}: {exc}") from exc
        if rr.isError():
            raise DriverError(f"{self.where} unit {self.spec.unit} {reg.table} register {reg.address}: "
                              f"device answered {rr}")
        return decode(rr.registers, reg)

    def check(self) -> list[str]:
        try:
            self._connected()
        except DriverError as exc:
            return [str(exc)]
        return []

    def read(self, names: Sequence[str], t_ms: int) -> dict[str, float]:
        return _read_each([n for n in names if n in self.registers], self.read_one)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
