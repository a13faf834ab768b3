"""uvicorn's HTTP protocol with guards on what a connection can hold.

- **A deadline for each request's line and headers.** uvicorn closes idle keep-alive
  connections, but a client that opens a connection and sends its headers a byte at a time
  (slowloris) holds it for ever. A connection whose request line and headers are not
  complete within ``header_timeout_s`` of the connection opening or of the request's first
  byte is closed; a request whose headers arrived is never cut (its body is bounded by the
  body limits, its answer by the ingest deadline).
- **A deadline for each body**: a body not complete within ``body_timeout_s`` of its
  headers has its connection closed, so a client trickling a body cannot hold a place
  under the cap below, or the API's budget for bodies in progress, for ever.
- **A cap on bodies being received at once.** uvicorn buffers up to about 320 KiB of a
  body per connection (its 64 KiB high-water mark plus one 256 KiB socket read) before the
  API reads it, outside the API's own body accounting. A request with a body that arrives
  while ``max_receiving`` others are still sending theirs is answered 503 with Retry-After
  and its connection closed; idle keep-alive connections (one per agent) cost a few KiB and
  do not count.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header and body deadlines and the receiving
    cap."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_receiving: int | None = None
    retry_after_s: int = 5
    receiving: set[BoundedHttp]  # one set per configured class (= per server)
    _timer: asyncio.TimerHandle | None = None
    _counted: bool = False

    @classmethod
    def configured(
        cls,
        *,
        header_timeout_s: float,
        body_timeout_s: float = 30.0,
        max_receiving: int | None = None,
        retry_after_s: int = 5,
    ) -> type[BoundedHttp]:
        """The protocol class for uvicorn's ``http=`` with these bounds."""
        attributes: dict[str, object] = {
            "header_timeout_s": header_timeout_s,
            "body_timeout_s": body_timeout_s,
            "max_receiving": max_receiving,
            "retry_after_s": retry_after_s,
            "receiving": set(),
        }
        return type("BoundedHttp", (cls,), attributes)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self._has_body():
            super().on_headers_complete()
            return
        if self.max_receiving is not None and len(self.receiving) >= self.max_receiving:
            app, self.app = self.app, self._busy  # uvicorn starts the cycle with self.app
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        self.receiving.add(self)
        self._counted = True
        self._arm(self.body_timeout_s)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._uncount()
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._uncount()
        super().connection_lost(exc)

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"{len(self.receiving)} request bodies are being received; retry later"
        body = json.dumps({"detail": detail}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(self.retry_after_s).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _uncount(self) -> None:
        if self._counted:
            self.receiving.discard(self)
            self._counted = False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()
