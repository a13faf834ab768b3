"""A request-body limit for every route (an ASGI middleware), the webhook included.

A declared ``Content-Length`` over the limit is answered 413 before the body is read; a
chunked body is counted as it streams and cut off with 413 once it passes the limit, so no
route, authenticated or not, can make the optimizer buffer more than ``limit`` bytes.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Answer 413 to any request whose body is over ``limit`` bytes."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit and not refused:
                    refused = True
                    await self._refuse(send)
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
            # the route saw the body end early (ClientDisconnect): the 413 is already sent

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body over {self.limit} bytes"}).encode()
        headers: list[Any] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
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
