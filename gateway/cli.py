"""``lampwatch-gateway``: the gateway's command line (the composition root: it may import ingest)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

from contract import topics
from contract.errors import LampwatchError
from gateway.service import Gateway
from gateway.settings import GatewaySettings, load
from ingest.stores import StoreConfig, describe, open_store

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lampwatch gateway: MQTT telemetry in, validated points out to the store.")
err = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file "
                                                "(env LAMPWATCH_GATEWAY_* overrides it)")]


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"error: {exc}", highlight=False)
    return typer.Exit(2)


def build_with_store(settings: GatewaySettings, store: Any) -> Gateway:
    """Wire detection and the gateway around an open store (shared with the simulator's demo)."""
    cfg = settings.gateway_config()
    holder: list[Gateway] = []
    stage = None
    try:
        from gateway.detection import DetectionStage
    except ImportError:  # pragma: no cover - detection stage not installed
        DetectionStage = None  # type: ignore[assignment,misc]
    if DetectionStage is not None:
        def publish(topic: str, payload: bytes, retain: bool) -> None:
            holder[0].publish(topic, payload, retain)

        stage = DetectionStage(state_path=str(Path(settings.state_dir) / f"alarms-{cfg.client_id}.json"),
                               publish=publish)
    gw = Gateway(cfg, store, on_outcome=stage)
    holder.append(gw)
    return gw


def build(settings: GatewaySettings) -> tuple[Gateway, Any]:
    store = open_store(StoreConfig(**settings.store_fields()))
    return build_with_store(settings, store), store


@app.command()
def run(config: ConfigOpt = None, duration: Annotated[float, typer.Option(
        help="stop after this many seconds (0 = until Ctrl-C / SIGTERM)", min=0)] = 0) -> None:
    """Run the gateway until Ctrl-C or SIGTERM, then flush, acknowledge and print a summary.

    Example: LAMPWATCH_GATEWAY_INFLUX_URL=http://127.0.0.1:8086 lampwatch-gateway run
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load(config)
        gw, store = build(settings)
    except LampwatchError as exc:
        raise _fail(exc) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gw.start()
    err.print(f"gateway {settings.client_id}: broker {settings.mqtt_host}:{settings.mqtt_port}, "
              f"store {describe(StoreConfig(**settings.store_fields()))}")
    t_end = time.monotonic() + duration if duration else None
    try:
        while not stop.wait(1.0):
            if t_end is not None and time.monotonic() >= t_end:
                break
    except KeyboardInterrupt:
        pass
    gw.stop()
    store.close()
    c = gw.counters()
    print(f"gateway: messages={int(c.get('messages', 0))} stored={int(c.get('samples_accepted', 0))} "
          f"rejected={int(c.get('samples_rejected', 0))} duplicates={int(c.get('duplicates', 0))} "
          f"spooled={int(c.get('spool_points', 0))}")


@app.command()
def status(config: ConfigOpt = None, wait: Annotated[float, typer.Option(
        help="seconds to collect retained gateway status messages", min=0.1)] = 1.5) -> None:
    """Show every gateway's presence and self-metrics (retained on the broker).

    Example: lampwatch-gateway status --config gateway.toml
    """
    try:
        s = load(config)
    except LampwatchError as exc:
        raise _fail(exc) from None
    seen: dict[str, dict[str, Any]] = {}
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if s.mqtt_version == 5 else mqtt.MQTTv311)
    if s.mqtt_username:
        c.username_pw_set(s.mqtt_username, s.mqtt_password.get_secret_value() if s.mqtt_password else None)
    if s.mqtt_tls_ca:
        c.tls_set(ca_certs=s.mqtt_tls_ca, certfile=s.mqtt_tls_cert, keyfile=s.mqtt_tls_key)

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            seen[m.topic.split("/")[-2]] = json.loads(m.payload)
        except ValueError:
            pass

    c.on_message = on_message
    try:
        c.connect(s.mqtt_host, s.mqtt_port)
    except OSError as exc:
        raise _fail(f"cannot reach broker {s.mqtt_host}:{s.mqtt_port}: {exc}") from None
    c.subscribe(f"{topics.SYS}/gateway/+/status", qos=1)
    c.loop_start()
    time.sleep(wait)
    c.loop_stop()
    c.disconnect()
    if not seen:
        raise _fail("no gateway has reported to this broker")
    t = Table(title="lampwatch gateways")
    keys = ["messages", "samples_accepted", "samples_rejected", "duplicates", "gaps", "stored_points",
            "spool_points", "lag_ms", "last_write_ms", "inbox"]
    for col in ["gateway", "state", "districts", *keys]:
        t.add_column(col)
    for gid, st in sorted(seen.items()):
        cnt = st.get("counters", {})
        t.add_row(gid, str(st.get("state")), ",".join(st.get("districts", [])),
                  *[f"{cnt.get(k, 0):.0f}" for k in keys])
    Console().print(t)
    rej = {k: v for st in seen.values() for k, v in st.get("counters", {}).items() if k.startswith("rejects_")}
    if rej:
        Console().print("rejects by reason: " + ", ".join(f"{k[8:]}={v:.0f}" for k, v in sorted(rej.items())))


def main() -> None:
    app()
