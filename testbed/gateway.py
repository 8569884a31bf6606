"""``python -m gateway run`` as a real process, for drills and benchmarks that restart, kill or replace it.

Configured only by what the caller gives it: the parent's ``LAMPWATCH_GATEWAY_*`` variables are not
inherited (a drill's gateway must not pick up a developer's InfluxDB URL), every keyword becomes
``LAMPWATCH_GATEWAY_<KEY>``, and the health server is off unless a ``health_port`` is given (two
gateways on one host would fight for the default port). Lifecycle, like :mod:`testbed.servers`::

    gw = GatewayProcess(broker, state_dir, log_path, influx_url=..., client_id="drill-gw")
    gw.start()          # spawn in its own process group; output appended to log_path
    gw.stop()           # SIGTERM = a deploy: wait for a clean exit (SIGKILL after the timeout); exit code
    gw.kill()           # SIGKILL the group = a crash
    gw.start()          # again: same settings, same state dir
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contract import topics

ENV_PREFIX = "LAMPWATCH_GATEWAY_"


class Address(Protocol):
    host: str
    port: int


class GatewayProcess:
    def __init__(self, broker: Address, state_dir: Path, log_path: Path, **settings: str | int | float) -> None:
        given = {"mqtt_host": broker.host, "mqtt_port": broker.port, "state_dir": str(state_dir),
                 "selfmetrics_interval_s": 1, "health_port": 0, **settings}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        self.env.update({f"{ENV_PREFIX}{k.upper()}": str(v) for k, v in given.items()})
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:  # the child keeps its own descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait for the exit code; None when it had to be killed (or never ran)."""
        if not self.alive():
            return self.proc.returncode if self.proc is not None else None
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def wait_gateway_online(broker: Address, client_id: str, since_ms: int, timeout_s: float = 30.0) -> None:
    """Block until the gateway's retained status says online (it does once subscribed) at or after
    ``since_ms``; RuntimeError after ``timeout_s``."""
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            st = json.loads(m.payload)
            if isinstance(st, dict) and st.get("state") == "online" and st.get("ts", 0) >= since_ms:
                done.set()

    c.on_message = on_message
    c.connect(broker.host, broker.port)
    c.subscribe(topics.gateway_status(client_id), qos=1)
    c.loop_start()
    try:
        ok = done.wait(timeout_s)
    finally:
        c.loop_stop()
        c.disconnect()
    if not ok:
        raise RuntimeError(f"gateway {client_id} did not come online within {timeout_s:.0f} s")
