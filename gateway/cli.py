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
from gateway.app import build
from gateway.settings import load
from ingest.stores import StoreConfig, describe

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lampwatch gateway: MQTT telemetry in, validated points out to the store.")
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: never break a line at the terminal width

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file "
                                                "(env LAMPWATCH_GATEWAY_* overrides it)")]


@app.callback()
def _root(_version: VersionOpt = False, log_level: LogLevelOpt = None, log_format: LogFormatOpt = "text") -> None:
    """lampwatch gateway: MQTT telemetry in, validated points out to the store."""
    root_options(log_level, log_format)


def _fail(exc: object, code: int = 2) -> typer.Exit:
    return fail("lampwatch-gateway", exc, code)


@app.command()
def run(config: ConfigOpt = None, duration: Annotated[float, typer.Option(
        help="stop after this many seconds (0 = until Ctrl-C / SIGTERM)", min=0)] = 0) -> None:
    """Run the gateway until Ctrl-C or SIGTERM, then flush, acknowledge and print a summary.

    A second process with the same settings (client id and state_dir) is a hot standby: it waits for
    the active one's lease and takes over when that process dies. Exits 1 when a gateway thread fails
    (nothing unacknowledged is lost: the broker redelivers it to the restarted process).

    Example: LAMPWATCH_GATEWAY_INFLUX_URL=http://127.0.0.1:8086 lampwatch-gateway run
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load(config)
        gw_app = build(settings)
    except LampwatchError as exc:
        raise _fail(exc) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t_end = time.monotonic() + duration if duration else None
    failed: str | None = None
    health = _health_server(settings, gw_app)
    try:
        gw = gw_app.acquire(stop)
        if gw is not None:
            gw.start()
            brokers = ",".join(f"{h}:{p}" for h, p in settings.broker_list())
            err.print(f"gateway {settings.client_id}: broker {brokers}, "
                      f"store {describe(StoreConfig(**settings.store_fields()))}")
            while not stop.wait(0.5):
                failed = gw.failed
                if failed or (t_end is not None and time.monotonic() >= t_end):
                    break
    except KeyboardInterrupt:
        pass
    finally:
        gw_app.close()
        if health is not None:
            health.close()
    if gw_app.gateway is not None:
        c = gw_app.gateway.counters()
        print(f"gateway: messages={int(c.get('messages', 0))} accepted={int(c.get('samples_accepted', 0))} "
              f"stored={int(c.get('stored_samples', 0))} rejected={int(c.get('samples_rejected', 0))} "
              f"store_rejected={int(c.get('store_rejected_points', 0))} duplicates={int(c.get('duplicates', 0))} "
              f"conflicts={int(c.get('conflicts', 0))} spooled={int(c.get('spool_points', 0))} "
              f"acked={int(c.get('acked', 0))}")
    if failed:
        raise _fail(failed, code=1)


def _health_server(settings: Any, gw_app: Any) -> Any:
    """/healthz, /readyz and /metrics (gateway.health), or None when turned off or the port is taken."""
    if not settings.health_port:
        return None
    from gateway.health import HealthServer, all_ready, writable

    try:
        return HealthServer(ready=all_ready(gw_app.ready, writable(settings.state_dir)), metrics=gw_app.metrics,
                            host=settings.health_host, port=settings.health_port).start()
    except (OSError, LampwatchError) as exc:
        logging.getLogger("lampwatch.gateway").error(
            "no health server on %s:%d (%s): running without /readyz and /metrics", settings.health_host,
            settings.health_port, exc)
        return None


@app.command()
def quarantine(
    entry: Annotated[int | None, typer.Argument(help="an entry id (from a dead letter's `quarantine` "
                                                "field): its payload is written to stdout as it arrived")] = None,
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option(help="entries to list, newest first", min=1)] = 50,
) -> None:
    """List the payloads the gateway refused (kept whole on its disk), or print one of them.

    Example: lampwatch-gateway quarantine            # newest 50: id, time, reason, size, topic
    Example: lampwatch-gateway quarantine 42 > refused.bin
    """
    import sys

    from gateway.deadletter import Quarantine

    try:
        cfg = load(config).gateway_config()
    except LampwatchError as exc:
        raise _fail(exc) from None
    path = Path(cfg.quarantine_path or "")
    if not path.exists():
        raise _fail(f"no quarantine at {path}")
    q = Quarantine(path)
    try:
        if entry is None:
            for r in q.list(limit):
                print(f"{r['id']}\t{r['received_at']}\t{r['reason']}\t{r['size']}\t{r['sha256'][:16]}\t"
                      f"{r['topic'][:120]}")
            return
        data = q.get(entry)
        if data is None:
            raise _fail(f"no quarantine entry {entry} (it may have been evicted)")
        sys.stdout.buffer.write(data)
    finally:
        q.close()


@app.command()
def status(config: ConfigOpt = None, wait: Annotated[float, typer.Option(
        help="seconds to collect retained gateway status messages", min=0.1)] = 1.5,
        username: Annotated[str | None, typer.Option(
            help="MQTT user of the operators' tools (lampwatch.ops); NEVER a gateway's own user: the broker "
                 "makes a client's id its username, so that login would take the gateway's session over",
            envvar="LAMPWATCH_OPS_MQTT_USERNAME")] = None,
        password: Annotated[str | None, typer.Option(help="its password (better: the env variable)",
                                                     envvar="LAMPWATCH_OPS_MQTT_PASSWORD")] = None) -> None:
    """Show every gateway's presence and self-metrics (retained on the broker).

    Broker address and TLS come from the gateway's settings; the login is the operators' user, not
    the gateway's (LAMPWATCH_GATEWAY_MQTT_USERNAME is ignored here). The client id is
    lampwatch-status-<random>; a broker with use_username_as_clientid replaces it with the username.

    Example: LAMPWATCH_OPS_MQTT_USERNAME=lampwatch.ops LAMPWATCH_OPS_MQTT_PASSWORD=... lampwatch-gateway status
    """
    import secrets as _secrets

    try:
        s = load(config)
    except LampwatchError as exc:
        raise _fail(exc) from None
    if username is not None and username in {s.mqtt_username, s.client_id}:
        raise _fail(f"--username {username} is the gateway's own login: use the operators' user (lampwatch.ops)")
    if username is not None and username.startswith("lampwatch.gw-"):
        raise _fail(f"--username {username} is a gateway's user: use the operators' user (lampwatch.ops)")
    seen: dict[str, dict[str, Any]] = {}
    v5 = s.mqtt_version == 5
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"lampwatch-status-{_secrets.token_hex(4)}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    if username:
        c.username_pw_set(username, password)
    if s.mqtt_tls_ca:
        c.tls_set(ca_certs=s.mqtt_tls_ca)
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            refused.append(str(rc))
        connected.set()

    def on_message(_c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        try:
            seen[m.topic.split("/")[-2]] = json.loads(m.payload)
        except ValueError:
            pass

    c.on_connect = on_connect
    c.on_message = on_message
    try:
        c.connect(s.mqtt_host, s.mqtt_port)
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot reach broker {s.mqtt_host}:{s.mqtt_port}: {exc}") from None
    c.loop_start()
    try:
        if not connected.wait(max(wait, 10.0)) or refused:
            why = refused[0] if refused else "no answer"
            raise _fail(f"broker {s.mqtt_host}:{s.mqtt_port} refused the login as {username or 'anonymous'}: "
                        f"{why} (set LAMPWATCH_OPS_MQTT_USERNAME / _PASSWORD to the lampwatch.ops user)")
        c.subscribe(f"{topics.SYS}/gateway/+/status", qos=1)
        time.sleep(wait)
    finally:
        c.disconnect()
        c.loop_stop()
    if not seen:
        raise _fail("no gateway has reported to this broker")
    t = Table(title="lampwatch gateways")
    keys = ["messages", "samples_accepted", "samples_rejected", "duplicates", "gaps", "stored_points",
            "spool_points", "lag_ms", "last_write_ms", "inbox", "alarms_active", "notify_sent", "notify_queued",
            "notify_dropped"]
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

    from gateway.replay import parse_timestamps, replay_nab, run_series

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
