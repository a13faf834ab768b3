"""``stowage-optimizer serve`` bounds what clients can hold: a connection past
``max_connections`` is answered 503, and SIGTERM ends the server within
``shutdown_timeout_s`` even while clients hold requests open (a flood's clients that never
finish their bodies kept it up for over a minute before)."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from optimizer.api.app import create_app
from optimizer.cli.server import server_config
from optimizer.settings import OptimizerSettings
from tests.optimizer.test_end_to_end import Optimizer
from tests.optimizer.test_protocol import response_head

HELD = (
    b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 100000\r\n\r\n{"  # and the rest of the body never comes
)


@contextlib.contextmanager
def _holding(
    tmp_path: Path, connections: int, **env: str
) -> Iterator[tuple[Optimizer, list[socket.socket]]]:
    """A served optimizer with ``connections`` requests held open (bodies never sent)."""
    server = Optimizer(tmp_path / "stowage.db")
    server.env.update(env)
    server.start()
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(connections)]
    try:
        for sock in held:
            sock.sendall(HELD)
        time.sleep(0.5)
        yield server, held
    finally:
        for sock in held:
            sock.close()
        server.stop()


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
    with _holding(tmp_path, 3, STOWAGE_MAX_CONNECTIONS="3") as (server, held):
        address = ("127.0.0.1", server.port)
        with socket.create_connection(address) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response_head(extra).startswith(b"HTTP/1.1 503")
        for sock in held:
            sock.close()
        time.sleep(0.5)
        with socket.create_connection(address) as again:  # their places are free again
            again.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert response_head(again).startswith(b"HTTP/1.1 200")


def test_sigterm_ends_the_server_while_requests_are_held(tmp_path: Path) -> None:
    with _holding(tmp_path, 20, STOWAGE_SHUTDOWN_TIMEOUT_S="1") as (server, _):
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # without the bound uvicorn waits for these connections for ever (TimeoutExpired)
        assert server.process.wait(timeout=30) is not None
