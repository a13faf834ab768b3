"""A tiny optimizer stand-in: a real HTTP server on loopback that records reports.

It can be stopped and restarted on the same port (an outage), or told to answer with a
given status, so the reporter is tested over real sockets.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeOptimizer:
    """Records POSTed reports; ``status`` (and ``retry_after``) script its answers."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.received: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.status = 202
        self.retry_after: str | None = None
        self.require_topology = False  # answer 412 to samples of nodes it has no topology of
        self.known_nodes: set[str] = set()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                report = json.loads(body)
                if "gpus" in report:
                    owner.known_nodes.add(report["node_name"])
                elif owner.require_topology and report["node_name"] not in owner.known_nodes:
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if owner.status < 300:
                    owner.received.append(json.loads(body))
                    owner.auth.append(self.headers.get("Authorization"))
                self.send_response(owner.status)
                if owner.retry_after is not None:
                    self.send_header("Retry-After", owner.retry_after)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
