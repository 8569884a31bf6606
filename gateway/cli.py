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
from contract.cli import LogFormatOpt, LogLevelOpt, VersionOpt, entry_point, fail, root_options
from contract.errors import LampwatchError
from gateway.service import Gateway
from gateway.settings import GatewaySettings, load
from ingest.stores import StoreConfig, describe, open_store

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lampwatch gateway: MQTT telemetry in, validated points out to the store.")
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: never break a line at the terminal width

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file "
                                                "(env LAMPWATCH_GATEWAY_* overrides it)")]


@app.callback()
def _root(_version: VersionOpt = False, log_level: LogLevelOpt = None, log_format: LogFormatOpt = "text") -> None:
    """lampwatch gateway: MQTT telemetry in, validated points out to the store."""
    root_options(log_level, log_format)


def _fail(exc: object) -> typer.Exit:
    return fail("lampwatch-gateway", exc)


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
            "spool_points", "lag_ms", "last_write_ms", "inbox", "alarms_active"]
    gids = sorted(seen)
    t.add_column("")
    for gid in gids:
        t.add_column(gid, justify="right")
    t.add_row("state", *[str(seen[g].get("state")) for g in gids])
    t.add_row("districts", *[",".join(seen[g].get("districts", [])) for g in gids])
    for k in keys:
        t.add_row(k, *[f"{seen[g].get('counters', {}).get(k, 0):.0f}" for g in gids])
    Console().print(t)
    rej = {k: v for st in seen.values() for k, v in st.get("counters", {}).items() if k.startswith("rejects_")}
    if rej:
        Console().print("rejects by reason: " + ", ".join(f"{k[8:]}={v:.0f}" for k, v in sorted(rej.items())))


@app.command()
def detect(
    csv_file: Annotated[Path | None, typer.Argument(help="a timestamp,value CSV", exists=True, dir_okay=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output file (CSV mode, default stdout) or "
                                             "results directory (--nab mode)")] = None,
    nab: Annotated[Path | None, typer.Option("--nab", help="a NAB corpus (data/ and labels/), scored whole",
                                             exists=True, file_okay=False)] = None,
    threshold: Annotated[float, typer.Option(help="score at or above which a row is labelled 1 (CSV mode)",
                                             min=0.0, max=1.0)] = 0.5,
) -> None:
    """Run the streaming detector offline over a CSV (or the whole NAB corpus), in row order.

    CSV mode writes timestamp,value,anomaly_score,label rows (label = score >= threshold; warm-up
    rows score 0). NAB mode writes OUT/lampwatch/<category>/lampwatch_<file>.csv for all 58 files.

    Example: lampwatch-gateway detect readings.csv -o scored.csv
    Example: lampwatch-gateway detect --nab ../shared/nab --out results
    """
    import csv
    import sys

    import numpy as np

    from gateway.detect.replay import parse_timestamps, replay_nab, run_series

    if (csv_file is None) == (nab is None):
        raise _fail("give either a CSV file or --nab DIR")
    if nab is not None:
        if out is None:
            raise _fail("--nab needs --out DIR")
        try:
            layouts, _scores = replay_nab(nab, out)
        except (OSError, ValueError, KeyError) as exc:
            raise _fail(f"cannot read the NAB corpus in {nab}: {exc}") from None
        print(f"detect: files={len(layouts)} out={out}")
        return
    assert csv_file is not None
    try:
        with csv_file.open(newline="") as fh_in:
            rows = [r for r in csv.reader(fh_in) if r][1:]  # header first
        ts = [r[0] for r in rows]
        raw = [r[1] for r in rows]
        values = np.array([float(v) for v in raw])
        scores = run_series(values, parse_timestamps(ts))
    except (OSError, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise _fail(f"{csv_file}: not a timestamp,value CSV ({type(exc).__name__}: {exc})") from None
    scores = np.nan_to_num(scores, nan=0.0)
    fh = open(out, "w", newline="") if out else sys.stdout
    try:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for t, v, sc in zip(ts, raw, scores, strict=True):
            w.writerow([t, v, f"{sc:.6f}", int(sc >= threshold)])
    finally:
        if out:
            fh.close()
    err.print(f"detect: rows={len(ts)} anomalies={int((scores >= threshold).sum())}", highlight=False)


main = entry_point(app, "lampwatch-gateway")
