"""``lampwatch-sim``: the fleet simulator's command line (typer + rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from contract.cli import LogFormatOpt, LogLevelOpt, VersionOpt, apply_default_level, entry_point, fail, root_options
from contract.errors import LampwatchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lampwatch fleet simulator: a city of poles, faults with ground truth, drills.")
err = Console(stderr=True, soft_wrap=True)  # soft_wrap: never break a line at the terminal width


def _read_labels(path: Path) -> list[Any]:
    """Ground-truth labels, or a one-line error for the user."""
    from simulator.faults import read_labels

    try:
        return read_labels(path)
    except OSError as exc:
        raise _fail(f"cannot read labels {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise _fail(f"{path}: {exc}") from None


def _sigterm_as_interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run like Ctrl-C: servers it started are stopped, a summary printed


@app.callback()
def _root(_version: VersionOpt = False, log_level: LogLevelOpt = None, log_format: LogFormatOpt = "text") -> None:
    """lampwatch fleet simulator: a city of poles, faults with ground truth, drills and scoring."""
    import signal

    root_options(log_level, log_format)
    # the simulator's own output is its live view and summary lines; the embedded gateways and agents
    # say only what went wrong unless --log-level asks for more
    apply_default_level("WARNING")

    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)


def _fail(msg: object) -> typer.Exit:
    return fail("lampwatch-sim", msg)


@app.command()
def demo(
    poles: Annotated[int, typer.Option(help="simulated poles", min=1, max=100_000)] = 200,
    duration: Annotated[float, typer.Option(help="seconds to run (0 = until Ctrl-C)", min=0)] = 0,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same city and faults)")] = 42,
    speed: Annotated[float, typer.Option(help="simulated seconds per real second", min=1)] = 60.0,
    hostile_pct: Annotated[float, typer.Option(help="hostile payloads per 100 samples", min=0, max=50)] = 1.0,
    broker: Annotated[str, typer.Option(help="auto | mosquitto | embedded")] = "auto",
) -> None:
    """Run the whole system on embedded defaults: broker, gateway, store, 200 poles, a live view.

    Example: lampwatch-sim demo --poles 50 --duration 20
    """
    if broker not in ("auto", "mosquitto", "embedded"):
        raise _fail(f"--broker must be auto, mosquitto or embedded, not {broker!r}")
    from simulator.demo import run_demo

    try:
        res = run_demo(poles=poles, duration=duration or None, seed=seed, speed=speed,
                       hostile_pct=hostile_pct, broker=broker)
    except (LampwatchError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    print(res.line())
    if res.lost:
        raise typer.Exit(1)


DRILLS = ("broker-restart", "edge-offline", "gateway-kill", "store-outage", "hostile-traffic",
          # delivery (docs/delivery.md)
          "gateway-restart", "poison-pill", "store-reject", "spool-disk-full", "device-reboot", "broker-crash",
          "standby-takeover", "session-hijack",
          # operators (docs/operators.md)
          "alert-delivery",
          # a clustered broker tier (docs/scaling.md)
          "cluster-node-kill")


@app.command()
def drill(
    name: Annotated[str, typer.Argument(help="all | " + " | ".join(DRILLS))],
    poles: Annotated[int | None, typer.Option(help="poles (gateway drills, default 100) or agents (edge drills, "
                                              "default 3)", min=1)] = None,
    seconds: Annotated[float, typer.Option(help="publishing time in seconds", min=1)] = 20.0,
    rate_hz: Annotated[float, typer.Option(help="ticks per second (each tick: one sample per pole)", min=0.1)] = 5.0,
    outage_s: Annotated[float | None, typer.Option(
        help="downtime in seconds: store-outage (default 60), broker-restart (30), edge-offline (300, device time), "
             "alert-delivery (60, Alertmanager), cluster-node-kill (10, a NATS node)",
        min=1)] = None,
) -> None:
    """Run one fault drill (or `all` of them, full size) on real servers and print its verdict line.

    Example: lampwatch-sim drill store-outage --poles 50 --outage-s 60
    Example: lampwatch-sim drill all
    """
    if name != "all" and name not in DRILLS:
        raise _fail(f"unknown drill {name!r}; choose one of: all, {', '.join(DRILLS)}")
    names = DRILLS if name == "all" else (name,)
    failed = 0
    for n in names:
        res = _run_drill(n, poles, seconds, rate_hz, outage_s)
        for check in res.failed_checks:
            err.print(f"[red]check failed:[/red] {check}", highlight=False)
        print(res.line(), flush=True)
        failed += not res.passed
    if failed:
        raise typer.Exit(1)


def _run_drill(name: str, poles: int | None, seconds: float, rate_hz: float, outage_s: float | None) -> Any:
    edge = name in ("broker-restart", "edge-offline")
    hijack_poles = poles or 5  # session-hijack: poles publishing its 500 queued samples
    poles = poles or (3 if edge else 30 if name in ("alert-delivery", "cluster-node-kill") else 100)
    if outage_s is None:  # the drill definitions of the edge and gateway issues
        outage_s = {"broker-restart": 30.0, "edge-offline": 300.0, "cluster-node-kill": 10.0}.get(name, 60.0)
    from simulator.drills import delivery_drills as dd
    from simulator.drills.gateway_drills import DrillSpec, gateway_kill, hostile_traffic, store_outage

    def log(msg: str) -> None:
        err.print(f"[dim]{name}:[/dim] {msg}", highlight=False)

    spec = DrillSpec(poles=poles, seconds=seconds, rate_hz=rate_hz)
    delivery: dict[str, Any] = {
        "gateway-restart": lambda: dd.gateway_restart(spec, log=log),
        "poison-pill": lambda: dd.poison_pill(spec, log=log),
        "store-reject": lambda: dd.store_reject(DrillSpec(poles=poles, seconds=seconds, rate_hz=rate_hz,
                                                          step_ms=60_000), log=log),
        "spool-disk-full": lambda: dd.spool_disk_full(spec, log=log),
        "device-reboot": lambda: dd.device_reboot(poles=poles, log=log),
        "broker-crash": lambda: dd.broker_crash(log=log),
        "standby-takeover": lambda: dd.standby_takeover(spec, log=log),
    }
    try:
        if name in delivery:
            return delivery[name]()
        if name == "cluster-node-kill":  # --poles = edge agents (default 30); --outage-s = the node's downtime
            from simulator.drills.cluster_drills import ClusterSpec, cluster_node_kill

            return cluster_node_kill(ClusterSpec(agents=poles, rate_hz=rate_hz, seconds=seconds, down_s=outage_s),
                                     log=log)
        if name == "session-hijack":
            from simulator.drills.identity_drills import session_hijack

            return session_hijack(500, poles=hijack_poles, log=log)
        if name == "alert-delivery":  # --poles = faults (one per pole, default 30); --outage-s = Alertmanager down
            from simulator.drills.alert_drills import alert_delivery

            return alert_delivery(poles=poles, outage_s=outage_s, log=log)  # same line/passed/failed_checks
        if name == "gateway-kill":
            return gateway_kill(spec, log=log)
        if name == "store-outage":
            spec.seconds = max(seconds, outage_s * 1.5)
            return store_outage(spec, outage_s=outage_s, log=log)
        if name == "hostile-traffic":
            return hostile_traffic(spec, log=log)
        from simulator.drills import edge_drills

        # edge drills: --poles = agents; --outage-s = broker downtime / device time cut off
        if name == "broker-restart":
            log(f"{poles} agents at {rate_hz:g} Hz, broker down {outage_s:g} s")
            return edge_drills.broker_restart(agents=poles, rate_hz=rate_hz, down_s=outage_s)
        log(f"{poles} agents cut off for {outage_s:g} s of device time (60x accelerated)")
        return edge_drills.edge_offline(agents=poles, offline_s=outage_s)
    except (LampwatchError, OSError, RuntimeError) as exc:
        raise _fail(f"drill {name}: {exc}") from None


# --- run, scenario, score, report ------------------------------------------------------------------------
MODES = ("multiplexed", "per-device")


def _duration_ms(text: str, what: str) -> int:
    from simulator.scenario import parse_duration_ms

    try:
        return parse_duration_ms(float(text) if text.replace(".", "", 1).isdigit() else text, what)
    except LampwatchError as exc:
        raise _fail(exc) from None


@app.command()
def run(
    host: Annotated[str, typer.Option(help="broker host", envvar="LAMPWATCH_SIM_MQTT_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="broker port", min=1, max=65535, envvar="LAMPWATCH_SIM_MQTT_PORT")]
    = 1883,
    credentials: Annotated[Path | None, typer.Option(
        help="per-device mode: secrets.csv from `lampwatch-ingest credentials` (each agent logs in as its pole)",
        envvar="LAMPWATCH_SIM_CREDENTIALS", exists=True, dir_okay=False)] = None,
    embedded: Annotated[bool, typer.Option("--embedded", help="start a broker here: the real Mosquitto "
                                           "(harness) if installed, else the embedded amqtt broker")] = False,
    mode: Annotated[str, typer.Option(help="multiplexed (one connection for the city) | per-device (every "
                                      "pole a real edge agent: own client id, birth, Last Will, outbox)")]
    = "multiplexed",
    poles: Annotated[int | None, typer.Option(help="simulated poles [default: 100]", min=1, max=999_999)] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same city and faults)", min=0)] = 42,
    duration: Annotated[float, typer.Option(help="real seconds to run (0 = until Ctrl-C or the scenario "
                                            "ends)", min=0)] = 0,
    speed: Annotated[float | None, typer.Option(help="simulated seconds per real second (1 = real time) "
                                                "[default: 1]", min=0.001)] = None,
    rate: Annotated[float | None, typer.Option(help="messages per second instead of --speed", min=0.001)] = None,
    step: Annotated[float, typer.Option(help="simulated seconds between a pole's samples", min=0.1)] = 10.0,
    faults: Annotated[float, typer.Option("--faults", help="random faults per pole-day", min=0)] = 0.0,
    scenario: Annotated[str | None, typer.Option(help="scenario file or bundled name (instead of --poles/"
                                                 "--faults)")] = None,
    labels: Annotated[Path | None, typer.Option(help="write the ground-truth labels CSV here")] = None,
    hostile_pct: Annotated[float, typer.Option(help="hostile payloads per 100 samples", min=0, max=50)] = 0.0,
    mqtt_version: Annotated[int, typer.Option(help="5 or 311 (--embedded picks it)")] = 5,
    workdir: Annotated[Path | None, typer.Option(help="per-device mode: folder for the agents' outboxes "
                                                 "[default: a temp dir]")] = None,
) -> None:
    """Run a simulated city against a broker: births first, then telemetry, live stats, one summary line.

    Multiplexed mode publishes the whole city through one connection (delivery faults and hostile traffic
    included). Per-device mode runs every pole as a real edge agent (edge.agent.EdgeAgent with a simulated
    driver on an accelerated clock): its own MQTT client id, retained birth, Last Will and on-disk
    outbox; thousands of connections from one process (signal faults only).

    Example: lampwatch-sim run --embedded --poles 500 --speed 60 --duration 30 --faults 2 --labels labels.csv
    """
    import tempfile
    import time

    from simulator.run import plan_city, run_multiplexed, run_per_device, sim_speed, tick_interval_s

    if mode not in MODES:
        raise _fail(f"--mode must be multiplexed or per-device, not {mode!r}")
    if speed is not None and rate is not None:
        raise _fail("give --speed or --rate, not both")
    if scenario is not None and (poles is not None or faults):
        raise _fail("--scenario defines the city and its faults: drop --poles/--faults")
    if mqtt_version not in (5, 311):
        raise _fail(f"--mqtt-version must be 5 or 311, not {mqtt_version}")
    if mode == "per-device" and rate is not None:
        raise _fail("per-device mode is paced by --speed (each agent samples on its clock), not --rate")
    creds: dict[str, str] | None = None
    if credentials is not None:
        if mode != "per-device":
            raise _fail("--credentials needs --mode per-device: with per-pole ACLs one connection cannot "
                        "publish for the whole city")
        import csv

        try:
            with credentials.open(newline="") as fh:
                creds = {r["username"]: r["password"] for r in csv.DictReader(fh)}
        except (OSError, KeyError, UnicodeDecodeError) as exc:
            raise _fail(f"{credentials}: not a username,password CSV ({exc})") from None
    if labels is not None and not labels.parent.exists():
        raise _fail(f"folder {labels.parent} does not exist (for --labels)")
    n = poles or 100
    step_ms = int(step * 1000)
    now_ms = int(time.time() * 1000)
    try:
        eff_speed = speed or 1.0
        if rate is not None:
            n_plan = n if scenario is None else len(plan_city(poles=n, seed=seed, step_ms=step_ms, fault_rate=0,
                                                              sim_span_ms=None, now_ms=now_ms,
                                                              scenario=scenario).city)
            eff_speed = sim_speed(step_ms, tick_interval_s(step_ms, n_plan, 1.0, rate))
        span = int(duration * eff_speed * 1000) if duration else None
        # open-ended: accelerated time starts a day back; real time starts now
        plan = plan_city(poles=n, seed=seed, step_ms=step_ms, fault_rate=faults, sim_span_ms=span,
                         now_ms=now_ms, scenario=scenario, signal_only=mode == "per-device",
                         back_ms=86_400_000 if eff_speed > 1.0 else 0)
        if rate is not None and scenario is not None:
            eff_speed = sim_speed(plan.step_ms, tick_interval_s(plan.step_ms, len(plan.city), 1.0, rate))
    except (LampwatchError, ValueError) as exc:
        raise _fail(exc) from None
    from simulator.demo import start_broker

    try:
        with (start_broker("auto") if embedded else _null_broker(host, port, mqtt_version)) as (h, p, ver, desc):
            err.print(f"[dim]run: broker {desc}, {len(plan.city)} poles, {len(plan.faults)} faults, "
                      f"mode {mode}[/dim]", highlight=False)
            if mode == "multiplexed":
                st = run_multiplexed(h, p, plan, mqtt_version=ver, speed=eff_speed, rate=rate,
                                     duration_s=duration or None, hostile_pct=hostile_pct, labels_out=labels,
                                     console=err)
            else:
                wd = workdir or Path(tempfile.mkdtemp(prefix="lampwatch-agents-"))
                st = run_per_device(h, p, plan, workdir=wd, speed=eff_speed, duration_s=duration or None,
                                    hostile_pct=hostile_pct, labels_out=labels, console=err, credentials=creds)
    except (LampwatchError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    print(st.line())


def _null_broker(host: str, port: int, version: int) -> Any:
    import contextlib

    @contextlib.contextmanager
    def cm() -> Any:
        yield host, port, version, f"{host}:{port}"

    return cm()


@app.command()
def scenario(
    name: Annotated[str | None, typer.Argument(help="bundled scenario name or a scenario .toml file")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the bundled scenarios and exit")] = False,
    out: Annotated[Path | None, typer.Option(help="folder for labels.csv, lampwatch.sqlite, run.json "
                                             "[default: ./lampwatch-<name>]")] = None,
    broker: Annotated[str, typer.Option(help="auto | mosquitto | embedded")] = "auto",
    speed: Annotated[float, typer.Option(help="simulated seconds per real second (0 = as fast as it goes)",
                                         min=0)] = 0.0,
    until: Annotated[str | None, typer.Option(help="run only this much simulated time, e.g. 30m")] = None,
) -> None:
    """Run a scenario end to end on embedded defaults (broker, gateway, SQLite store), then score it.

    Prints a summary line, then the score line. The folder it writes can be scored again or reported.

    Example: lampwatch-sim scenario safety-drill --out runs/safety --until 2h
    """
    from simulator.scenario import bundled_scenarios

    if list_:
        from simulator.scenario import load_scenario

        for p in bundled_scenarios():
            try:
                sc = load_scenario(p)
                print(f"{p.stem:<16} {sc.city.poles:>6} poles  {sc.duration_ms / 3_600_000:>6.1f} h  "
                      f"{len(sc.faults):>4} faults  {sc.description}")
            except LampwatchError as exc:
                print(f"{p.stem:<16} (broken: {exc})")
        return
    if name is None:
        raise _fail("give a scenario name or file (see --list)")
    if broker not in ("auto", "mosquitto", "embedded"):
        raise _fail(f"--broker must be auto, mosquitto or embedded, not {broker!r}")
    until_ms = _duration_ms(until, "--until") if until else None
    if until_ms is not None and until_ms <= 0:
        raise _fail("--until must be > 0")
    from simulator.run import resolve_scenario, run_scenario

    try:
        sc = resolve_scenario(name)
    except LampwatchError as exc:
        raise _fail(exc) from None
    out_dir = out or Path(f"lampwatch-{sc.name}")
    if out_dir.exists() and not out_dir.is_dir():
        raise _fail(f"--out {out_dir} is a file, not a folder")
    try:
        res = run_scenario(name, out_dir, broker=broker, speed=speed, until_ms=until_ms, console=err)
        from ingest.sqlite import SqliteStore
        from simulator.alarms_io import score_store

        reader = SqliteStore(out_dir / "lampwatch.sqlite", readonly=True)
        try:
            ss = score_store(reader, out_dir / "labels.csv", step_ms=res.step_ms, pole_days=res.pole_days)
        finally:
            reader.close()
    except (LampwatchError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    _score_table(ss)
    print(res.line())
    print(ss.line())


def _score_table(ss: Any) -> None:
    from rich.table import Table

    def f(x: float, nd: int) -> str:
        return "–" if x != x else f"{x:.{nd}f}"

    t = Table(title=f"detections vs ground truth: {ss.labels} labels ({ss.unscored} injected-traffic labels "
                    f"not scored), {ss.alarms} alarms, {ss.poles} poles, {ss.pole_days:.2f} pole-days, "
                    f"step {ss.step_ms / 1000:g} s", title_justify="left")
    for col in ("kind", "labels", "detected", "false alarms", "precision", "recall", "latency p50",
                "latency p95", "false/1000 pole-days"):
        t.add_column(col, justify="left" if col == "kind" else "right")
    rows = [k for k in ss.score.per_kind.values() if k.labels or k.fp]
    for k in [*rows, ss.score.overall]:
        t.add_row(k.kind, str(k.labels), str(k.detected), str(k.fp), f(k.precision, 3), f(k.recall, 3),
                  f(k.latency_median_samples, 1), f(k.latency_p95_samples, 1),
                  f(k.false_alarms_per_1000_pole_days, 1), style="bold" if k is ss.score.overall else None)
    Console(stderr=True, width=max(err.width, 150)).print(t)  # never squeeze the columns


def _open_reader(store: str | None, influx_url: str | None, db: str | None) -> Any:
    from ingest.stores import open_reader

    try:
        return open_reader(store, influx_url=influx_url, db=db)
    except (LampwatchError, ValueError) as exc:
        raise _fail(exc) from None


@app.command()
def score(
    labels: Annotated[Path, typer.Option(help="ground-truth labels CSV (from run --labels or scenario)")],
    store: Annotated[str | None, typer.Option(help="sqlite:PATH of the store holding the alerts")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x URL instead of --store")] = None,
    db: Annotated[str | None, typer.Option(help="InfluxDB database (with --influx-url)")] = None,
    step_s: Annotated[float | None, typer.Option(help="sampling step in seconds [default: seen in the store]",
                                                 min=0.001)] = None,
    pole_days: Annotated[float | None, typer.Option(help="exposure for the false-alarm rate [default: poles "
                                                    "x device-time span in the store]", min=0.000001)] = None,
) -> None:
    """Score the alarms a store holds (its alerts measurement) against ground-truth labels.

    Prints a table per fault kind and the line
    faults: precision=<p> recall=<r> latency_p50_samples=<l> false_per_1000_pole_days=<f>

    Example: lampwatch-sim score --labels runs/safety/labels.csv --store sqlite:runs/safety/lampwatch.sqlite
    """
    from simulator.alarms_io import score_store

    lbs = _read_labels(labels)
    reader = _open_reader(store, influx_url, db)
    try:
        ss = score_store(reader, lbs, step_ms=None if step_s is None else round(step_s * 1000), pole_days=pole_days)
    except (LampwatchError, ValueError) as exc:
        raise _fail(exc) from None
    finally:
        reader.close()
    _score_table(ss)
    print(ss.line())


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="the HTML file to write")] = Path("report.html"),
    run_dir: Annotated[Path | None, typer.Option("--run", help="a scenario run folder (labels.csv, "
                                                 "lampwatch.sqlite, run.json)")] = None,
    store: Annotated[str | None, typer.Option(help="sqlite:PATH (instead of --run)")] = None,
    influx_url: Annotated[str | None, typer.Option(help="InfluxDB 1.x URL (instead of --run)")] = None,
    db: Annotated[str | None, typer.Option(help="InfluxDB database (with --influx-url)")] = None,
    labels: Annotated[Path | None, typer.Option(help="labels CSV (with --store / --influx-url)")] = None,
    step_s: Annotated[float | None, typer.Option(help="sampling step in seconds [default: from the run]",
                                                 min=0.001)] = None,
    title: Annotated[str | None, typer.Option(help="page title")] = None,
) -> None:
    """Write one self-contained HTML report: fleet map, fault timelines, detections vs ground truth, throughput.

    Inline SVG and CSS only: it opens offline, from a mail attachment, anywhere.

    Example: lampwatch-sim report --run runs/safety --out report.html
    """
    from simulator.report import load_run_meta, write_report

    meta: dict[str, Any] = {}
    if run_dir is not None:
        if store or influx_url:
            raise _fail("give --run, or --store/--influx-url with --labels, not both")
        if not (run_dir / "lampwatch.sqlite").is_file():
            raise _fail(f"{run_dir} is not a scenario run folder (no lampwatch.sqlite)")
        store = f"sqlite:{run_dir / 'lampwatch.sqlite'}"
        labels = labels or run_dir / "labels.csv"
        try:
            meta = load_run_meta(run_dir)
        except ValueError as exc:
            raise _fail(f"{run_dir / 'run.json'}: {exc}") from None
    if labels is None:
        raise _fail("give --run DIR, or --labels with --store/--influx-url")
    if not out.parent.exists():
        raise _fail(f"folder {out.parent} does not exist (for --out)")
    lbs = _read_labels(labels)
    reader = _open_reader(store, influx_url, db)
    try:
        write_report(out, reader, lbs, run_meta=meta, title=title,
                     step_ms=None if step_s is None else round(step_s * 1000))
    except (LampwatchError, ValueError, OSError) as exc:
        raise _fail(exc) from None
    finally:
        reader.close()
    print(f"report: out={out} bytes={out.stat().st_size} labels={len(lbs)}")


main = entry_point(app, "lampwatch-sim")
