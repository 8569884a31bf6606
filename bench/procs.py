"""Process helpers of the gateway bench: CPU and memory from /proc, stopping children, a child whose
stdout lines a thread reads (the raw/naive consumers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any


def vm_hwm_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid: int | None) -> float:
    """utime + stime of a live process, in seconds (0 when it is gone)."""
    if pid is None:
        return 0.0
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def thread_cpu_s(pid: int | None) -> dict[str, float]:
    """utime + stime of each thread of a live process by its OS name (``/proc/<pid>/task/<tid>/comm``;
    the gateway names its threads: ``gateway.osthread``), threads of one name summed; {} when it is gone.
    A thread that ended takes its CPU with it: read the long-lived ones."""
    out: dict[str, float] = {}
    if pid is None:
        return out
    tck = os.sysconf("SC_CLK_TCK")
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError, ValueError):
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tck
    return out


def terminate(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LineProc:
    """A child process whose stdout lines a thread reads: ``ready``, ``n <count>``, ``p <pole> <seq> <t>``."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True,
                                     text=True, bufsize=1)
        self.ready = threading.Event()
        self.count = 0
        self.seen: dict[tuple[str, int], float] = {}
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "ready":
                self.ready.set()
            elif parts[0] == "n":
                self.count = int(parts[1])
            elif parts[0] == "p":
                self.seen.setdefault((parts[1], int(parts[2])), float(parts[3]))

    def wait_ready(self, timeout: float = 30.0) -> None:
        if not self.ready.wait(timeout):
            raise RuntimeError(f"consumer {self.proc.args!r} not ready within {timeout:.0f} s")

    def stop(self) -> None:
        terminate(self.proc)
        self._t.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()



def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0

