"""``lampwatch-ingest``: operations commands (database setup, rollups, Grafana, broker credentials).

A thin layer over :mod:`ingest.setup`, :mod:`ingest.rollup`, :mod:`ingest.grafana` and
:mod:`ingest.credentials`. A user mistake (bad argument, unreachable server, refused request) ends
in one line on stderr and a non-zero exit (2 for usage/configuration, 1 otherwise), never a
traceback. Each command ends with one ``key=value`` summary line a script can parse.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from contract.cli import LogFormatOpt, LogLevelOpt, VersionOpt, fail, root_options
from contract.errors import ConfigError, LampwatchError
from contract.ids import PoleId
from ingest import credentials as creds
from ingest import grafana as graf
from ingest import rollup as roll
from ingest import setup as dbsetup

app = typer.Typer(name="lampwatch-ingest", add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False, help=__doc__.split("\n\n")[0] if __doc__ else None)
grafana_app = typer.Typer(no_args_is_help=True, help="Generate Grafana dashboards or push them to a Grafana.")
app.add_typer(grafana_app, name="grafana")
out = Console(highlight=False, markup=False, soft_wrap=True)  # soft_wrap: a line is never broken at 80 columns
err = Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


@app.callback()
def _root(_version: VersionOpt = False, log_level: LogLevelOpt = None, log_format: LogFormatOpt = "text") -> None:
    """lampwatch stores: InfluxDB setup, rollups, credentials, Grafana provisioning."""
    root_options(log_level, log_format)

Url = Annotated[str, typer.Option(help="InfluxDB base URL (1.x, or 2.x's v1-compatible API)",
                                  envvar="LAMPWATCH_INFLUX_URL")]
Db = Annotated[str, typer.Option("--db", help="database (2.x: the bucket, via its DBRP mapping)",
                                 envvar="LAMPWATCH_INFLUX_DB")]
User = Annotated[str | None, typer.Option(help="InfluxDB user (2.x: any name, with the token as password)",
                                          envvar="LAMPWATCH_INFLUX_USERNAME")]
Password = Annotated[str | None, typer.Option(help="InfluxDB password or 2.x token",
                                              envvar="LAMPWATCH_INFLUX_PASSWORD")]


def _store(url: str, db: str, username: str | None, password: str | None, rp: str | None = None):  # type: ignore[no-untyped-def]
    from ingest.influx1 import Influx1Store

    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, got {url!r}")
    return Influx1Store(url, db, username=username, password=password, retention_policy=rp, create=False)


def _duration(text: str, what: str) -> str:
    try:
        dbsetup.duration_seconds(text)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return text


@app.command()
def setup(
    url: Url = "http://127.0.0.1:8086",
    db: Db = "lampwatch",
    username: User = None,
    password: Password = None,
    raw: Annotated[str, typer.Option(help="raw retention (default policy)")] = "30d",
    rollup_1m: Annotated[str, typer.Option("--rollup-1m", help="1-minute rollup retention")] = "730d",
    rollup_1h: Annotated[str, typer.Option("--rollup-1h", help="1-hour rollup retention (INF: forever)")] = "INF",
    print_v2: Annotated[bool, typer.Option("--print-v2", help="only print the InfluxDB 2.x equivalent")] = False,
    org: Annotated[str, typer.Option(help="2.x organisation for --print-v2")] = "lampwatch",
) -> None:
    """Create the database and its retention policies on InfluxDB 1.x (idempotent).

    Example: lampwatch-ingest setup --url http://127.0.0.1:8086 --db lampwatch --raw 30d
    """
    wanted = dbsetup.policies(_duration(raw, "--raw"), _duration(rollup_1m, "--rollup-1m"),
                              _duration(rollup_1h, "--rollup-1h"))
    if print_v2:
        for line in dbsetup.v2_commands(db, org, wanted):
            out.print(line)
        return
    store = _store(url, db, username, password)
    try:
        done = dbsetup.setup(store, db, wanted)
    finally:
        store.close()
    for stmt in done:
        out.print(stmt)
    out.print(f"setup: database={db} changes={len(done)}")


def _instant(text: str, now: float) -> int:
    """An ISO 8601 time (UTC if no zone) or ``now``/``now-6h`` -> ns."""
    if text == "now" or text.startswith("now-"):
        ago = dbsetup.duration_seconds(text[4:]) if text != "now" else 0
        return int((now - ago) * 1e9)
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"invalid time {text!r}: use ISO 8601 (2024-05-01T00:00) or now-6h") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp()) * 1_000_000_000


@app.command()
def rollup(
    url: Url = "http://127.0.0.1:8086",
    db: Db = "lampwatch",
    username: User = None,
    password: Password = None,
    start: Annotated[str, typer.Option(help="from (ISO 8601 UTC, or now-DURATION)")] = "now-6h",
    end: Annotated[str, typer.Option(help="to (ISO 8601 UTC, or now)")] = "now",
    district: Annotated[list[str] | None, typer.Option(help="one query per district (repeatable)")] = None,
) -> None:
    """Recompute the 1-minute and 1-hour rollups of every whole hour in a time range.

    Idempotent: run it every few minutes over the last hours (late samples get folded in), or once
    over a past range to backfill.

    Example: lampwatch-ingest rollup --url http://127.0.0.1:8086 --db lampwatch --start now-6h
    """
    now = time.time()
    try:
        lo, hi = _instant(start, now), _instant(end, now)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if hi <= lo:
        raise ConfigError("--end must be after --start")
    reader = _store(url, db, username, password)
    writers = {w: _store(url, db, username, password, rp) for w, rp in roll.RETENTION_POLICY.items()}
    try:
        written = roll.run(reader, writers, lo, hi, districts=district or [None])
    finally:
        for s in (reader, *writers.values()):
            s.close()
    out.print(f"rollup: points_1m={written['1m']} points_1h={written['1h']}")


@grafana_app.command("generate")
def grafana_generate(
    out_dir: Annotated[Path, typer.Option("--out", help="directory to write dashboards/ and provisioning/ into")]
    = Path("grafana"),
    check: Annotated[bool, typer.Option(help="write nothing; exit 1 if the files differ from the generator")]
    = False,
) -> None:
    """Generate the dashboards (from the metric catalog) and the provisioning files.

    Example: lampwatch-ingest grafana generate --out grafana
    """
    if check:
        stale = graf.stale(out_dir)
        for rel in stale:
            err.print(f"stale: {out_dir / rel}")
        out.print(f"grafana check: stale={len(stale)}")
        if stale:
            raise typer.Exit(1)
        return
    written = graf.generate(out_dir)
    out.print(f"grafana generate: files={len(written)} dir={out_dir}")


@grafana_app.command("provision")
def grafana_provision(
    url: Annotated[str, typer.Option(help="Grafana base URL")],
    token: Annotated[str, typer.Option(help="Grafana service-account token", envvar="GRAFANA_TOKEN")],
    influx_url: Annotated[str | None, typer.Option(help="also create the datasource, pointing here")] = None,
    influx_db: Annotated[str, typer.Option(help="database (2.x: bucket) for the datasource")] = "lampwatch",
    influx_token: Annotated[str | None, typer.Option(help="2.x/3.x token for the datasource",
                                                     envvar="LAMPWATCH_INFLUX_TOKEN")] = None,
) -> None:
    """Push the dashboards (and optionally the datasource) to a running Grafana.

    Example: lampwatch-ingest grafana provision --url http://127.0.0.1:3000 --token $GRAFANA_TOKEN
    """
    try:
        from grafana_client import GrafanaApi
        from grafana_client.client import GrafanaException
    except ImportError:
        raise ConfigError("grafana-client is not installed: pip install 'lampwatch[grafana]'") from None
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, got {url!r}")
    ds = graf.datasource_definition(influx_url, influx_db, influx_token) if influx_url else None
    api = GrafanaApi.from_url(url, credential=token)
    try:
        uids = graf.provision(api, datasource=ds)
    except GrafanaException as exc:
        raise LampwatchError(f"grafana at {url} refused: {exc.message or exc}") from exc
    out.print(f"grafana provision: dashboards={len(uids)} folder={graf.FOLDER_UID}")


@app.command("credentials")
def credentials_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for passwd, acl and secrets.csv")],
    action: Annotated[str | None, typer.Argument(
        help="none: the whole fleet; add | remove | rotate: only the poles given, all other passwords kept",
        show_default=False)] = None,
    pole: Annotated[str | None, typer.Argument(help="one pole id, for add | remove | rotate",
                                               show_default=False)] = None,
    poles: Annotated[int | None, typer.Option(help="whole fleet: generate ids p-000000 .. p-{N-1}")] = None,
    pole_ids: Annotated[Path | None, typer.Option(help="file of pole ids, one a line (whole fleet, or "
                                                  "add | remove | rotate)")] = None,
    gateways: Annotated[int, typer.Option(help="whole fleet: gateway users lampwatch.gw-0 .. lampwatch.gw-{N-1}, "
                                          "one per gateway process")] = 1,
    hasher: Annotated[str, typer.Option(help="auto | python | mosquitto_passwd")] = "auto",
    force: Annotated[bool, typer.Option(help="replace existing files (locks deployed devices out)")] = False,
) -> None:
    """Write Mosquitto's password file and ACL for a fleet, or add, remove or rotate single poles.

    The whole fleet: one password per pole, per gateway process (lampwatch.gw-0 .. -N-1) and for the
    operators' tools (lampwatch.ops). passwd and secrets.csv (plaintext, for provisioning devices)
    are created 0600; the service users' passwords are printed once on stderr.

    add | remove | rotate change only the poles given (one id, or --pole-ids FILE) and keep every
    other line; each file is replaced atomically. Then reload the broker: kill -HUP <mosquitto pid>
    (connections already open are kept; a removed pole can no longer log in).

    Example: lampwatch-ingest credentials --poles 100 --out ./broker
    Example: lampwatch-ingest credentials add p-000100 --out ./broker
    Example: lampwatch-ingest credentials rotate --pole-ids stolen.txt --out ./broker
    """
    if hasher not in ("auto", "python", "mosquitto_passwd"):
        raise ConfigError(f"--hasher must be auto, python or mosquitto_passwd, not {hasher!r}")

    def read_ids(path: Path) -> list[str]:
        try:
            return creds.read_pole_ids(path.read_text(encoding="utf-8").splitlines())
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None

    if action is not None:
        if action not in creds.ACTIONS:
            raise ConfigError(f"unknown action {action!r}: add, remove or rotate (or none for the whole fleet)")
        if poles is not None or force or gateways != 1:
            raise ConfigError(f"credentials {action} takes a pole id or --pole-ids FILE, not --poles, "
                              "--gateways or --force")
        if (pole is None) == (pole_ids is None):
            raise ConfigError(f"credentials {action}: give exactly one of a pole id or --pole-ids FILE")
        try:
            ids = [str(PoleId(pole))] if pole is not None else read_ids(pole_ids)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        done = creds.provision(out_dir, action, ids, hasher=hasher)  # type: ignore[arg-type]
        out.print(f"credentials {action}: poles={len(done.poles)} users={done.total} passwd={done.passwd} "
                  f"secrets={done.secrets}")
        return
    if pole is not None:
        raise ConfigError(f"unexpected argument {pole!r}")
    if (poles is None) == (pole_ids is None):
        raise ConfigError("give exactly one of --poles N or --pole-ids FILE")
    ids = read_ids(pole_ids) if pole_ids is not None else creds.pole_ids(poles or 0)
    w = creds.write_credentials(out_dir, ids, gateways=gateways, hasher=hasher, force=force)  # type: ignore[arg-type]
    for user, password in w.service_users.items():
        typer.echo(f"{user} password (shown once; also in {w.secrets}): {password}", err=True)
    out.print(f"credentials: devices={w.devices} gateways={gateways} passwd={w.passwd} acl={w.acl} "
              f"secrets={w.secrets}")


@app.command("certs")
def certs_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="directory for ca.key, ca.crt, server.key, server.crt")],
    host: Annotated[list[str] | None, typer.Option(help="a name devices connect to (IP or DNS, repeatable; "
                                                   "default 127.0.0.1 and localhost)")] = None,
    days: Annotated[int, typer.Option(help="server certificate validity", min=1)] = 825,
    force: Annotated[bool, typer.Option(help="replace an existing CA (devices trusting it must be updated)")]
    = False,
) -> None:
    """Make a private CA and the broker's TLS server certificate with openssl.

    ca.crt is what devices and the gateway trust (LAMPWATCH_GATEWAY_MQTT_TLS_CA); keep ca.key
    offline (the broker needs only ca.crt, server.crt and server.key: move ca.key out of a directory
    a container mounts). Keys are P-256 and written 0600.

    Example: lampwatch-ingest certs --out broker/certs --host 127.0.0.1 --host mqtt.city.example
    """
    from ingest import broker

    written = broker.make_certs(out_dir, hosts=tuple(host or ("127.0.0.1", "localhost")), days=days, force=force)
    out.print(f"certs: files={len(written)} dir={out_dir} hosts={','.join(host or ('127.0.0.1', 'localhost'))}")


@app.command("broker-config")
def broker_config_cmd(
    broker_dir: Annotated[Path, typer.Option("--dir", help="the broker directory (passwd, acl, certs/)")],
    tls_port: Annotated[int, typer.Option(help="the devices' TLS listener", min=1, max=65535)] = 8883,
    port: Annotated[int, typer.Option(help="the plain listener for the gateway and tools, on 127.0.0.1",
                                      min=1, max=65535)] = 1883,
    template: Annotated[Path | None, typer.Option("--from", help="the container config to render from "
                                                  "(default: the repository's mosquitto.conf)")] = None,
) -> None:
    """Render DIR/mosquitto.conf for a bare-metal Mosquitto from the repository's mosquitto.conf.

    Only the /mosquitto/ paths, the ports and the plain listener's bind change; every rule stays as
    written once. As root it also hands user mosquitto (the broker drops to it) passwd, acl,
    certs/server.key and data/.

    Example: lampwatch-ingest broker-config --dir broker/ --tls-port 8883 --port 1883
    """
    from ingest import broker

    files = broker.write_bare_metal(broker_dir, template=template, tls_port=tls_port, plain_port=port)
    out.print(f"broker-config: config={files.config} owner={files.handed_to or 'unchanged'}")


def _date(text: str, what: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise fail("lampwatch-ingest", f"{what}: invalid date {text!r}: use YYYY-MM-DD") from None


@app.command()
def publish(
    since: Annotated[str, typer.Option(help="first day published (YYYY-MM-DD, local time)")],
    until: Annotated[str, typer.Option(help="first day NOT published (YYYY-MM-DD)")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory for the CSV, GeoJSON and HTML files")],
    url: Url = "http://127.0.0.1:8086",
    db: Db = "lampwatch",
    username: User = None,
    password: Password = None,
    sqlite: Annotated[Path | None, typer.Option(help="read this SQLite store instead of InfluxDB")] = None,
    source: Annotated[str, typer.Option(help="InfluxDB: raw (aggregate raw telemetry) or rollup "
                                             "(read rollup_1h)")] = "raw",
    min_poles: Annotated[int, typer.Option(help="withhold a district-day with fewer reporting poles")] = 5,
    interval_s: Annotated[float, typer.Option(help="the fleet's reporting interval (expected readings)")]
    = 60.0,
    utc_offset: Annotated[int, typer.Option(help="local time = UTC + this many hours")] = 0,
) -> None:
    """Write open data (district-by-day aggregates only) as CSV, GeoJSON and a static HTML page.

    Example: lampwatch-ingest publish --since 2024-05-01 --until 2024-05-08 --out ./opendata
    """
    from ingest import opendata as od
    from ingest import opendata_io as odio
    from ingest import publish as pub

    prog = "lampwatch-ingest"
    try:
        params = od.Params(_date(since, "--since"), _date(until, "--until"), utc_offset_h=utc_offset,
                           interval_s=interval_s, min_poles=min_poles)
    except ValueError as exc:
        raise fail(prog, exc) from None
    if source not in ("raw", "rollup"):
        raise fail(prog, f"--source must be raw or rollup, not {source!r}")
    try:
        reader: odio.Reader = (odio.SqliteReader(sqlite) if sqlite is not None else
                               odio.InfluxReader(_store(url, db, username, password), source))  # type: ignore[arg-type]
    except (ConfigError, LampwatchError) as exc:
        raise fail(prog, exc) from None
    try:
        poles = reader.poles(params.alert_range()[1])  # first: an unreachable store fails before progress
        alerts = reader.alerts(*params.alert_range())
        lo, hi = params.read_range()
        spans = [(t, min(t + od.DAY_NS, hi)) for t in range(lo, hi, od.DAY_NS)]
        with Progress(TextColumn("publish"), BarColumn(), MofNCompleteColumn(), TextColumn("days read"),
                      console=err, transient=False) as progress:
            task = progress.add_task("read", total=len(spans))

            def hours() -> Iterator[od.PoleHour]:  # one day in memory at a time
                for a, b in spans:
                    yield from reader.hours(a, b)
                    progress.advance(task)

            result = od.aggregate(hours(), alerts, poles, params)
    except LampwatchError as exc:
        raise fail(prog, exc, 1) from None
    finally:
        reader.close()
    written = pub.write(out_dir, pub.render(result))
    out.print(f"publish: days={len(params.days())} districts={len(result.districts)} "
              f"published={result.published} suppressed={result.suppressed} files={len(written)} out={out_dir}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the app, turns every expected failure into one line + exit code."""
    try:
        rv = app(args=argv, prog_name="lampwatch-ingest", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("lampwatch-ingest: aborted")
        return 130
    except typer.TyperException as exc:  # usage: unknown option, missing or bad value, no command
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]
        else:
            err.print(f"lampwatch-ingest: error: {exc.format_message()}")  # type: ignore[attr-defined]
        return 2
    except ConfigError as exc:
        err.print(f"lampwatch-ingest: error: {exc}")
        return 2
    except (LampwatchError, OSError) as exc:
        err.print(f"lampwatch-ingest: error: {exc}")
        return 1
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
