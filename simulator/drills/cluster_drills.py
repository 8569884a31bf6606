"""Cluster drill: the unchanged agents and gateways on a 3-node NATS cluster, losing a node mid-stream.

    cluster-node-kill  a 3-node NATS cluster (JetStream, MQTT streams and consumers with 3 replicas,
                       testbed.nats); real edge agents speaking MQTT 3.1.1, spread over the nodes
                       (agent i prefers node i mod 3 and fails over along its own order); two real gateway
                       processes, district partitions 0/2 and 1/2, attached to nodes 1 and 2, each writing
                       its own InfluxDB 1.6.7 database. kill -9 node 1 (a gateway's node and a third of the
                       agents') mid-stream, start it again on the same ports and store after ``down_s``.

Counted from the stores themselves: ``published`` = samples the agents produced (their outbox sequence
numbers), ``stored`` = distinct (pole, seq) samples over both databases, ``duplicates`` = stored points
beyond one per sample. Checks beyond loss: no pole was stored by both gateways (each handled by exactly
one), the killed node's gateway and agents reconnected to other nodes, the node came back and the cluster
was ready again. Identical re-sent points overwrite themselves in InfluxDB (device timestamps), so the
MQTT re-sends a failover causes show up as the gateways' dedup counters, not as stored duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edge.agent import EdgeAgent
from edge.config import EdgeConfig
from gateway.partition import districts_for
from ingest.influx1 import Influx1Store
from simulator.drills import DrillResult
from simulator.drills.delivery_drills import _wait
from simulator.run import spread
from testbed.nats import NatsCluster, ack_pending_for
from testbed.servers import InfluxDB1, _http, free_port

Log = Callable[[str], None]
DISTRICTS = tuple(f"d{i}" for i in range(8))
GATEWAYS = 2


@dataclass
class ClusterSpec:
    agents: int = 30
    rate_hz: float = 2.0  # samples per agent per second
    seconds: float = 40.0  # sampling time
    kill_at: float = 0.25  # fraction of ``seconds`` at which node 1 is killed
    #: 1: node 1 only (the drill); 2: nodes 1 and 2 as well, which takes JetStream's quorum away
    kill_nodes: int = 1
    down_s: float = 10.0  # how long the node stays dead
    ack_wait_s: float = 10.0  # NATS redelivers a QoS 1 message not acked for this long
    settle_s: float = 120.0


class ClusterGateway:
    """``python -m gateway run`` on the cluster: MQTT 3.1.1, a broker list, one district partition."""

    def __init__(self, k: int, brokers: list[tuple[str, int]], influx_url: str, db: str, tmp: Path) -> None:
        self.k, self.db, self.client_id = k, db, f"drill-gw-{k}"
        self.health_port = free_port()
        self.log_path = tmp / f"gateway-{k}.log"
        state = tmp / f"gw-{k}"
        state.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **{f"LAMPWATCH_GATEWAY_{key}": v for key, v in {
            "MQTT_BROKERS": ",".join(f"{h}:{p}" for h, p in brokers), "MQTT_VERSION": "311",
            "CLIENT_ID": self.client_id, "PARTITION": f"{k}/{GATEWAYS}", "CITY_DISTRICTS": ",".join(DISTRICTS),
            "INFLUX_URL": influx_url, "INFLUX_DB": db, "STATE_DIR": str(state), "SELFMETRICS_INTERVAL_S": "1",
            "HEALTH_PORT": str(self.health_port)}.items()}}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "run"], env=self.env, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self) -> bool:
        try:
            status, _ = _http("GET", f"http://127.0.0.1:{self.health_port}/readyz", timeout=2.0)
        except OSError:
            return False
        return status == 200

    def metrics(self) -> dict[str, float]:
        """The gateway's own counters from /metrics (``lampwatch_gateway_<name> <value>`` lines)."""
        try:
            _, body = _http("GET", f"http://127.0.0.1:{self.health_port}/metrics", timeout=2.0)
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("#") or " " not in line:
                continue
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
        return out

    def terminate(self, timeout_s: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""



def _samples(store: Influx1Store) -> Counter[tuple[str, int]]:
    """(pole, seq) -> stored points, in one gateway's database."""
    rows = store.rows('SELECT "seq" FROM "telemetry" GROUP BY "pole"')
    return Counter((str(r["pole"]), int(r["seq"])) for r in rows)


def _agent(i: int, cluster: NatsCluster, spec: ClusterSpec, tmp: Path) -> EdgeAgent:
    interval = 1.0 / spec.rate_hz
    cfg = EdgeConfig(pole=f"cl-{i:03d}", district=DISTRICTS[i % len(DISTRICTS)], mqtt_version=311,
                     mqtt_brokers=[f"{h}:{p}" for h, p in spread(cluster.addresses, i)],
                     report_interval_s=interval, safety_interval_s=max(interval, 1.0), mqtt_keepalive_s=5,
                     backoff_min_s=0.2, backoff_max_s=2.0,
                     outbox_path=tmp / f"outbox-{i:03d}.sqlite", outbox_sync="normal", firmware="lampwatch-drill")
    return EdgeAgent(cfg)


@contextlib.contextmanager
def _quiet_agents() -> Iterator[None]:
    """Failover warnings of dozens of in-process agents would drown the drill's own lines."""
    logger = logging.getLogger("lampwatch.edge")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def cluster_node_kill(spec: ClusterSpec | None = None, *, log: Log = print) -> DrillResult:
    """kill -9 the node gateway 0 and a third of the agents are attached to; restart it after ``down_s``."""
    with _quiet_agents():
        return _cluster_node_kill(spec or ClusterSpec(), log)


def _cluster_node_kill(spec: ClusterSpec, log: Log) -> DrillResult:
    owned = [districts_for(k, GATEWAYS, DISTRICTS) for k in range(GATEWAYS)]
    if not all(owned):
        raise RuntimeError(f"a partition owns no district: {owned}")
    notes: list[str] = []
    checks: list[str] = []
    extra: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="lampwatch-cluster-drill-") as d, InfluxDB1() as influx:
        tmp = Path(d)
        # a gateway's QoS 1 subscriptions: telemetry and status per owned district, two for operators
        subs = 2 * max(len(o) for o in owned) + 2
        cluster = NatsCluster(3, ack_wait_s=spec.ack_wait_s, max_ack_pending=ack_pending_for(subs))
        agents: list[EdgeAgent] = []
        gateways: list[ClusterGateway] = []
        try:
            t = time.monotonic()
            cluster.start()
            log(f"3-node NATS cluster ready in {time.monotonic() - t:.1f} s (meta leader {cluster.leader()}); "
                f"MQTT on {', '.join(f'{h}:{p}' for h, p in cluster.addresses)}")
            stores = []
            for k in range(GATEWAYS):
                db = f"drill_gw{k}"
                influx.create_database(db)
                stores.append(Influx1Store(influx.url, db))
                # gateway k attached to node k, failing over along the rest of the ring
                gateways.append(ClusterGateway(k, spread(cluster.addresses, k), influx.url, db, tmp))
            for g in gateways:
                g.start()
            if not _wait(lambda: all(g.ready() for g in gateways), 60):
                raise RuntimeError("gateways not ready:\n" + "\n".join(g.log_text()[-1500:] for g in gateways))
            log(f"gateways ready: gw-0 on node n1 owns {','.join(owned[0])}; gw-1 on node n2 owns "
                f"{','.join(owned[1])}; max_ack_pending {ack_pending_for(subs)} for {subs} subscriptions")
            streams = cluster.stream_info()
            log("MQTT streams: " + ", ".join(f"{s['name']} R{s['replicas']}" for s in streams))
            if any(s["replicas"] != 3 for s in streams) or len(streams) < 3:
                checks.append(f"MQTT streams not replicated 3 times: {streams}")
            agents = [_agent(i, cluster, spec, tmp) for i in range(spec.agents)]
            for a in agents:
                a.start()
            if not _wait(lambda: all(a.connected for a in agents), 60):
                checks.append("not every agent connected at the start")
            t0 = time.monotonic()
            victims = cluster.nodes[:spec.kill_nodes]  # node 1 first: gateway 0's; node 2: gateway 1's
            names = ", ".join(v.name for v in victims)
            _wait(lambda: False, spec.seconds * spec.kill_at, 0.5)
            for v in victims:
                v.kill()
            killed = time.monotonic()
            on_victims = sum(1 for i in range(spec.agents) if i % 3 < spec.kill_nodes)
            log(f"kill -9 node(s) {names} at {killed - t0:.1f} s ({spec.kill_nodes} gateway(s) and {on_victims} "
                f"agents on them)")
            _wait(lambda: False, spec.down_s, 0.5)
            backlog = sum(a.backlog() for a in agents)
            extra["outbox_backlog_at_restart"] = float(backlog)
            for v in victims:
                v.start()
            t = time.monotonic()
            cluster.wait_ready(health=False)
            extra["node_ready_s"] = time.monotonic() - t
            log(f"node(s) {names} restarted on the same ports and stores (agents' outboxes held {backlog} samples); "
                f"serving MQTT again after {extra['node_ready_s']:.1f} s (meta leader {cluster.leader()})")
            _wait(lambda: False, max(0.0, t0 + spec.seconds - time.monotonic()), 0.5)
            for a in agents:
                if not a.wait_drained(spec.settle_s):
                    notes.append(f"{a.pole}: {a.backlog()} samples still in the outbox")
            for a in agents:
                a.stop(flush_timeout_s=5)
            # a sample made after the drain and not flushed by stop (the link was down, or 5 s were not
            # enough) stays in its outbox, on disk: counted as lost here, and named, so a failure says
            # whether it was left on the device or vanished (once, on a loaded machine: 204 made, 203 sent)
            extra["outbox_left_at_stop"] = float(sum(a.backlog() for a in agents))
            if extra["outbox_left_at_stop"]:
                notes.append(f"{extra['outbox_left_at_stop']:.0f} samples left in the agents' outboxes at stop")
            published = sum(int(a.counters().get("produced", 0)) for a in agents)
            log(f"agents produced {published} samples; waiting for the stores")

            def count() -> tuple[int, int, set[str]]:
                per = [_samples(s) for s in stores]
                both = {p for p, _ in per[0]} & {p for p, _ in per[1]}
                union = per[0] + per[1]
                return len(union), sum(union.values()), both

            _wait(lambda: count()[0] >= published, spec.settle_s, 1.0)
            time.sleep(1.0)
            stored, points, both = count()
            if both:
                checks.append(f"{len(both)} poles stored by both gateways (first: {sorted(both)[0]})")
            if gateways[0].log_text().count(f"{gateways[0].client_id} connected to") < 2:
                checks.append("gateway 0 never reconnected after its node died")
            c = Counter[str]()
            for a in agents:
                c.update({k: int(v) for k, v in a.counters().items()})
            extra.update({"agent_connects": float(c["connects"]), "agent_samples_sent": float(c["samples_sent"]),
                          "gateway_duplicates": sum(v for g in gateways for k, v in g.metrics().items()
                                                    if k.endswith("duplicates_total"))})
            log(f"agents connected {c['connects']} times ({spec.agents} at start); samples sent "
                f"{c['samples_sent']} for {published} produced; stored {stored} distinct in {points} points")
            for g in gateways:
                g.terminate()
            for s in stores:
                s.close()
        finally:
            for a in agents:
                with contextlib.suppress(Exception):
                    a.stop(flush_timeout_s=0)
            for g in gateways:
                with contextlib.suppress(Exception):
                    g.terminate(10)
            cluster.close()
    return DrillResult("cluster-node-kill", published, stored, points - stored, extra=extra, notes=tuple(notes),
                       failed_checks=tuple(checks))


def main() -> None:  # pragma: no cover - convenience: python -m simulator.drills.cluster_drills [--short]
    short = "--short" in sys.argv
    spec = ClusterSpec(agents=6, seconds=15, down_s=4) if short else ClusterSpec()
    if "--kill-two" in sys.argv:  # a measured limit: two of three nodes down at once (no quorum)
        spec.kill_nodes = 2
    r = cluster_node_kill(spec)
    print(json.dumps(r.extra), r.notes, r.failed_checks)
    print(r.line())


if __name__ == "__main__":  # pragma: no cover
    main()
