"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (liveness), ``/readyz`` (readiness).

Served from a daemon thread; the loop only flips cheap flags on `HealthState`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from worker.reachability import BrokerReachability

log = logging.getLogger(__name__)


class HealthState:
    """What /healthz and /readyz report; written by the loop, read by the HTTP thread."""

    def __init__(self, liveness_timeout_s: float, broker: BrokerReachability | None = None) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self._last_beat = time.monotonic()
        self.model_version: str | None = None
        self.partitions = 0
        # the one owner of the broker's reachability; loop and delivery feed it
        self.broker = broker if broker is not None else BrokerReachability()
        self.stopping = False

    @property
    def broker_reachable(self) -> bool:
        return self.broker.reachable

    def beat(self) -> None:
        """The loop turned."""
        self._last_beat = time.monotonic()

    def live(self) -> tuple[bool, dict[str, object]]:
        age = time.monotonic() - self._last_beat
        return age < self.liveness_timeout_s, {"last_loop_s_ago": round(age, 3)}

    def ready(self) -> tuple[bool, dict[str, object]]:
        detail: dict[str, object] = {
            "model_version": self.model_version,
            "partitions_assigned": self.partitions,
            "broker_reachable": self.broker_reachable,
            "stopping": self.stopping,
        }
        ok = (
            self.model_version is not None
            and self.partitions > 0
            and self.broker_reachable
            and not self.stopping
        )
        return ok, detail


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send_check(*self.server.health.live())
        elif path == "/readyz":
            self._send_check(*self.server.health.ready())
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _send_check(self, ok: bool, detail: dict[str, object]) -> None:
        body = json.dumps({"ok": ok, **detail}).encode() + b"\n"
        self._send(200 if ok else 503, body, "application/json")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # scrapes every few seconds would drown the log


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: CollectorRegistry
    health: HealthState

    def handle_error(self, request: object, client_address: object) -> None:
        # A probe or scraper that gave up (timeout) closes its socket: not worth a traceback.
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class HttpEndpoints:
    """The running HTTP server; ``port`` is the bound port (useful with port 0)."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, health: HealthState
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.registry = registry
        self._server.health = health
        self.host = host
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="http",
            kwargs={"poll_interval": 0.2},
            daemon=True,
        )

    def start(self) -> HttpEndpoints:
        self._thread.start()
        log.info(
            "http endpoints on port %d (/metrics /healthz /readyz)",
            self.port,
            extra={"port": self.port, "host": self.host},
        )
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
