"""The peer bridge mqtt2influxdb (PyPI), installed into a venv of its own under the temp dir, and its config."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from contract.catalog import NAMES
from simulator.city import KITS
from testbed.servers import InfluxDB1, Mosquitto

M2I_VERSION = "1.5.2"


def m2i_venv(version: str = M2I_VERSION, timeout_s: float = 240.0) -> tuple[Path | None, str]:
    """Install mqtt2influxdb==version (and paho-mqtt<2, which its code needs) into a cached venv under the
    temp dir, never into the project's. Returns (path of the mqtt2influxdb script or None, note)."""
    venv = Path(tempfile.gettempdir()) / f"lampwatch-bench-mqtt2influxdb-{version}"
    exe = venv / "bin" / "mqtt2influxdb"
    if exe.exists():
        return exe, f"mqtt2influxdb {version} (cached venv {venv})"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=60)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"mqtt2influxdb=={version}",
                            "paho-mqtt<2"], capture_output=True, text=True, timeout=timeout_s)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install mqtt2influxdb {version}: {exc}"
    if r.returncode != 0 or not exe.exists():
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        return None, f"pip install mqtt2influxdb=={version} failed: {tail[0][:200]}"
    return exe, f"mqtt2influxdb {version} (installed into {venv})"


def m2i_config(broker: Mosquitto, influx: InfluxDB1, db: str) -> str:
    """A config mapping our telemetry JSON: one point per message, tags district/pole from the topic, fields
    seq plus every metric all sensor kits carry (a metric a pole lacks would log two warnings per message)."""
    common = [n for n in NAMES if all(n in kit for kit in KITS.values())]
    fields = "\n".join(f"      {n}: $.payload.samples[0].m.{n}" for n in common)
    return f"""\
mqtt:
  host: {broker.host}
  port: {broker.port}
influxdb:
  host: {influx.host}
  port: {influx.port}
  database: {db}
points:
  - measurement: telemetry
    topic: lampwatch/v1/+/+/telemetry
    fields:
      seq: $.payload.samples[0].seq
{fields}
    tags:
      district: $.topic[2]
      pole: $.topic[3]
"""
