"""Edge fixtures: recording MQTT peers and agent subprocesses, all cleaned up at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.servers import Mosquitto
from tests.edge.edge_helpers import AgentProcess, Recorder


@pytest.fixture
def recorder_factory() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(broker: Mosquitto, **kw: Any) -> Recorder:
        r = Recorder(broker, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


@pytest.fixture
def agent_process() -> Iterator[Callable[[Path, Path], AgentProcess]]:
    made: list[AgentProcess] = []

    def make(config: Path, log: Path) -> AgentProcess:
        p = AgentProcess(config, log)
        made.append(p)
        return p

    yield make
    for p in made:
        p.cleanup()
