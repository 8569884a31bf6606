"""``lampwatch-ops``: what an operator does with alarms and poles (typer; plain, parseable output).

    lampwatch-ops alarms list                         active alarms (retained alert topics)
    lampwatch-ops alarms ack p-000017 leakage --note "crew sent"
    lampwatch-ops alarms shelve p-000017 door_open --for 4h --note "lock broken, ticket 812"
    lampwatch-ops poles list | poles show p-000017    status, online, last seen, alarms, attributes
    lampwatch-ops cmd send p-000017 ping | sample-now | set-interval --interval-s 30
    lampwatch-ops maintenance start p-000017 --for 2h | maintenance end p-000017

Settings: env ``LAMPWATCH_OPS_*`` over an optional TOML file (``--config``, its ``[ops]`` table or the
whole file), loaded like every component's (:mod:`contract.settings`).
Every request waits (bounded) for its answer and ends with one result line; a mistake or a timeout
is one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from contract import topics
from contract.cli import fail
from contract.errors import ConfigError, LampwatchError
from contract.ids import is_pole_id
from contract.models import COMMAND, AckRequest, Alert, CommandAck, MaintenanceRequest, OpsResult, Status
from contract.settings import FileSettings, MqttVersion, load_settings
from operators.bus import Bus

PROG = "lampwatch-ops"
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lampwatch operators: alarms (list, acknowledge, shelve), poles, commands, maintenance.")
alarms_app = typer.Typer(no_args_is_help=True, help="Active alarms: list, acknowledge, shelve.")
poles_app = typer.Typer(no_args_is_help=True, help="Poles: status, online, last seen, alarms, attributes.")
cmd_app = typer.Typer(no_args_is_help=True, help="Commands to a pole's edge agent, answered by its ack.")
maint_app = typer.Typer(no_args_is_help=True, help="Maintenance windows (door-open alarms are expected then).")
app.add_typer(alarms_app, name="alarms")
app.add_typer(poles_app, name="poles")
app.add_typer(cmd_app, name="cmd")
app.add_typer(maint_app, name="maintenance")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML settings file, section [ops] "
                                                "(env LAMPWATCH_OPS_* overrides it)")]
DistrictOpt = Annotated[str | None, typer.Option(help="the pole's district (default: read from its retained "
                                                 "status)")]
_IDENT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class NoAnswer(LampwatchError):
    """Nobody answered a request in time (exit code 1, not 2: the command itself was fine)."""


class OpsSettings(FileSettings):
    model_config = SettingsConfigDict(env_prefix="LAMPWATCH_OPS_", extra="forbid", frozen=True)

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(1883, ge=1, le=65535)
    mqtt_version: MqttVersion = 5
    mqtt_username: str | None = None  # production: lampwatch.ops (docs/operators.md)
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: str | None = None
    mqtt_tls_cert: str | None = None
    mqtt_tls_key: str | None = None
    operator: str = "operator"  # who acknowledges (shown on the alarm); env LAMPWATCH_OPS_OPERATOR
    alertmanager_url: str | None = None  # shelving creates a silence there
    store: Literal["auto", "sqlite", "influx1", "influx2"] = "auto"  # last seen (poles list/show)
    sqlite_path: str = ".lampwatch/lampwatch.sqlite"
    influx_url: str | None = None
    influx_db: str = "lampwatch"
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    inventory_path: str | None = None  # poles show: the inventory record beside what the pole declares
    retained_wait_s: float = Field(1.5, gt=0)  # how long to collect retained state

    def bus(self) -> Bus:
        return Bus(self.mqtt_host, self.mqtt_port, username=self.mqtt_username,
                   password=self.mqtt_password.get_secret_value() if self.mqtt_password else None,
                   mqtt_version=self.mqtt_version, tls_ca=self.mqtt_tls_ca, tls_cert=self.mqtt_tls_cert,
                   tls_key=self.mqtt_tls_key)


def load(config: Path | None) -> OpsSettings:
    s = load_settings(OpsSettings, config, section="ops", what="ops setting")
    if not _IDENT.fullmatch(s.operator):
        raise ConfigError(f"operator {s.operator!r} must match {_IDENT.pattern}")
    return s


def _fail(exc: object, code: int = 2) -> typer.Exit:
    return fail(PROG, exc, code)


def parse_duration_s(text: str) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` or plain seconds; raises ValueError."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if m is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 1d)")
    v = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)]
    if v <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return v


def _iso(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return f"ops-{int(time.time() * 1000)}-{secrets.token_hex(3)}"


# --- retained state ------------------------------------------------------------------------------
def read_alerts(bus: Bus, wait_s: float) -> list[Alert]:
    out = []
    for _t, p in bus.retained(topics.filter_for("alert"), wait_s).items():
        try:
            out.append(Alert.model_validate_json(p))
        except ValueError:
            continue
    return sorted(out, key=lambda a: (a.district, a.pole, a.key))


def read_statuses(bus: Bus, wait_s: float, pole: str = "+") -> dict[str, Status]:
    out: dict[str, Status] = {}
    for _t, p in bus.retained(f"{topics.ROOT}/+/{pole}/status", wait_s).items():
        try:
            st = Status.model_validate_json(p)
        except ValueError:
            continue
        out[st.pole] = st
    return out


def is_online(status: Status | None, alerts: list[Alert]) -> bool:
    """The one definition of online (the gateway's, Grafana's): the pole's last status is not offline
    and it has no active ``pole_offline`` alarm (which the gateway raises for an offline status, the
    broker's Last Will, and for silence longer than 3 x the reporting interval)."""
    if status is not None and status.state == "offline":
        return False
    return not any(a.kind == "pole_offline" and a.state == "raised" for a in alerts)


def _district_of(bus: Bus, s: OpsSettings, pole: str, district: str | None) -> str:
    if not is_pole_id(pole):
        raise ConfigError(f"invalid pole id {pole!r}")
    if district:
        return district
    st = read_statuses(bus, s.retained_wait_s, pole).get(pole)
    if st is None:
        raise ConfigError(f"pole {pole} has no retained status on the broker: give --district")
    return st.district


def _result(bus: Bus, topic: str, body: str, req_id: str, timeout_s: float) -> OpsResult:
    def accept(_t: str, p: bytes) -> OpsResult | None:
        try:
            r = OpsResult.model_validate_json(p)
        except ValueError:
            return None
        return r if r.id == req_id else None

    res: OpsResult | None = bus.request(topic, body, topics.ops_result(req_id), accept, timeout_s)
    if res is None:
        raise NoAnswer(f"no gateway answered request {req_id} within {timeout_s:g} s")
    return res


# --- alarms --------------------------------------------------------------------------------------
@alarms_app.command("list")
def alarms_list(config: ConfigOpt = None,
                district: Annotated[str | None, typer.Option(help="only this district")] = None,
                severity: Annotated[str | None, typer.Option(help="only this severity")] = None) -> None:
    """List the active alarms: pole, kind, severity, since when, acknowledged / shelved.

    Example: lampwatch-ops alarms list --severity critical
    """
    try:
        s = load(config)
        with s.bus() as bus:
            alerts = [a for a in read_alerts(bus, s.retained_wait_s) if a.state == "raised"]
    except LampwatchError as exc:
        raise _fail(exc) from None
    alerts = [a for a in alerts if (district is None or a.district == district)
              and (severity is None or a.severity == severity)]
    rank = {"critical": 0, "warning": 1, "info": 2}
    alerts.sort(key=lambda a: (rank.get(a.severity, 3), a.raised_at))
    typer.echo(f"{'district':<12} {'pole':<14} {'key':<24} {'severity':<9} {'since':<21} {'acknowledged':<22} "
               "shelved_until")
    for a in alerts:
        ack = f"{a.acked_by} {_iso(a.acked_at)}" if a.acked_by else "-"
        typer.echo(f"{a.district:<12} {a.pole:<14} {a.key:<24} {a.severity:<9} {_iso(a.raised_at):<21} "
                   f"{ack:<22} {_iso(a.shelved_until)}")
    acked = sum(1 for a in alerts if a.acked_by)
    shelved = sum(1 for a in alerts if a.shelved_until and a.shelved_until > time.time() * 1000)
    typer.echo(f"alarms: active={len(alerts)} acknowledged={acked} shelved={shelved}")


NoteOpt = Annotated[str | None, typer.Option(help="why (shown on the alarm)")]
TimeoutOpt = Annotated[float, typer.Option(help="seconds to wait for the answer", min=0.1)]


def _ack_or_shelve(config: Path | None, pole: str, key: str, district: str | None, note: str | None,
                   action: Literal["ack", "shelve"], for_: str | None, timeout_s: float) -> None:
    try:
        s = load(config)
        until_ms = None
        if action == "shelve":
            if for_ is None:
                raise ConfigError("shelve needs --for (e.g. 4h)")
            until_ms = int((time.time() + parse_duration_s(for_)) * 1000)
            if not s.alertmanager_url:
                raise ConfigError("shelve needs alertmanager_url (LAMPWATCH_OPS_ALERTMANAGER_URL): "
                                  "a shelved alarm is an Alertmanager silence")
        with s.bus() as bus:
            district = _district_of(bus, s, pole, district)
            silence_id = None
            if action == "shelve":
                assert until_ms is not None and s.alertmanager_url
                silence_id = create_silence(s.alertmanager_url, pole, district, key, until_ms, s.operator,
                                            note or "shelved with lampwatch-ops")
            req = AckRequest(id=_new_id(), action=action, pole=pole, district=district, key=key, by=s.operator,
                             ts=int(time.time() * 1000), note=note, until=until_ms, silence_id=silence_id)
            res = _result(bus, topics.OPS_ACK, req.model_dump_json(), req.id, timeout_s)
    except (LampwatchError, ValueError) as exc:
        raise _fail(exc, 1 if isinstance(exc, NoAnswer) else 2) from None
    extra = f" until={_iso(until_ms)} silence={silence_id}" if action == "shelve" else ""
    typer.echo(f"{action}: pole={pole} district={district} key={key} by={s.operator}{extra} "
               f"gateway={res.gateway} ok={str(res.ok).lower()}" + (f" reason={res.reason}" if res.reason else ""))
    if not res.ok:
        raise typer.Exit(1)


@alarms_app.command("ack")
def alarms_ack(pole: Annotated[str, typer.Argument(help="pole id")],
               key: Annotated[str, typer.Argument(help="alarm key, as alarms list shows it")],
               config: ConfigOpt = None, district: DistrictOpt = None, note: NoteOpt = None,
               timeout: TimeoutOpt = 10.0) -> None:
    """Acknowledge an active alarm (who and when are recorded beside it, with the note).

    Example: lampwatch-ops alarms ack p-000017 leakage --note "crew sent"
    """
    _ack_or_shelve(config, pole, key, district, note, "ack", None, timeout)


@alarms_app.command("shelve")
def alarms_shelve(pole: Annotated[str, typer.Argument(help="pole id")],
                  key: Annotated[str, typer.Argument(help="alarm key, as alarms list shows it")],
                  for_: Annotated[str, typer.Option("--for", help="how long: 90s, 30m, 4h, 1d")],
                  config: ConfigOpt = None, district: DistrictOpt = None, note: NoteOpt = None,
                  timeout: TimeoutOpt = 10.0) -> None:
    """Shelve an active alarm: an Alertmanager silence for it, and shelved-until on the alarm.

    Example: lampwatch-ops alarms shelve p-000017 door_open --for 4h --note "lock broken"
    """
    _ack_or_shelve(config, pole, key, district, note, "shelve", for_, timeout)


def create_silence(am_url: str, pole: str, district: str, key: str, until_ms: int, by: str, comment: str) -> str:
    """POST /api/v2/silences matching this alarm on this pole; returns the silence id."""
    body = {"matchers": [{"name": n, "value": v, "isRegex": False, "isEqual": True}
                         for n, v in (("pole", pole), ("district", district), ("key", key))],
            "startsAt": _iso_ms(time.time() * 1000), "endsAt": _iso_ms(until_ms), "createdBy": by,
            "comment": comment}
    req = urllib.request.Request(f"{am_url.rstrip('/')}/api/v2/silences", data=json.dumps(body).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            sid = json.loads(resp.read())["silenceID"]
    except urllib.error.HTTPError as exc:
        with exc:
            raise LampwatchError(f"alertmanager refused the silence ({exc.code}): {exc.read()[:200]!r}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise LampwatchError(f"cannot create the silence at {am_url}: {exc}") from None
    return str(sid)


def _iso_ms(ms: float) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- poles ---------------------------------------------------------------------------------------
def _last_seen(s: OpsSettings, pole: str | None = None) -> dict[str, int] | None:
    """Last telemetry per pole from the store, or None when the store cannot say."""
    from ingest.lastseen import last_seen
    from ingest.stores import StoreConfig, open_store

    cfg = StoreConfig(store=s.store, sqlite_path=s.sqlite_path, influx_url=s.influx_url, influx_db=s.influx_db,
                      influx_username=s.influx_username, influx_password=s.influx_password)
    if cfg.kind() == "sqlite" and not Path(s.sqlite_path).exists():
        return None
    store = open_store(cfg)
    try:
        return last_seen(store, pole)
    except LampwatchError:
        return None
    finally:
        store.close()


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    return f"{max(0.0, time.time() - ms / 1000):.0f}s ago"


def _silence(alerts: list[Alert]) -> str:
    off = [a for a in alerts if a.kind == "pole_offline" and a.state == "raised"]
    if not off:
        return "ok"
    return f"silent {off[0].value:.0f}s" if off[0].value is not None else "offline"


@poles_app.command("list")
def poles_list(config: ConfigOpt = None,
               district: Annotated[str | None, typer.Option(help="only this district")] = None,
               offline: Annotated[bool, typer.Option("--offline", help="only poles that are not online")] = False
               ) -> None:
    """Every pole that has a retained status: status, silence, online, last seen, active alarms.

    Example: lampwatch-ops poles list --offline
    """
    try:
        s = load(config)
        with s.bus() as bus:
            statuses = read_statuses(bus, s.retained_wait_s)
            alerts = [a for a in read_alerts(bus, s.retained_wait_s) if a.state == "raised"]
        seen = _last_seen(s) or {}
    except LampwatchError as exc:
        raise _fail(exc) from None
    by_pole: dict[str, list[Alert]] = {}
    for a in alerts:
        by_pole.setdefault(a.pole, []).append(a)
    typer.echo(f"{'district':<12} {'pole':<14} {'status':<8} {'silence':<14} {'online':<6} {'last_seen':<12} alarms")
    n = n_online = 0
    for pole in sorted(statuses, key=lambda p: (statuses[p].district, p)):
        st, al = statuses[pole], by_pole.get(pole, [])
        if district and st.district != district:
            continue
        online = is_online(st, al)
        if offline and online:
            continue
        n += 1
        n_online += online
        typer.echo(f"{st.district:<12} {pole:<14} {st.state:<8} {_silence(al):<14} {'yes' if online else 'no':<6} "
                   f"{_age(seen.get(pole)):<12} {','.join(a.key for a in al) or '-'}")
    typer.echo(f"poles: listed={n} online={n_online} offline={n - n_online}")


@poles_app.command("show")
def poles_show(pole: Annotated[str, typer.Argument(help="pole id")], config: ConfigOpt = None) -> None:
    """One pole: status, online (by status and by silence), last seen, active alarms, attributes
    (declared by the pole, and the inventory's when an inventory is configured).

    Example: lampwatch-ops poles show p-000017
    """
    try:
        s = load(config)
        if not is_pole_id(pole):
            raise ConfigError(f"invalid pole id {pole!r}")
        with s.bus() as bus:
            st = read_statuses(bus, s.retained_wait_s, pole).get(pole)
            alerts = [a for a in read_alerts(bus, s.retained_wait_s) if a.pole == pole and a.state == "raised"]
        if st is None and not alerts:
            raise ConfigError(f"pole {pole} has no retained status or alarm on this broker")
        seen = (_last_seen(s, pole) or {}).get(pole)
        record = None
        if s.inventory_path:
            from gateway.inventory import load as load_inventory

            record = load_inventory(s.inventory_path, unknown="flag").get(pole)
    except LampwatchError as exc:
        raise _fail(exc) from None
    rows: list[tuple[str, str]] = [("pole", pole), ("district", st.district if st else alerts[0].district),
                                   ("status", f"{st.state} since {_iso(st.ts)}" if st else "-"),
                                   ("silence", _silence(alerts)), ("online", "yes" if is_online(st, alerts) else "no"),
                                   ("last_seen", f"{_iso(seen)} ({_age(seen)})" if seen else "-")]
    if st is not None:
        rows += [("boot", st.boot or "-"), ("agent_version", st.agent_version or "-"), ("firmware", st.firmware or "-"),
                 ("interval_s", f"{st.interval_s:g}" if st.interval_s else "-"),
                 ("sensors", ",".join(st.sensors) or "-"),
                 ("location", f"{st.location.lat:.5f},{st.location.lon:.5f}" if st.location else "-")]
        for k in ("rated_power_w", "nominal_voltage_v", "tilt_baseline_deg"):
            v = getattr(st, k)
            inv = getattr(record, k, None) if record is not None else None
            rows.append((f"declared.{k}", "-" if v is None else f"{v:g}"))
            if record is not None:
                rows.append((f"inventory.{k}", "-" if inv is None else f"{inv:g}"))
    for a in alerts:
        ack = f" acknowledged by {a.acked_by}" if a.acked_by else ""
        rows.append((f"alarm.{a.key}", f"{a.severity} since {_iso(a.raised_at)}{ack}: {a.explain}"))
    for k, v in rows:
        typer.echo(f"{k:<28} {v}")


# --- commands ------------------------------------------------------------------------------------
ACTIONS = {"ping": "ping", "sample-now": "sample_now", "set-interval": "set_interval"}


@cmd_app.command("send")
def cmd_send(pole: Annotated[str, typer.Argument(help="pole id")],
             action: Annotated[str, typer.Argument(help="ping | sample-now | set-interval")],
             config: ConfigOpt = None, district: DistrictOpt = None,
             interval_s: Annotated[float | None, typer.Option(help="set-interval: seconds between samples")] = None,
             metric: Annotated[str | None, typer.Option(help="set-interval: only this metric")] = None,
             timeout: TimeoutOpt = 10.0) -> None:
    """Send one command to a pole's edge agent and wait for its ack (the command JSON: docs/operators.md).

    Example: lampwatch-ops cmd send p-000017 set-interval --interval-s 30
    """
    if action not in ACTIONS:
        raise _fail(f"unknown command {action!r}; choose one of: {', '.join(ACTIONS)}")
    cid = _new_id()
    doc: dict[str, Any] = {"v": 1, "id": cid, "cmd": ACTIONS[action]}
    if action == "set-interval":
        if interval_s is None:
            raise _fail("set-interval needs --interval-s")
        doc["interval_s"] = interval_s
        if metric:
            doc["metric"] = metric
    elif interval_s is not None or metric is not None:
        raise _fail(f"{action} takes no --interval-s / --metric")
    try:
        body = COMMAND.validate_python(doc)
    except ValidationError as exc:
        e = exc.errors(include_url=False, include_input=False)[0]
        raise _fail(f"invalid command: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None
    try:
        s = load(config)
        with s.bus() as bus:
            d = _district_of(bus, s, pole, district)

            def accept(_t: str, p: bytes) -> CommandAck | None:
                try:
                    a = CommandAck.model_validate_json(p)
                except ValueError:
                    return None
                return a if a.id == cid else None

            t0 = time.monotonic()
            ack: CommandAck | None = bus.request(topics.cmd(d, pole), body.model_dump_json(exclude_none=True),
                                                 topics.cmd_ack(d, pole), accept, timeout)
            rtt = time.monotonic() - t0
    except LampwatchError as exc:
        raise _fail(exc) from None
    if ack is None:
        raise _fail(f"cmd {action} to {pole}: no ack from the pole within {timeout:g} s (id {cid})", 1)
    result = json.dumps(ack.result, separators=(",", ":"), sort_keys=True) if ack.result else "-"
    typer.echo(f"cmd: pole={pole} district={d} cmd={ACTIONS[action]} id={cid} ok={str(ack.ok).lower()} "
               f"rtt_s={rtt:.2f} result={result}" + (f" reason={ack.reason}" if ack.reason else ""))
    if not ack.ok:
        raise typer.Exit(1)


# --- maintenance ---------------------------------------------------------------------------------
def _maintenance(config: Path | None, pole: str, district: str | None, action: Literal["start", "end"],
                 for_: str | None, timeout_s: float) -> None:
    try:
        s = load(config)
        now_ms = int(time.time() * 1000)
        end = now_ms + int(parse_duration_s(for_) * 1000) if for_ else None
        with s.bus() as bus:
            d = _district_of(bus, s, pole, district)
            req = MaintenanceRequest(id=_new_id(), action=action, pole=pole, district=d, by=s.operator, ts=now_ms,
                                     start=now_ms if action == "start" else None, end=end)
            res = _result(bus, topics.OPS_MAINTENANCE, req.model_dump_json(), req.id, timeout_s)
    except (LampwatchError, ValueError) as exc:
        raise _fail(exc, 1 if isinstance(exc, NoAnswer) else 2) from None
    extra = f" until={_iso(end)}" if end else ""
    typer.echo(f"maintenance {action}: pole={pole} district={d}{extra} by={s.operator} gateway={res.gateway} "
               f"ok={str(res.ok).lower()}" + (f" reason={res.reason}" if res.reason else ""))
    if not res.ok:
        raise typer.Exit(1)


@maint_app.command("start")
def maintenance_start(pole: Annotated[str, typer.Argument(help="pole id")],
                      for_: Annotated[str, typer.Option("--for", help="window length: 30m, 2h, 1d")] = "2h",
                      config: ConfigOpt = None, district: DistrictOpt = None, timeout: TimeoutOpt = 10.0) -> None:
    """Open a maintenance window on a pole from now: an open cabinet door raises no alarm in it.

    Example: lampwatch-ops maintenance start p-000017 --for 2h
    """
    _maintenance(config, pole, district, "start", for_, timeout)


@maint_app.command("end")
def maintenance_end(pole: Annotated[str, typer.Argument(help="pole id")], config: ConfigOpt = None,
                    district: DistrictOpt = None, timeout: TimeoutOpt = 10.0) -> None:
    """End a pole's maintenance windows now (door-open alarms count again).

    Example: lampwatch-ops maintenance end p-000017
    """
    _maintenance(config, pole, district, "end", None, timeout)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"{PROG} {version('lampwatch')}")
        raise typer.Exit()


@app.callback()
def _root(_v: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                           help="print the version and exit")] = False) -> None:
    """lampwatch operators: alarms (list, acknowledge, shelve), poles, commands, maintenance."""


def main() -> None:
    app()
