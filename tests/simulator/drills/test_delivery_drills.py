"""The delivery drills (docs/delivery.md), in short form, on real Mosquitto + InfluxDB 1.6.7 and a real
gateway process: each must PASS. `lampwatch-sim drill all` runs them full size."""

from __future__ import annotations

import re

import pytest

from simulator.drills import delivery_drills as dd
from simulator.drills.gateway_drills import DrillSpec
from tests.servers import need, need_root

LINE = re.compile(r"drill [a-z-]+: published=\d+ stored=\d+ duplicates=\d+ lost=-?\d+ verdict=(PASS|FAIL)")
SHORT = DrillSpec(poles=40, seconds=6, rate_hz=5, settle_s=90)


@pytest.fixture(autouse=True)
def _servers() -> None:
    need("mosquitto", "influxd")


def _check(res: dd.DrillResult) -> None:
    line = res.line()
    assert LINE.fullmatch(line), line
    assert res.failed_checks == (), res.failed_checks
    assert line.endswith("lost=0 verdict=PASS") and " duplicates=0 " in line, line
    assert res.published > 0 and res.stored > 0


def test_gateway_restart_with_sigterm_loses_nothing() -> None:
    res = dd.gateway_restart(SHORT, log=lambda _m: None)
    _check(res)
    assert res.stored == res.published == 40 * 30


def test_poison_pills_get_one_small_dead_letter_each_and_stall_nothing() -> None:
    res = dd.poison_pill(SHORT, log=lambda _m: None)
    _check(res)
    assert res.rejected == 3 and res.extra["deadletters"] == 3 and res.extra["disconnects"] == 0


def test_store_refusals_are_found_dead_lettered_and_counted_and_401_is_spooled() -> None:
    res = dd.store_reject(DrillSpec(poles=20, seconds=8, rate_hz=10, step_ms=60_000, settle_s=90),
                          auth_fix_after_s=3, log=lambda _m: None)
    _check(res)
    assert res.rejected > 0 and res.extra["refused_by_store"] == res.rejected


def test_a_full_spool_disk_holds_acks_says_so_and_resumes_by_itself() -> None:
    need_root("mounting a size-capped tmpfs")
    res = dd.spool_disk_full(DrillSpec(poles=40, seconds=10, rate_hz=5, settle_s=90), disk="512k",
                             log=lambda _m: None)
    _check(res)


def test_rebooted_devices_that_restart_their_sequence_lose_nothing_silently() -> None:
    res = dd.device_reboot(poles=10, log=lambda _m: None)
    _check(res)
    assert res.rejected == res.extra["conflicts"] == 5 * 10  # odd poles kept their boot id


def test_broker_crash_keeps_what_it_acknowledged_before_the_autosave_bound() -> None:
    assert dd.repo_autosave_interval() < dd.BROKER_CRASH_CLAIM_S / 2  # the shipped config makes the claim true
    res = dd.broker_crash(400, log=lambda _m: None)
    _check(res)
    assert 0 <= res.extra["window_s"] < dd.BROKER_CRASH_CLAIM_S  # measured, within the claim


def test_standby_takes_over_without_session_ping_pong() -> None:
    res = dd.standby_takeover(SHORT, log=lambda _m: None)
    _check(res)
    assert res.extra["takeover_s"] <= 10 and res.extra["session_swaps"] <= 1
