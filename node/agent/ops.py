"""Operations endpoints on 127.0.0.1: /health, /metrics (Prometheus text) and /jobs.

A plain `http.server` in a daemon thread: the endpoints only read (the store is thread-safe, metrics are
prometheus_client's own thread-safe objects, health is a snapshot the agent refreshes), so nothing here can
block the trio loop. Metrics live in their own CollectorRegistry so two agents in one process (tests) never
collide.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger(__name__)


class Metrics:
    """The node's Prometheus metrics (names are part of the documented interface, see docs/node.md)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs = Counter("agora_jobs", "Jobs by the state they reached", ["state"], registry=r)
        self.earnings = Counter("agora_earnings_wei", "Wei earned by settled jobs", registry=r)
        self.bids = Counter("agora_bids", "Announcements answered, by outcome", ["outcome"], registry=r)
        self.declines = Counter("agora_declines", "Announcements declined, by reason", ["reason"], registry=r)
        self.execution = Histogram("agora_execution_seconds", "Sandbox run time per job", registry=r,
                                   buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600))
        self.peers = Gauge("agora_peers", "Connected libp2p peers", registry=r)
        self.rejected = Counter("agora_messages_rejected", "Messages dropped, by reason", ["reason"], registry=r)
        for outcome in ("won", "lost", "declined"):
            self.bids.labels(outcome=outcome)  # export zeros, so a dashboard sees the series from the start

    def text(self) -> bytes:
        return generate_latest(self.registry)


class OpsServer:
    """Serves `health()` (a dict) at /health, metrics at /metrics, `jobs()` (a list) at /jobs."""

    def __init__(self, port: int, *, metrics: Metrics, health: Callable[[], dict[str, Any]],
                 jobs: Callable[[], list[dict[str, Any]]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/health":
                        self._send(200, json.dumps(outer.health()).encode(), "application/json")
                    elif path == "/metrics":
                        self._send(200, outer.metrics.text(), CONTENT_TYPE_LATEST)
                    elif path == "/jobs":
                        self._send(200, json.dumps(outer.jobs(), default=str).encode(), "application/json")
                    else:
                        self._send(404, b'{"error": "not found"}', "application/json")
                except Exception as err:  # noqa: BLE001 - an ops request must never take the node down
                    log.warning("ops %s failed: %s", path, err)
                    self._send(500, json.dumps({"error": str(err)}).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("ops: " + fmt, *args)

        self.metrics, self.health, self.jobs = metrics, health, jobs
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="agora-ops", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
