"""session-hijack, small size, on real Mosquitto with the repository's config: PASSes with the
identity rule and FAILs without it (so the drill can tell the difference)."""

from __future__ import annotations

import re

import pytest

from simulator.drills.identity_drills import session_hijack
from tests.servers import need

LINE = re.compile(r"drill session-hijack: published=\d+ stored=\d+ duplicates=\d+ lost=-?\d+ verdict=(PASS|FAIL)")


@pytest.fixture(autouse=True)
def _servers() -> None:
    need("mosquitto", "openssl")


def test_session_hijack_passes_on_the_repository_config() -> None:
    res = session_hijack(60, poles=2, log=lambda _m: None)
    assert LINE.fullmatch(res.line()), res.line()
    assert res.failed_checks == (), res.failed_checks
    assert res.line() == "drill session-hijack: published=60 stored=60 duplicates=0 lost=0 verdict=PASS"


def test_session_hijack_fails_without_use_username_as_clientid() -> None:
    res = session_hijack(30, poles=2, identity=False, settle_s=10, log=lambda _m: None)
    assert res.line().endswith("verdict=FAIL"), res.line()
    assert res.published == 30 and res.stored == 0  # the attacker's clean start wiped the gateway's backlog
    assert any("session was gone" in c for c in res.failed_checks), res.failed_checks
