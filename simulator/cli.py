"""``lampwatch-sim``: the fleet simulator's command line (typer + rich)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from contract.errors import LampwatchError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="lampwatch fleet simulator: a city of poles, faults with ground truth, drills.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """lampwatch fleet simulator: a city of poles, faults with ground truth, drills and scoring."""


def _fail(msg: object) -> typer.Exit:
    err.print(f"error: {msg}", highlight=False)
    return typer.Exit(2)


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


DRILLS = ("broker-restart", "edge-offline", "gateway-kill", "store-outage", "hostile-traffic")


@app.command()
def drill(
    name: Annotated[str, typer.Argument(help=" | ".join(DRILLS))],
    poles: Annotated[int, typer.Option(help="poles (gateway drills) or agents (edge drills)", min=1)] = 100,
    seconds: Annotated[float, typer.Option(help="publishing time in seconds", min=1)] = 20.0,
    rate_hz: Annotated[float, typer.Option(help="ticks per second (each tick: one sample per pole)", min=0.1)] = 5.0,
    outage_s: Annotated[float, typer.Option(help="store-outage / broker-restart downtime in seconds", min=1)] = 60.0,
) -> None:
    """Run one fault drill on real servers and print its verdict line.

    Example: lampwatch-sim drill store-outage --poles 50 --outage-s 60
    """
    if name not in DRILLS:
        raise _fail(f"unknown drill {name!r}; choose one of: {', '.join(DRILLS)}")
    from simulator.drills.gateway_drills import DrillSpec, gateway_kill, hostile_traffic, store_outage

    def log(msg: str) -> None:
        err.print(f"[dim]{name}:[/dim] {msg}", highlight=False)

    spec = DrillSpec(poles=poles, seconds=seconds, rate_hz=rate_hz)
    try:
        if name == "gateway-kill":
            res = gateway_kill(spec, log=log)
        elif name == "store-outage":
            spec.seconds = max(seconds, outage_s * 1.5)
            res = store_outage(spec, outage_s=outage_s, log=log)
        elif name == "hostile-traffic":
            res = hostile_traffic(spec, log=log)
        else:
            from simulator.drills import edge_drills

            fn = edge_drills.broker_restart if name == "broker-restart" else edge_drills.edge_offline
            res = fn(**edge_drills.cli_kwargs(name, agents=poles, seconds=seconds, down_s=outage_s), log=log)
    except (LampwatchError, OSError, RuntimeError) as exc:
        raise _fail(exc) from None
    for check in res.failed_checks:
        err.print(f"[red]check failed:[/red] {check}", highlight=False)
    print(res.line())
    if not res.passed:
        raise typer.Exit(1)


def main() -> None:
    app()
