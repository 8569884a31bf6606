"""Detectors under the shared conformance suite: add a factory here to enrol a new detector."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gateway.detect.stream import DetectorParams, StreamDetector

FACTORIES: dict[str, Callable[[], StreamDetector]] = {
    "stream-default": lambda: StreamDetector(DetectorParams(), capacity=4),
    "stream-short-warmup": lambda: StreamDetector(DetectorParams(warmup=5, a_level=0.05), capacity=1),
}


@pytest.fixture(params=sorted(FACTORIES))
def make_detector(request: pytest.FixtureRequest) -> Callable[[], StreamDetector]:
    return FACTORIES[request.param]
