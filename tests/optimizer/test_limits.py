"""The body limits of every route: per request (413) and for all requests in progress (503)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
from starlette.types import Receive, Scope, Send

from optimizer.api.limits import BodyLimit

MIB = 2**20


class _Holding:
    """An app that reads the whole body, then waits until released (a slow database)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.reading = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            more = message.get("more_body", False)
        self.reading += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 202, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _client(app: BodyLimit) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://o")


def test_bodies_in_progress_are_bounded_together() -> None:
    inner = _Holding()
    limit = BodyLimit(inner, limit=2 * MIB, in_flight=3 * MIB, retry_after_s=7)

    async def scenario() -> tuple[list[int], httpx.Response, int, int]:
        async with _client(limit) as client:
            held = [asyncio.create_task(client.post("/", content=b"x" * MIB)) for _ in range(3)]
            while inner.reading < 3:
                await asyncio.sleep(0.01)
            refused = await client.post("/", content=b"x" * MIB)  # a fourth MiB: too much
            at_peak = limit.held
            inner.release.set()
            statuses = [(await task).status_code for task in held]
            after = await client.post("/", content=b"x" * MIB)  # room again
            return statuses, refused, at_peak, after.status_code

    statuses, refused, at_peak, after = asyncio.run(scenario())
    assert statuses == [202, 202, 202]
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "7"
    assert "retry later" in refused.json()["detail"]
    assert at_peak == 3 * MIB
    assert after == 202
    assert limit.held == 0  # every request gave its bytes back


def test_a_streamed_body_counts_as_it_grows() -> None:
    inner = _Holding()
    limit = BodyLimit(inner, limit=8 * MIB, in_flight=3 * MIB)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * MIB  # 4 MiB, no Content-Length

    async def scenario() -> tuple[int, int]:
        async with _client(limit) as client:
            response = await client.post("/", content=chunks())
            return response.status_code, limit.held

    status, held = asyncio.run(scenario())
    assert status == 503
    assert held == 0


def test_one_body_larger_than_the_budget_still_passes_when_alone() -> None:
    """The budget bounds many requests together; a single request is bounded by the
    per-request limit (otherwise a budget below the limit would refuse everything)."""
    inner = _Holding()
    inner.release.set()
    limit = BodyLimit(inner, limit=4 * MIB, in_flight=2 * MIB)

    async def scenario() -> int:
        async with _client(limit) as client:
            return (await client.post("/", content=b"x" * (3 * MIB))).status_code

    assert asyncio.run(scenario()) == 202
