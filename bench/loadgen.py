"""An open-loop report load generator, run as its own process by ``bench.ingest``.

Run: ``python -m bench.loadgen --base URL --nodes N (--topology | --rate R --seconds S
--first-sequence K)``; prints one JSON object.

The fleet is ``N`` fake 8-GPU nodes (``shared.samples.DGX_H100``), node ``n`` named
``gpu-nnnnn`` with token ``agent-token-nnnnnn-bench-load`` (:func:`token`). ``--topology``
sends every node's topology report, as fast as ``--connections`` keep-alive connections
allow. Otherwise request ``i`` (node ``i % N``, sequence ``K + i // N + 1``, collected
10 s later per sequence) is due at ``start + i / R``: it is sent then whether or not
earlier requests have been answered, and its latency counts from that due time, so
queueing in the optimizer counts. With ``--part K/N`` a generator sends only every N-th
request from the K-th (one generator per optimizer replica: together they send the
fleet's requests once). Requests are encoded before the clock starts and written as raw HTTP/1.1
on asyncio streams (a few microseconds each), so the generator stays far from its own limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from shared.samples import DGX_H100, build_report


def node_name(n: int) -> str:
    """Node ``n``'s name."""
    return f"gpu-{n:05d}"


def token(n: int) -> str:
    """Node ``n``'s agent token."""
    return f"agent-token-{n:06d}-bench-load"


def http_post(host: str, path: str, body: bytes, bearer: str | None) -> bytes:
    """A whole HTTP/1.1 POST of JSON ``body`` to ``path``, ready to write."""
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, int]:
    """Read one response (its body by Content-Length); its head and status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return head, int(head[9:12])


def _request(host: str, n: int, body: bytes) -> bytes:
    return http_post(host, "/v1/reports", body, token(n))


def _templates(nodes: int, t0: datetime) -> list[tuple[bytes, bytes]]:
    """Per node: the topology report body, and the samples report body with placeholders."""
    out = []
    for n in range(nodes):
        report = build_report(
            DGX_H100, node_name=node_name(n), collected_at=t0, util_ratios=[(n % 10) / 10] * 8
        )
        topology = report.model_dump_json(exclude_none=True).encode()
        samples = report.model_dump(
            mode="json",
            exclude_none=True,
            include={"schema_version", "node_name", "agent_version", "samples"},
        )
        samples.update(sequence=-1, collected_at="@AT@")
        out.append(
            (topology, json.dumps(samples).replace('"sequence": -1', '"sequence": @SEQ@').encode())
        )
    return out


class _Connections:
    """Keep-alive connections to one server, opened on demand up to ``limit``."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port = host, port
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened = 0
        self.limit = limit

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.free.empty() and self.opened < self.limit:
            self.opened += 1
            return await asyncio.open_connection(self.host, self.port)
        return await self.free.get()

    def put(self, connection: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.free.put_nowait(connection)

    def drop(self) -> None:
        self.opened -= 1


async def _exchange(connections: _Connections, request: bytes) -> int:
    """Send one request; its status (0: the connection failed)."""
    reader, writer = await connections.get()
    try:
        writer.write(request)
        _, status = await read_response(reader)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        writer.close()
        connections.drop()
        return 0
    connections.put((reader, writer))
    return status


async def _topology(base: str, nodes: int, t0: datetime, connections: int) -> dict[str, Any]:
    url = urlsplit(base)
    pool = _Connections(url.hostname or "127.0.0.1", url.port or 80, connections)
    requests = [_request(url.netloc, n, topo) for n, (topo, _) in enumerate(_templates(nodes, t0))]
    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def worker() -> None:
        while not queue.empty():
            statuses[await _exchange(pool, queue.get_nowait())] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    return {"sent": len(requests), "seconds": elapsed, "statuses": dict(statuses)}


async def _open_loop(
    base: str,
    nodes: int,
    t0: datetime,
    rate: float,
    seconds: float,
    first_sequence: int,
    connections: int,
    part: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    url = urlsplit(base)
    pool = _Connections(url.hostname or "127.0.0.1", url.port or 80, connections)
    templates = _templates(nodes, t0)
    mine, parts = part
    total = int(rate * seconds)
    requests = []
    for i in range(mine, total, parts):  # this generator's share of the fleet's requests
        n, sequence = i % nodes, first_sequence + i // nodes + 1
        at = (t0 + timedelta(seconds=10 * sequence)).isoformat().encode()
        body = templates[n][1].replace(b"@SEQ@", str(sequence).encode()).replace(b"@AT@", at)
        requests.append(_request(url.netloc, n, body))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    loop = asyncio.get_running_loop()

    async def one(request: bytes, due: float) -> None:
        statuses[await _exchange(pool, request)] += 1
        latencies.append(loop.time() - due)

    start = loop.time() + 0.5
    tasks = []
    for k, request in enumerate(requests):
        due = start + (mine + k * parts) / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(request, due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - start
    ordered = sorted(latencies)

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0

    return {
        "sent": len(requests),
        "seconds": elapsed,
        "achieved_per_s": len(requests) / elapsed,
        "p50_s": quantile(0.50),
        "p99_s": quantile(0.99),
        "max_s": ordered[-1] if ordered else 0.0,
        "statuses": dict(statuses),
        "connections": pool.opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--t0", required=True, help="collected_at of sequence 0 (ISO 8601)")
    parser.add_argument("--topology", action="store_true")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--first-sequence", type=int, default=0)
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument(
        "--part", default="0/1", help="K/N: send every N-th request from the K-th (N servers)"
    )
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # plain asyncio works too, a little slower
        pass
    t0 = datetime.fromisoformat(args.t0)
    if args.topology:
        result = asyncio.run(_topology(args.base, args.nodes, t0, min(args.connections, 32)))
    else:
        result = asyncio.run(
            _open_loop(
                args.base,
                args.nodes,
                t0,
                args.rate,
                args.seconds,
                args.first_sequence,
                args.connections,
                (int(args.part.split("/")[0]), int(args.part.split("/")[1])),
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
