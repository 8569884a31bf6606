"""Score lampwatch's detector on NAB: ``python -m bench.eval [--nab DIR] [--out DIR]``.

Prints ``nab: standard=<x> low_fp=<y> low_fn=<z>`` (normalised NAB scores, 2 decimals), then the line of
``faults_line()`` if it returns one. The corpus is read from ``--nab``, else ``$LAMPWATCH_NAB_DIR``, else
``../shared/nab`` next to the repository.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from gateway.detect import nab
from gateway.detect.replay import replay_nab

REPO = Path(__file__).resolve().parent.parent


def default_nab_dir() -> Path:
    env = os.environ.get("LAMPWATCH_NAB_DIR")
    return Path(env) if env else REPO.parent / "shared" / "nab"


def nab_line(nab_dir: Path, out_dir: Path | None = None) -> str:
    """Replay the corpus through the detector, write NAB result files, score them from disk."""
    with tempfile.TemporaryDirectory() as tmp:
        results = out_dir or Path(tmp)
        layouts, _ = replay_nab(nab_dir, results, name="lampwatch")
        scores = nab.score_results(nab_dir, "lampwatch", results_dir=results, layouts=layouts)
    return nab.summary_line(scores)


def faults_line() -> str | None:
    """HOOK: simulator fault-injection scoring (a teammate adds it). Return one summary line or None."""
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eval", description=__doc__.splitlines()[0])
    ap.add_argument("--nab", type=Path, default=None, help="NAB corpus folder (data/, labels/)")
    ap.add_argument("--out", type=Path, default=None, help="keep NAB result files here")
    args = ap.parse_args(argv)
    nab_dir = args.nab or default_nab_dir()
    if not (nab_dir / "labels" / "combined_windows.json").is_file():
        print(f"error: no NAB corpus at {nab_dir} (use --nab DIR or LAMPWATCH_NAB_DIR)", file=sys.stderr)
        return 2
    print(nab_line(nab_dir, args.out), flush=True)
    extra = faults_line()
    if extra is not None:
        print(extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
