"""Thread names the operating system sees (I/O shell).

Python 3.11 names its threads for Python only: ``top -H``, ``ps -L`` and ``/proc/<pid>/task/<tid>/comm`` show
every thread of the gateway as ``python``, so an operator with a gateway at 100 % CPU cannot tell the
pipeline from the state saver, and ``bench/`` cannot charge CPU to a thread. Each long-lived gateway
thread names itself at its start (``prctl(PR_SET_NAME)`` acts on the calling thread only, so no thread is
named after it may have ended). Linux keeps 15 bytes; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

_PR_SET_NAME = 15
#: the names, 15 bytes at most (what `top -H` shows; docs/operators.md)
PIPELINE, OUTPUT, SAVER, OPS, NOTIFIER, MQTT = (
    "lw-pipeline", "lw-output", "lw-saver", "lw-ops", "lw-notify", "lw-mqtt")


def _prctl() -> Callable[..., Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def name_this_thread(name: str) -> None:
    """Give the calling thread ``name`` (cut to 15 bytes) for the OS; never raises."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, ctypes.c_char_p(name.encode("ascii", "replace")[:15]), 0, 0, 0)
