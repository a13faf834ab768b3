"""uvicorn's HTTP protocol with a deadline for each request's line and headers.

uvicorn closes idle keep-alive connections, but a client that opens a connection and sends
its headers a byte at a time (slowloris) holds it for ever. :class:`HeaderDeadline` closes
a connection whose request line and headers are not complete within ``header_timeout_s``
of the connection opening or of the request's first byte; a request whose headers arrived
is never cut (its body is bounded by the body limits, its answer by the ingest deadline).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderDeadline(HttpToolsProtocol):
    """Close a connection that has not sent a request's headers in ``header_timeout_s``."""

    header_timeout_s: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_timeout(cls, seconds: float) -> type[HeaderDeadline]:
        """The protocol class for uvicorn's ``http=`` with this deadline."""
        return type("HeaderDeadline", (cls,), {"header_timeout_s": seconds})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expire(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()
