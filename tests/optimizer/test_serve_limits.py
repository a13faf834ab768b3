"""``stowage-optimizer serve`` bounds what clients can hold: a connection past
``max_connections`` is answered 503, and SIGTERM ends the server within
``shutdown_timeout_s`` even while clients hold requests open (a flood's clients that never
finish their bodies kept it up for over a minute before)."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from optimizer.api.app import create_app
from optimizer.cli.server import server_config
from optimizer.settings import OptimizerSettings
from tests.optimizer.test_end_to_end import Optimizer

HELD = (
    b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n{"  # and the rest of the body never comes
)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_settings_reach_uvicorn(tmp_path: Path) -> None:
    settings = OptimizerSettings(
        database_url=f"sqlite:///{tmp_path / 'x.db'}",
        auth="none",
        max_connections=7,
        shutdown_timeout_s=3,
        header_timeout_s=2.0,
        max_receiving=9,
        body_timeout_s=4.0,
    )
    config = server_config(create_app(settings, authenticator=None), settings)
    assert config.limit_concurrency == 7
    assert config.timeout_graceful_shutdown == 3
    assert getattr(config.http, "header_timeout_s", None) == 2.0
    assert getattr(config.http, "max_receiving", None) == 9
    assert getattr(config.http, "body_timeout_s", None) == 4.0


def test_a_connection_past_the_cap_is_answered_503(tmp_path: Path) -> None:
    server = Optimizer(tmp_path / "stowage.db")
    server.env.update(STOWAGE_MAX_CONNECTIONS="3")
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        for sock in held:
            sock.sendall(HELD)
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", server.port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(extra).startswith(b"HTTP/1.1 503")
        for sock in held:
            sock.close()
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", server.port)) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _answer(again).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
        server.stop()


def test_sigterm_ends_the_server_while_requests_are_held(tmp_path: Path) -> None:
    server = Optimizer(tmp_path / "stowage.db")
    server.env.update(STOWAGE_SHUTDOWN_TIMEOUT_S="1")
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    try:
        for sock in held:
            sock.sendall(HELD)
        time.sleep(0.5)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # without the bound uvicorn waits for these connections for ever (TimeoutExpired)
        assert server.process.wait(timeout=30) is not None
    finally:
        for sock in held:
            sock.close()
        server.stop()
