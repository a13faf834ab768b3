"""BoundedHttp on a real uvicorn server: a client trickling its headers is cut off, a
client that sends them in time is served; a body not sent in time closes its connection; a
body past the receiving cap gets 503, requests without a body do not count, and a body that
ends or whose connection goes frees its place."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from optimizer.api.protocol import BoundedHttp
from tests.conftest import free_port


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@contextlib.contextmanager
def _serve(**bounds: Any) -> Iterator[int]:
    with _serve_with(BoundedHttp.configured(**bounds)) as port:
        yield port


@contextlib.contextmanager
def _serve_with(http: type[BoundedHttp]) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(
        _ok,
        host="127.0.0.1",
        port=port,
        http=http,
        log_level="warning",
        lifespan="off",
        timeout_keep_alive=60,  # only the deadlines may close the connections below
    )
    runner = uvicorn.Server(config)
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        time.sleep(0.01)
    try:
        yield port
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server() -> Iterator[int]:
    with _serve(header_timeout_s=0.5, body_timeout_s=60, max_receiving=2) as port:
        yield port


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


def _post(length: int, sent: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (length, sent)


def response_head(sock: socket.socket) -> bytes:
    """What the server answered up to the end of its headers (less if it closed first)."""
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


@pytest.mark.parametrize(
    ("name", "request_", "status"),
    [
        ("a body past the cap", _post(10, b"0123456789"), b"503"),
        ("no body", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
        ("an empty body", _post(0, b""), b"200"),
    ],
    ids=["body past the cap", "no body", "empty body"],
)
def test_bodies_past_the_receiving_cap_are_refused(
    server: int, name: str, request_: bytes, status: bytes
) -> None:
    held = [socket.create_connection(("127.0.0.1", server)) for _ in range(2)]
    try:
        for sock in held:  # two bodies in progress = the cap (max_receiving=2)
            sock.sendall(_post(1000, b"{"))
            assert response_head(sock).startswith(b"HTTP/1.1 200")  # answered, body still coming
        with socket.create_connection(("127.0.0.1", server)) as sock:
            sock.sendall(request_)
            answer = response_head(sock)
            assert answer.startswith(b"HTTP/1.1 " + status), name
            if status == b"503":
                assert b"retry-after: 5" in answer.lower()
    finally:
        for sock in held:
            sock.close()


def test_a_finished_or_closed_body_frees_its_place(server: int) -> None:
    first, second = (socket.create_connection(("127.0.0.1", server)) for _ in range(2))
    with first, second:
        for sock in (first, second):
            sock.sendall(_post(3, b"{"))
            response_head(sock)
        first.sendall(b"}}")  # its body completes
        second.close()  # its connection goes
        time.sleep(0.3)
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", server)) as sock:
                sock.sendall(_post(2, b"{}"))
                assert response_head(sock).startswith(b"HTTP/1.1 200")


def test_a_body_not_sent_in_time_closes_the_connection() -> None:
    with _serve(header_timeout_s=60, body_timeout_s=0.5, max_receiving=1) as port:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post(1000, b"{"))  # and the rest never comes
            assert response_head(sock).startswith(b"HTTP/1.1 200")  # answered without reading
            assert _closed_by_server(sock)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # its place is free
            sock.sendall(_post(2, b"{}"))
            assert response_head(sock).startswith(b"HTTP/1.1 200")


_PIECES = st.sampled_from(
    [
        _post(2, b"{}"),  # whole
        _post(1000, b"{"),  # a body that never ends
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # broken
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n",
        b"\x00\xffnot http at all\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n{}",  # one byte short
    ]
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(_PIECES, min_size=1, max_size=4), min_size=1, max_size=6))
def test_no_input_leaks_a_place_or_stops_the_server(connections: list[list[bytes]]) -> None:
    """Whatever clients send (pipelined, broken, cut short) and however they leave, once
    they are gone no place under the cap stays taken and the next body is served."""
    http = BoundedHttp.configured(header_timeout_s=5, body_timeout_s=5, max_receiving=2)
    with _serve_with(http) as port:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in connections]
        for sock, pieces in zip(socks, connections, strict=True):
            sock.sendall(b"".join(pieces))
        time.sleep(0.1)
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 5
        while http.receiving and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not http.receiving
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(_post(2, b"{}"))
            assert response_head(sock).startswith(b"HTTP/1.1 200")
