"""One rule for every test that needs a real server binary: fail under CI=true, skip elsewhere."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import pytest

from testbed.servers import ServerMissing, require


def missing(reason: object) -> NoReturn:
    """CI must never go green by skipping a real-server test, so under CI=true this fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI=true: {reason}", pytrace=False)
    pytest.skip(str(reason))  # outside CI only: a developer without the Debian packages


def need(*binaries: str) -> None:
    """Fail (CI) or skip (elsewhere) unless every binary is installed."""
    for b in binaries:
        try:
            require(b)
        except ServerMissing as exc:
            missing(exc)


def need_root(why: str) -> None:
    """Fail (CI) or skip (elsewhere) unless the tests run as root (CI does: it installs with apt-get)."""
    if os.geteuid() != 0:
        missing(f"needs root: {why}")


def need_linux(why: str) -> None:
    """Fail (CI) or skip (elsewhere) off Linux (/proc, prctl, pagemap)."""
    if not sys.platform.startswith("linux"):
        missing(f"needs Linux: {why}")
