"""The service's HTTP endpoint: Prometheus metrics, liveness and readiness.

- ``/metrics``: the registry in the Prometheus text format;
- ``/healthz`` (liveness): 200 while the consumer loop keeps turning; 503 once it has not completed a
  turn for ``stall_after_s``. A loop stuck that long (a wedged broker call, a deadlock) will not
  recover by itself, and restarting the process is the cure: the changelog restores its state.
- ``/readyz`` (readiness): 200 once the model is loaded and the state of every assigned partition is
  restored; 503 while a restore runs or before the group has assigned anything.

Both answer with a small JSON body saying why, so ``curl`` at 3 a.m. tells the operator something.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class Health:
    """Liveness and readiness, set by the consumer loop and read by the HTTP thread."""

    def __init__(self, stall_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._last_turn = clock()
        self._ready = False
        self._reason = "starting: the consumer has not joined its group yet"

    def beat(self) -> None:
        """The loop completed a turn."""
        self._last_turn = self.clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Readiness and, when not ready, why."""
        self._ready = ready
        self._reason = reason

    def live(self) -> tuple[bool, dict]:
        """Whether the loop turned recently, with the seconds since its last turn."""
        idle = self.clock() - self._last_turn
        return idle < self.stall_after_s, {"seconds_since_last_turn": round(idle, 3)}

    def ready(self) -> tuple[bool, dict]:
        """Whether the service is ready, with the reason when it is not."""
        ok = self._ready and self.live()[0]
        reason = self._reason if not self._ready else ("" if ok else "the consumer loop has stalled")
        return ok, {"reason": reason} if reason else {}


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Health

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        elif path in ("/healthz", "/readyz"):
            ok, detail = self.health.live() if path == "/healthz" else self.health.ready()
            body = orjson.dumps({"status": "ok" if ok else "unavailable", **detail})
            self._send(200 if ok else 503, "application/json", body)
        else:
            self._send(404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n")

    def _send(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # probes every few seconds would drown the service's own log


def serve_http(registry: CollectorRegistry, health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` from a daemon thread; returns the server
    (``server.server_address[1]`` is the port when ``port`` is 0)."""
    handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mqcast-http", daemon=True).start()
    return server
