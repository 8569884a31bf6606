"""Every benchmark in one run: ``python -m bench [--quick] [--only NAME]`` (``make bench``).

Runs, in this order, ``bench_sim`` (``sim: ...``), ``bench_detect`` (``detect: ...``), ``bench_edge``
(``edge: ...``; skipped with a line saying why if it cannot be imported) and ``bench_gateway`` (a table,
``sim: msgs_s=<n> agents=<n>`` and, as the last line, ``bench: ...``). ``--quick`` runs each one short
(used by a smoke test); ``--only NAME`` (sim, detect, edge, gateway; repeatable) runs just those.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import Any

NAMES = ("sim", "detect", "edge", "gateway")


def _sim(mod: ModuleType, quick: bool) -> None:
    if not quick:
        mod.main()
        return
    r = mod.run(poles=2_000, ticks=3)
    print(f"sim: msgs_s={r['msgs_s']:.0f} pydantic_msgs_s={r['pydantic_msgs_s']:.0f} ratio={r['ratio']:.1f}")


def _detect(mod: ModuleType, quick: bool) -> None:
    if not quick:
        mod.main()
        return
    r = mod.run(n_series=20_000, rounds=6)
    print(f"detect: updates_s={r['updates_s']:.0f} bytes_per_series={r['bytes_per_series']:.0f}")


def _edge(mod: ModuleType, quick: bool) -> None:
    if not quick:
        mod.main()
        return
    r = mod.footprint(warmup_s=2.0, window_s=3.0)
    print(f"edge: rss_mb={r['rss_mb']:.1f} cpu_pct={r['cpu_pct']:.2f} uss_mb={r['uss_mb']:.1f} (quick)")


def _gateway(mod: ModuleType, quick: bool) -> None:
    mod.report(mod.run(mod.quick_spec() if quick else mod.Spec()))


RUNNERS: dict[str, tuple[str, Callable[[ModuleType, bool], None]]] = {
    "sim": ("bench.bench_sim", _sim),
    "detect": ("bench.bench_detect", _detect),
    "edge": ("bench.bench_edge", _edge),
    "gateway": ("bench.bench_gateway", _gateway),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    ap.add_argument("--only", action="append", choices=NAMES, metavar="NAME",
                    help=f"run only this benchmark ({', '.join(NAMES)}); repeatable")
    a = ap.parse_args(argv)
    chosen = [n for n in NAMES if not a.only or n in a.only]
    failed = 0
    for name in chosen:
        module, runner = RUNNERS[name]
        try:
            mod: Any = importlib.import_module(module)
        except Exception as exc:  # an optional benchmark whose dependencies are missing
            print(f"{name}: skipped ({module} failed to import: {type(exc).__name__}: {exc})", flush=True)
            continue
        t0 = time.monotonic()
        try:
            runner(mod, a.quick)
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            print(f"{name}: failed ({type(exc).__name__}: {exc})", flush=True)
        print(f"# {name} took {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
