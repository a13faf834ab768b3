"""A request-body limit for every route (an ASGI middleware), the webhook included.

A declared ``Content-Length`` over the limit is answered 413 before the body is read; a
chunked body is counted as it streams and cut off with 413 once it passes the limit, so no
route, authenticated or not, can make the optimizer buffer more than ``limit`` bytes. The
bodies of all requests in progress together are bounded too (503 with Retry-After beyond),
so a thousand clients sending the largest body at once cannot exhaust memory either.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answer 413 to any request whose body is over ``limit`` bytes, and 503 (Retry-After
    ``retry_after_s``) to one that would take the bodies held by requests in progress past
    ``in_flight`` bytes: memory stays bounded however many clients send at once."""

    def __init__(
        self, app: ASGIApp, *, limit: int, in_flight: int | None = None, retry_after_s: int = 5
    ) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = in_flight
        self.retry_after_s = retry_after_s
        self.held = 0  # body bytes of requests in progress (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"content-length")
        declared = int(header) if header is not None and header.isdigit() else None
        if declared is not None and declared > self.limit:
            await self._too_large(send)
            return
        seen = 0
        held = 0
        refused = False

        def hold(size: int) -> bool:
            nonlocal held
            if self.in_flight is not None and self.held + size > self.in_flight and self.held:
                return False
            self.held += size
            held += size
            return True

        if declared is not None and not hold(declared):
            await self._busy(send)
            return

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request" and not refused:
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    await self._too_large(send)
                    return {"type": "http.disconnect"}
                if seen > held and not hold(seen - held):  # a chunked body grows
                    refused = True
                    await self._busy(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not refused:
                raise
            # the route saw the body end early (ClientDisconnect): the refusal is sent
        finally:
            self.held -= held

    async def _too_large(self, send: Send) -> None:
        await self._refuse(send, 413, f"request body over {self.limit} bytes")

    async def _busy(self, send: Send) -> None:
        await self._refuse(
            send,
            503,
            f"the optimizer holds {self.held} bytes of request bodies in progress; retry later",
            retry_after=True,
        )

    async def _refuse(
        self, send: Send, status: int, detail: str, *, retry_after: bool = False
    ) -> None:
        body = json.dumps({"detail": detail}).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if retry_after:
            headers.append((b"retry-after", str(self.retry_after_s).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class TokenBuckets:
    """A token bucket per key (a node): ``burst`` requests at once, then ``rate_per_s``.

    Thread-safe; the clock is passed in, so tests need no sleeping. Buckets of keys idle long
    enough to be full again are dropped, so memory follows the active nodes.
    """

    def __init__(self, *, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, *, now: float) -> float:
        """0 when a request may go now (its token taken), else seconds until one may."""
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
            if tokens >= 1:
                self._buckets[key] = (tokens - 1, now)
                if len(self._buckets) > 100_000:
                    full = self.burst / self.rate_per_s
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full}
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate_per_s
