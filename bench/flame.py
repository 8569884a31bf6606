"""Summarise py-spy collapsed stacks (``py-spy record --format raw``, as ``bench_gateway --pyspy DIR``
writes them): ``python -m bench.flame FILE [--top N]``.

Prints the samples per thread, then the functions with the most samples *inclusive* (on the stack) and
*self* (the leaf frame), each with its share of all samples: the flame graph's widest towers as text.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<fn>.+?) \((?P<file>[^():]+)(?::\d+)?\)$")


def _name(frame: str) -> str:
    """``Client._loop (paho/mqtt/client.py:1690)`` -> ``paho/mqtt/client.py:Client._loop``."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m["file"]
    for cut in ("site-packages/", "/lib/python3.11/", "/throughput/"):
        if cut in path:
            path = path.split(cut, 1)[1]
    return f"{path}:{m['fn']}"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(total samples, per thread, inclusive per function, self per function)."""
    total = 0
    threads: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for line in text.splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack or not n_s.isdigit():
            continue
        n = int(n_s)
        frames = stack.split(";")
        thread = frames[0].split(":", 1)[-1].strip() if frames[0].startswith("thread") else "?"
        thread = re.sub(r"-\d+$", "", re.sub(r"bench-gw\d+-\d+", "<id>", thread))
        names = [_name(f) for f in frames[1:]] if frames[0].startswith("thread") else [_name(f) for f in frames]
        total += n
        threads[thread] += n
        for fn in set(names):
            incl[fn] += n
        if names:
            leaf[names[-1]] += n
    return total, threads, incl, leaf


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.flame", description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    text = "\n".join(Path(f).read_text() for f in a.files)
    total, threads, incl, leaf = summarise(text)
    print(f"samples: {total}")
    for name, n in threads.most_common():
        print(f"  thread {name}: {n} ({100 * n / max(1, total):.1f} %)")
    for title, c in (("inclusive", incl), ("self", leaf)):
        print(f"top {a.top} {title}:")
        for fn, n in c.most_common(a.top):
            print(f"  {100 * n / max(1, total):5.1f} %  {n:6d}  {fn}")


if __name__ == "__main__":
    main()
