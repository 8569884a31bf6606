"""Per-device simulation against a broker secured like production: per-pole passwords and ACL.

Credentials come from ingest.credentials (what `lampwatch-ingest credentials` writes); each simulated
pole is a real edge agent logging in as itself, so the ACL's `%u` patterns let it publish only its own
telemetry. The gateway logs in as the gateway user and receives everything.
"""

from __future__ import annotations

import csv
import threading
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from gateway.service import Gateway, GatewayConfig
from ingest.credentials import pole_ids, write_credentials
from ingest.sqlite import SqliteStore
from simulator.run import plan_city, run_per_device
from testbed.servers import Mosquitto


def test_per_device_agents_log_in_as_their_poles(mosquitto_factory: Callable[..., Mosquitto],
                                                 tmp_path: Path) -> None:
    creds_dir = tmp_path / "creds"
    w = write_credentials(creds_dir, pole_ids(6))
    broker = mosquitto_factory(password_file=w.passwd, acl_file=w.acl)
    with w.secrets.open(newline="") as fh:
        creds = {r["username"]: r["password"] for r in csv.DictReader(fh)}
    store = SqliteStore(tmp_path / "store.sqlite")
    gw = Gateway(GatewayConfig(host=broker.host, port=broker.port, client_id="gw-secure",
                               username=w.gateway_user, password=w.gateway_password,
                               spool_path=str(tmp_path / "spool.sqlite")), store)
    gw.start()
    plan = plan_city(poles=6, seed=1, step_ms=10_000, fault_rate=0, sim_span_ms=None,
                     now_ms=int(time.time() * 1000), scenario=None, signal_only=True, back_ms=0)
    with open(tmp_path / "progress.txt", "w") as out:
        st = run_per_device(broker.host, broker.port, plan, workdir=tmp_path / "agents", speed=20.0, duration_s=4,
                            console=Console(file=out), credentials=creds, stop=threading.Event())
    deadline = time.monotonic() + 20
    while store.count("telemetry") < st.published and time.monotonic() < deadline:
        time.sleep(0.2)
    gw.stop()
    assert st.published > 0
    assert store.count("telemetry") == st.published
    status = store.select("status")  # births arrive as status points, each from its own pole's login
    assert {r["pole"] for r in status} == set(pole_ids(6))
    assert all("rated_power_w" in r for r in status if r["state"] == "birth")
    store.close()
