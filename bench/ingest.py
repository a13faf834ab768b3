"""Report ingest and the cluster summary under a 2,000-node load, on SQLite and PostgreSQL.

Run: ``.venv/bin/python -m bench.ingest [--backends sqlite,postgresql] [--seconds 20]``.

The optimizer runs as ``stowage-optimizer serve`` pinned to CPU 0 (one core); the load comes
from this process pinned to CPU 1, over loopback. 2,000 fake nodes of 8 GPUs first send their
topology, then samples reports, open-loop at a fixed rate (200/s is every node every 10 s).
Latency is measured from each request's scheduled send time, so queueing counts. The rate
steps up until p99 passes 100 ms or the achieved rate falls below 95% of the target; the
highest passing rate is the maximum sustained rate. Baseline in the same run: ``/healthz``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import yaml
from sqlalchemy import create_engine, text

from bench.loopback import free_port
from shared.samples import DGX_H100, build_report

NODES = 2000
RATES = (200, 250, 300, 400, 600, 800)
P99_LIMIT_S = 0.100
POSTGRES_ADMIN = os.environ.get(
    "STOWAGE_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)
BIN = Path(sys.executable).parent
#: Reports are dated from an hour ago on (the optimizer refuses reports far from its clock).
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


@contextmanager
def _database(backend: str, folder: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    admin = create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("DROP DATABASE IF EXISTS stowage_bench"))
        connection.execute(text("CREATE DATABASE stowage_bench"))
    url = POSTGRES_ADMIN.rsplit("/", 1)[0] + "/stowage_bench"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text("DROP DATABASE IF EXISTS stowage_bench WITH (FORCE)"))
        admin.dispose()


@contextmanager
def _server(url: str, tokens: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "STOWAGE_DATABASE_URL": url, "STOWAGE_TOKENS_FILE": str(tokens)}
    subprocess.run(
        [str(BIN / "stowage-optimizer"), "db", "upgrade"], env=env, check=True, capture_output=True
    )
    process = subprocess.Popen(
        ["taskset", "-c", "0", str(BIN / "stowage-optimizer"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    try:
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def _payloads() -> tuple[list[bytes], list[dict[str, object]]]:
    """Topology report bodies, and per-node samples templates."""
    topology, templates = [], []
    for n in range(NODES):
        report = build_report(
            DGX_H100, node_name=f"gpu-{n:04d}", collected_at=T0, util_ratios=[(n % 10) / 10] * 8
        )
        topology.append(report.model_dump_json(exclude_none=True).encode())
        data = json.loads(
            report.model_dump_json(
                exclude_none=True,
                include={"schema_version", "node_name", "agent_version", "samples"},
            )
        )
        templates.append(data)
    return topology, templates


async def _send(
    client: httpx.AsyncClient,
    base: str,
    body: bytes,
    token: str,
    due: float,
    latencies: list[float],
    failures: list[int],
) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        response = await client.post(
            f"{base}/v1/reports",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
    except httpx.HTTPError:
        failures.append(0)  # connection dropped under overload
    else:
        if response.status_code >= 300:
            failures.append(response.status_code)
    latencies.append(time.perf_counter() - due)


async def _run_rate(
    base: str,
    rate: int,
    seconds: float,
    templates: list[dict[str, object]],
    tokens: list[str],
    sequence: list[int],
) -> tuple[float, float, float, int]:
    total = int(rate * seconds)
    bodies = []
    for i in range(total):  # encoded before the clock starts: the generator only sends
        n = i % NODES
        sequence[n] += 1
        at = (T0 + timedelta(seconds=10 * sequence[n])).isoformat()
        bodies.append((n, json.dumps(dict(templates[n], sequence=sequence[n], collected_at=at))))
    latencies: list[float] = []
    failures: list[int] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter() + 0.5
        tasks = [
            asyncio.create_task(
                _send(client, base, body.encode(), tokens[n], start + i / rate, latencies, failures)
            )
            for i, (n, body) in enumerate(bodies)
        ]
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return total / elapsed, p50, p99, len(failures)


def _timed_get(base: str, path: str, token: str, count: int) -> list[float]:
    times = []
    with httpx.Client(timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
            response.raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def bench_backend(backend: str, seconds: float) -> None:
    folder = Path(tempfile.mkdtemp(prefix="stowage-bench-"))
    tokens = [f"agent-token-{n:06d}-bench-load" for n in range(NODES)]
    reader = "reader-token-bench-00000001"
    entries = [
        {"token": t, "subject": f"gpu-{n:04d}", "role": "agent"} for n, t in enumerate(tokens)
    ]
    entries.append({"token": reader, "subject": "bench", "role": "reader"})
    (folder / "tokens.yaml").write_text(yaml.safe_dump(entries))
    topology, templates = _payloads()
    with _database(backend, folder) as url, _server(url, folder / "tokens.yaml") as base:
        server_pid = next(
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] and base.rsplit(":", 1)[1] in p.info["cmdline"]
        )
        started = time.perf_counter()
        with httpx.Client(timeout=30) as client:
            for n, body in enumerate(topology):
                client.post(
                    f"{base}/v1/reports",
                    content=body,
                    headers={"Authorization": f"Bearer {tokens[n]}"},
                ).raise_for_status()
        warmup = time.perf_counter() - started
        sequence = [0] * NODES
        print(
            f"\n### {backend}: {NODES} topology reports in {warmup:.1f} s "
            f"({NODES / warmup:.0f}/s, sequential, one client)\n"
        )
        print("| target reports/s | achieved/s | p50 ms | p99 ms | errors | server CPU | verdict |")
        print("|---:|---:|---:|---:|---:|---:|---|")
        best = 0
        server = psutil.Process(server_pid)
        for rate in RATES:
            cpu_before = sum(server.cpu_times()[:2])
            wall_before = time.perf_counter()
            achieved, p50, p99, errors = asyncio.run(
                _run_rate(base, rate, seconds, templates, tokens, sequence)
            )
            cpu = (sum(server.cpu_times()[:2]) - cpu_before) / (time.perf_counter() - wall_before)
            ok = p99 < P99_LIMIT_S and achieved >= 0.95 * rate and errors == 0
            best = rate if ok else best
            print(
                f"| {rate} | {achieved:.0f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {errors} "
                f"| {cpu:.0%} | {'sustained' if ok else 'not sustained'} |"
            )
            if not ok:
                break
        print(f"\nmaximum sustained rate ({backend}, one server core): {best} reports/s")
        health = _timed_get(base, "/healthz", reader, 50)
        summary = _timed_get(base, "/v1/cluster/summary", reader, 50)
        nodes = _timed_get(base, "/v1/nodes", reader, 5)
        hm, sm = statistics.median(health), statistics.median(summary)
        print("\n| request (2,000 nodes, 16,000 GPUs) | median ms | p95 ms | vs /healthz |")
        print("|---|---:|---:|---:|")
        for name, times in (
            ("GET /healthz (baseline)", health),
            ("GET /v1/cluster/summary", summary),
            ("GET /v1/nodes", nodes),
        ):
            med = statistics.median(times)
            p95 = sorted(times)[max(int(len(times) * 0.95) - 1, 0)]
            print(f"| {name} | {med * 1e3:.1f} | {p95 * 1e3:.1f} | {med / hm:.1f}x |")
        del sm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    _pin(1)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; server pinned to CPU 0, load generator to CPU 1"
    )
    for backend in args.backends.split(","):
        bench_backend(backend, args.seconds)


if __name__ == "__main__":
    main()
