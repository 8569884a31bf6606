"""Start real servers (Mosquitto, InfluxDB 1.x, VictoriaMetrics) on free loopback ports in temp dirs.

Used by the demo, by fault drills and by tests. Pure stdlib: it imports nothing of lampwatch.

Lifecycle, the same for every server::

    server = Mosquitto()        # picks a free port and a temp workdir; nothing runs yet
    server.start()              # spawn, wait until ready (raises ServerStartError with the log tail)
    server.stop()               # SIGTERM + wait; the workdir (data, persistence, log) is KEPT,
    server.start()              # so starting again resumes on the SAME port with the SAME data
    server.restart()            # stop() + start()
    server.kill()               # SIGKILL the whole process group (crash drill); data kept too
    server.close()              # stop() and delete the workdir; idempotent

``with Mosquitto() as broker:`` does start() ... close(). Every server runs in its own process
group, and an atexit hook closes whatever is still open, so a crashed test leaves no orphans.

Exceptions::

    HarnessError(RuntimeError)
     ├── ServerMissing      the binary is not on PATH (the message names the Debian package)
     ├── ServerStartError   the process exited or never became ready
     └── QueryError         a server answered an HTTP request with an error
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "HarnessError",
    "InfluxDB1",
    "Mosquitto",
    "QueryError",
    "ServerMissing",
    "ServerStartError",
    "VictoriaMetrics",
    "free_port",
    "require",
]

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0

# binary -> Debian package that ships it
_PACKAGES = {
    "mosquitto": "mosquitto",
    "influxd": "influxdb",
    "victoria-metrics": "victoria-metrics",
}
# Debian installs mosquitto in /usr/sbin, which a non-login PATH may lack.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class HarnessError(RuntimeError):
    """Base class of every error this module raises."""


class ServerMissing(HarnessError):
    """A server binary is not installed."""


class ServerStartError(HarnessError):
    """A server process exited early or did not become ready in time."""


class QueryError(HarnessError):
    """A server answered an HTTP request with an error status or an error field."""


def require(binary: str) -> str:
    """Return the absolute path of ``binary`` or raise ServerMissing naming its Debian package."""
    path = shutil.which(binary) or shutil.which(binary, path=os.pathsep.join(_EXTRA_DIRS))
    if path is None:
        package = _PACKAGES.get(binary, binary)
        raise ServerMissing(f"{binary!r} is not on PATH; install it with: apt-get install {package}")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body) for any status, raises OSError on no connection."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


class _Server:
    """Process lifecycle shared by every server: temp workdir, own process group, readiness poll."""

    binary: ClassVar[str]
    #: how long start() waits for readiness; a server that builds a store first (Prometheus' TSDB, a NATS
    #: JetStream) sets more: on a loaded 2-core CI runner 10 s was seen to be too little for them
    ready_timeout_s: ClassVar[float] = READY_TIMEOUT_S
    _live: ClassVar[set[_Server]] = set()
    _live_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, port: int | None = None) -> None:
        self.executable = require(self.binary)
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix=f"lampwatch-{self.binary}-"))
        self.log_path = self.workdir / f"{self.binary}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        with self._live_lock:
            self._live.add(self)

    # -- to override -------------------------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files before each spawn."""

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Self:
        if self._closed:
            raise HarnessError(f"{self.binary} harness is closed; create a new one")
        if self.running:
            return self
        self._prepare()
        with open(self.workdir / f"{self.binary}.stdout", "ab") as out:
            self._proc = subprocess.Popen(
                self._command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killpg reaches any child too
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise ServerStartError(
                    f"{self.binary} exited with code {code} during start-up; log tail:\n{self.log_tail()}"
                )
            if self._ready():
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(
                    f"{self.binary} not ready on {self.host}:{self.port} within {self.ready_timeout_s:.0f} s;"
                    f" log tail:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM the process group and wait; keep the workdir so start() resumes the same data."""
        self._signal_and_reap(signal.SIGTERM, STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL the process group (a crash: nothing gets flushed); the workdir is kept."""
        self._signal_and_reap(signal.SIGKILL, STOP_TIMEOUT_S)

    def restart(self) -> Self:
        """stop() then start() on the same port with the same data/persistence dir."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """stop() and delete the workdir. Idempotent."""
        if self._closed:
            return
        try:
            self.stop()
        finally:
            self._closed = True
            shutil.rmtree(self.workdir, ignore_errors=True)
            with self._live_lock:
                self._live.discard(self)

    def _signal_and_reap(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # the group may hold children the leader did not reap
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state} workdir={self.workdir}>"

    # -- logs --------------------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything the server logged so far (its log file, else its captured stdout/stderr)."""
        parts = []
        for path in dict.fromkeys((self.log_path, self.workdir / f"{self.binary}.stdout")):
            with contextlib.suppress(FileNotFoundError):
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @classmethod
    def _close_all(cls) -> None:
        with cls._live_lock:
            servers = list(cls._live)
        for server in servers:
            with contextlib.suppress(Exception):
                server.close()


atexit.register(_Server._close_all)


class Mosquitto(_Server):
    """A real Mosquitto 2.x broker on 127.0.0.1 with persistence in its workdir.

    Queue limits are lifted so a slow or offline subscriber never loses QoS 1/2 messages (see the
    comment in the generated config). ``password_file``/``acl_file`` turn anonymous access off.
    """

    binary = "mosquitto"

    def __init__(
        self,
        *,
        port: int | None = None,
        extra_conf: str = "",
        password_file: str | os.PathLike[str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        log_all: bool = False,
        autosave_interval: int = 1,
    ) -> None:
        super().__init__(port)
        self.extra_conf = extra_conf
        self.password_file = Path(password_file) if password_file is not None else None
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self.log_all = log_all
        self.autosave_interval = autosave_interval
        self.conf_path = self.workdir / "mosquitto.conf"
        self.persistence_dir = self.workdir / "persistence"
        self.persistence_dir.mkdir()

    def config_text(self) -> str:
        secured = self.password_file is not None or self.acl_file is not None
        lines = [
            "# generated by testbed.servers: a TEST-ONLY broker",
            # Started as root, mosquitto drops to user `mosquitto`, which could not write the temp
            # workdir (persistence, log) or read the caller's passwd/acl files. Staying root is fine
            # for a throwaway loopback broker; never copy this line into a deployed config.
            "user root",
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'false' if secured else 'true'}",
            "persistence true",
            f"persistence_location {self.persistence_dir}/",
            # seconds between saves of the in-memory db; a SIGTERM always saves, a SIGKILL loses
            # at most this much
            f"autosave_interval {self.autosave_interval}",
            # Mosquitto 2.0.11 defaults: max_queued_messages 1000 -> beyond 1000 queued QoS 1/2
            # messages per client (offline persistent session, or a subscriber that falls behind)
            # new messages are SILENTLY DROPPED; only the log says so. 0 means "no maximum" for
            # both queue limits, so nothing is dropped (memory is the only bound: fine for tests
            # and drills, which must show the gateway's loss, not the broker's).
            "max_queued_messages 0",
            "max_queued_bytes 0",
            # In-flight limits only pace delivery (the rest waits in the queue, not dropped).
            # 0 = no broker-side maximum; an MQTT v5 client's Receive Maximum still applies.
            "max_inflight_messages 0",
            "max_inflight_bytes 0",
            f"log_dest file {self.log_path}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.log_all:
            lines.append("log_type all")
        else:
            lines += [f"log_type {t}" for t in ("error", "warning", "notice", "information")]
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        text = "\n".join(lines) + "\n"
        if self.extra_conf:
            text += "# extra_conf\n" + self.extra_conf.rstrip("\n") + "\n"
        return text

    def _prepare(self) -> None:
        self.conf_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.executable, "-c", str(self.conf_path)]

    def listen_ports(self) -> tuple[int, ...]:
        """Every port the config listens on (a subclass with more listeners names them all)."""
        return (self.port,)

    def _ready(self) -> bool:
        # all of them: Mosquitto opens its listeners one after another, so the first one accepting says
        # nothing of the next (a plain login right after start was refused 1 time in 40)
        return all(tcp_open(self.host, p) for p in self.listen_ports())


class InfluxDB1(_Server):
    """A real InfluxDB 1.x (v1 HTTP API: /ping, /write, /query) with its data in the workdir."""

    binary = "influxd"

    def __init__(self, *, port: int | None = None, rpc_port: int | None = None) -> None:
        super().__init__(port)
        self.rpc_port = rpc_port if rpc_port is not None else free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.conf_path = self.workdir / "influxdb.conf"
        self.log_path = self.workdir / "influxd.stdout"  # influxd logs to stderr only

    def config_text(self) -> str:
        d = self.workdir
        return f"""\
# generated by testbed.servers: a TEST-ONLY InfluxDB 1.x
reporting-disabled = true
# Debian's build spells the same switch this way (unknown keys are ignored)
reporting-enabled = false
bind-address = "{self.host}:{self.rpc_port}"

[meta]
  dir = "{d / "meta"}"
  logging-enabled = false

[data]
  dir = "{d / "data"}"
  wal-dir = "{d / "wal"}"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = "{self.host}:{self.port}"
  log-enabled = false
  pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[continuous_queries]
  enabled = true
  log-enabled = true
  run-interval = "1s"
"""

    def _prepare(self) -> None:
        self.conf_path.write_text(self.config_text())

    def _command(self) -> list[str]:
        return [self.executable, "run", "-config", str(self.conf_path)]

    def _ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/ping", timeout=1.0)
        except OSError:
            return False
        return status == 204

    def query(self, q: str, db: str | None = None, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL (POST /query); return the parsed JSON, raise QueryError on any error."""
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        status, body = _http(
            "POST",
            f"{self.url}/query",
            urllib.parse.urlencode(params).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            result: dict[str, Any] = json.loads(body)
        except ValueError as exc:
            raise QueryError(f"/query answered {status} with non-JSON: {body[:300]!r}") from exc
        errors = [result["error"]] if "error" in result else []
        errors += [r["error"] for r in result.get("results", []) if "error" in r]
        if status >= 400 or errors:
            raise QueryError(f"/query {q!r} failed ({status}): {'; '.join(errors) or body[:300]!r}")
        return result

    def create_database(self, name: str) -> None:
        self.query(f'CREATE DATABASE "{name}"')

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"')

    def write_lines(self, db: str, lines: str | list[str], precision: str = "ns") -> None:
        """POST line protocol to /write; raise QueryError unless the server answers 204."""
        text = lines if isinstance(lines, str) else "\n".join(lines)
        query = urllib.parse.urlencode({"db": db, "precision": precision})
        status, body = _http("POST", f"{self.url}/write?{query}", text.encode())
        if status != 204:
            raise QueryError(f"/write answered {status}: {body[:300]!r}")


class VictoriaMetrics(_Server):
    """A real VictoriaMetrics single node; accepts line protocol at /api/v2/write."""

    binary = "victoria-metrics"

    def __init__(self, *, port: int | None = None, retention_period: str = "100y") -> None:
        super().__init__(port)
        self.url = f"http://{self.host}:{self.port}"
        self.retention_period = retention_period
        self.log_path = self.workdir / "victoria-metrics.stdout"

    def _command(self) -> list[str]:
        return [
            self.executable,
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.workdir / 'data'}",
            f"-retentionPeriod={self.retention_period}",
            "-loggerLevel=WARN",
        ]

    def _ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/health", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def force_flush(self) -> None:
        """Make just-written samples searchable now (else new series take ~10 s)."""
        status, body = _http("GET", f"{self.url}/internal/force_flush")
        if status != 200:
            raise QueryError(f"/internal/force_flush answered {status}: {body[:300]!r}")

    def export(self, match: str = '{__name__!=""}') -> list[dict[str, Any]]:
        """GET /api/v1/export: one dict per series ({"metric", "values", "timestamps"})."""
        query = urllib.parse.urlencode({"match[]": match})
        status, body = _http("GET", f"{self.url}/api/v1/export?{query}")
        if status != 200:
            raise QueryError(f"/api/v1/export answered {status}: {body[:300]!r}")
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def wait_for_samples(
        self, min_samples: int, match: str = '{__name__!=""}', timeout: float = READY_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """force_flush() + export() until the matching series hold >= min_samples samples.

        VictoriaMetrics 1.79 answers 204 to a write before the rows are searchable, and
        /internal/force_flush does not cover rows still in its ~1 s pending buffer, so a single
        flush-then-export right after a write can come back empty. Raises QueryError on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.force_flush()
            series = self.export(match)
            if sum(len(s["values"]) for s in series) >= min_samples:
                return series
            if time.monotonic() > deadline:
                raise QueryError(
                    f"{match} holds fewer than {min_samples} samples after {timeout:.0f} s: {series!r:.500}"
                )
            time.sleep(0.1)


# --- Alertmanager (added for the operators' notification path) ---------------------------------------
_PACKAGES["prometheus-alertmanager"] = "prometheus-alertmanager"
__all__ += ["Alertmanager"]

#: a config that routes everything to nothing: enough to accept alerts and silences
ALERTMANAGER_MINIMAL = """\
route:
  receiver: "null"
receivers:
  - name: "null"
"""


class Alertmanager(_Server):
    """A real Prometheus Alertmanager (v2 API) with its config and storage in the workdir.

    ``config`` is the YAML text (default: accept everything, notify no one); ``reconfigure`` rewrites
    it and restarts. The cluster port is turned off (``--cluster.listen-address=``)."""

    binary = "prometheus-alertmanager"

    def __init__(self, *, port: int | None = None, config: str = ALERTMANAGER_MINIMAL) -> None:
        super().__init__(port)
        self.url = f"http://{self.host}:{self.port}"
        self.config = config
        self.conf_path = self.workdir / "alertmanager.yml"
        self.log_path = self.workdir / f"{self.binary}.stdout"

    def _prepare(self) -> None:
        self.conf_path.write_text(self.config)
        (self.workdir / "data").mkdir(exist_ok=True)

    def _command(self) -> list[str]:
        return [self.executable, f"--config.file={self.conf_path}", f"--storage.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}", "--cluster.listen-address=",
                "--log.level=warn"]

    def _ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/-/ready", timeout=1.0)
        except OSError:
            return False
        return status == 200

    def api(self, method: str, path: str, doc: Any = None) -> Any:
        """One v2 API call (``path`` like ``/alerts``); parsed JSON, QueryError on an error status."""
        body = json.dumps(doc).encode() if doc is not None else None
        status, raw = _http(method, f"{self.url}/api/v2{path}", body, {"Content-Type": "application/json"})
        if status >= 400:
            raise QueryError(f"alertmanager {method} {path} answered {status}: {raw[:300]!r}")
        return json.loads(raw) if raw.strip() else None

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode(filters)
        result: list[dict[str, Any]] = self.api("GET", f"/alerts{'?' + q if q else ''}")
        return result
