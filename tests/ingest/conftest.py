"""Fixtures for the ingest tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest


class FakeGrafana(BaseHTTPRequestHandler):
    """A stand-in for the Grafana HTTP API (request shape only): records every request; GET answers
    404 (nothing exists yet), anything else 200."""

    requests: ClassVar[list[tuple[str, str, str | None, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.command == "GET":
            status, answer = 404, {"message": "not found"}
        else:
            status, answer = 200, {"status": "success", "uid": (body or {}).get("uid", "x"), "id": 1}
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer


@pytest.fixture
def fake_grafana() -> Iterator[str]:
    FakeGrafana.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()
