"""The header deadline on a real uvicorn server: a client trickling its headers is cut off,
a client that sends them in time is served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from optimizer.api.protocol import HeaderDeadline
from tests.conftest import free_port


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def server() -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _ok,
        host="127.0.0.1",
        port=port,
        http=HeaderDeadline.with_timeout(0.5),
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=60,  # only the header deadline may close the connections below
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        time.sleep(0.01)
    yield port
    runner.should_exit = True
    thread.join(timeout=10)


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_headers_not_sent_in_time_close_the_connection(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # and then nothing more
        assert _closed_by_server(sock)


def test_a_connection_that_sends_nothing_is_closed(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        assert _closed_by_server(sock)


def test_a_request_in_time_is_served_and_the_next_one_too(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server)) as sock:
        sock.settimeout(10)
        for _ in range(2):  # keep-alive: the deadline starts again for the second request
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"ok"):
                answer += sock.recv(1024)
            assert answer.startswith(b"HTTP/1.1 200")
            time.sleep(0.8)  # longer than the deadline, between requests: still open
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
