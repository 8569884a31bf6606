"""One active gateway per identity: an exclusive lock on a file in the state directory.

A hot standby runs the same command with the same settings (same client id, same ``state_dir``) and
waits here; it never connects to the broker while the active process holds the lease, so the two can
never take the MQTT session from each other. When the active process dies (kill -9, crash, OOM, its
machine's kernel releases the lock) the standby gets the lease at once, then connects and takes over
the persistent session with every unacknowledged message, the disk spool and the alarm state.

``fcntl.lockf`` (POSIX record locks) works on a local file system and on NFSv4 (where the lock is
leased: a dead client's lock is released after the server's lease time, typically 90 s). A process
that hangs while holding the lease keeps it: run the gateway under a supervisor with a watchdog
(systemd ``WatchdogSec``) so a hung process is killed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Lease:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        """What the lease file says about its holder (the pid), for log lines."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
