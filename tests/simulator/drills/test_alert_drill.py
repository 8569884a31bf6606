"""``lampwatch-sim drill alert-delivery`` at a small size (make test): real Mosquitto, InfluxDB 1.6.7,
Alertmanager and a local webhook; Alertmanager down for a few seconds mid-run."""

from __future__ import annotations

import re

from simulator.drills.alert_drills import AlertDrillResult, alert_delivery, drill_config
from tests.servers import need


def test_alert_delivery_small() -> None:
    need("mosquitto", "influxd", "prometheus-alertmanager")
    res = alert_delivery(poles=6, outage_s=5.0, settle_s=60.0, log=lambda _m: None)
    assert res.failed_checks == ()
    assert (res.faults, res.notified, res.resolved, res.lost) == (6, 6, 6, 0)
    assert res.extra["notify_dropped"] == 0
    assert re.fullmatch(r"drill alert-delivery: faults=6 notified=6 resolved=6 p99_notify_s=\d+\.\d\d lost=0 "
                        r"verdict=PASS", res.line())


def test_a_lost_notification_fails_the_verdict() -> None:
    r = AlertDrillResult(faults=3, notified=3, resolved=2, p99_notify_s=1.0, lost=1)
    assert not r.passed and r.line().endswith("lost=1 verdict=FAIL")
    assert not AlertDrillResult(3, 3, 3, 1.0, 0, ("not inhibited",)).passed


def test_drill_config_keeps_the_shipped_routing() -> None:
    text = drill_config("http://127.0.0.1:1/alerts", 2)
    assert "lampwatch-webhook" not in text and text.count("http://127.0.0.1:1/alerts") == 2
    assert "group_wait: 2s" in text and "30s" not in text
    assert 'source_matchers: [\'alertname="pole_offline"\']' in text
