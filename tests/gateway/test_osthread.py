"""The gateway's threads carry their names to the OS (top -H, /proc/<pid>/task/<tid>/comm)."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway import osthread
from tests.servers import need_linux


def test_a_thread_names_itself_for_the_os_and_only_itself() -> None:
    need_linux("prctl(PR_SET_NAME)")
    names: list[str] = []
    step, done = threading.Semaphore(0), threading.Event()

    def comm() -> str:
        return Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip()

    def live() -> None:
        osthread.name_this_thread("lw-a-name-longer-than-15-bytes")
        names.append(comm())
        osthread.name_this_thread(osthread.SAVER)
        names.append(comm())
        step.release()
        done.wait(10)

    t = threading.Thread(target=live)
    t.start()
    try:
        assert step.acquire(timeout=10)
        assert names == ["lw-a-name-longe", "lw-saver"]  # Linux keeps 15 bytes
        assert comm() != "lw-saver"  # the caller's own name only
    finally:
        done.set()
        t.join()
    assert all(len(n.encode()) <= 15 for n in (osthread.PIPELINE, osthread.OUTPUT, osthread.SAVER, osthread.OPS,
                                               osthread.NOTIFIER, osthread.MQTT))
