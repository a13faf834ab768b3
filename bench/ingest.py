"""Report ingest at fleet scale, and the cluster summary, on SQLite and PostgreSQL.

Run: ``.venv/bin/python -m bench.ingest [--backends sqlite,postgresql] [--nodes 10000]
[--seconds 20] [--replicas 1]``.

Set-up: the optimizer runs as ``stowage-optimizer serve`` (``--replicas`` processes, each
its own ingest writer, all against the one database) pinned to CPU 0; the load comes from
``bench.loadgen``, a process of its own pinned to CPU 1, over loopback; the database server
(PostgreSQL) shares both cores with them. The fleet is ``--nodes`` fake 8-GPU nodes: each
first sends its topology, then samples reports come open-loop at rising rates (1,000/s is
10,000 nodes every 10 s). Latency counts from each request's due time, so queueing counts.
A rate is sustained when p99 < 250 ms, the achieved rate is at least 95% of the target and
no request failed. After the run every acknowledged report must be stored exactly once: the
receipts equal the acknowledgements and every GPU has one sample per stored report.
"""

from __future__ import annotations

import argparse
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
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
import yaml
from sqlalchemy import create_engine, text

from bench.loadgen import node_name, token
from bench.loopback import free_port

RATES = (250, 500, 750, 1000, 1250, 1500, 2000)
P99_LIMIT_S = 0.250
POSTGRES_ADMIN = os.environ.get(
    "STOWAGE_TEST_POSTGRES_URL", "postgresql+psycopg://127.0.0.1:5432/test"
)
BIN = Path(sys.executable).parent
#: Reports are dated from an hour ago on (the optimizer refuses reports far from its clock).
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


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
def _server(url: str, tokens: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = {
        **os.environ,
        "STOWAGE_DATABASE_URL": url,
        "STOWAGE_TOKENS_FILE": str(tokens),
    }
    process = subprocess.Popen(
        ["taskset", "-c", "0", str(BIN / "stowage-optimizer"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise
            time.sleep(0.2)
    try:
        yield base, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def _loadgen(bases: list[str], nodes: int, *args: str) -> list[dict[str, object]]:
    """Run one load generator per server (CPU 1), at once, each sending its share of the
    requests; their JSON results."""
    processes = [
        subprocess.Popen(
            [
                "taskset",
                "-c",
                "1",
                sys.executable,
                "-m",
                "bench.loadgen",
                "--base",
                base,
                "--nodes",
                str(nodes),
                "--t0",
                T0.isoformat(),
                "--part",
                f"{k}/{len(bases)}",
                *args,
            ],
            stdout=subprocess.PIPE,
        )
        for k, base in enumerate(bases)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"bench.loadgen failed (exit {process.returncode})")
        results.append(json.loads(out))
    return results


def _timed_get(base: str, path: str, token_: str, count: int) -> list[float]:
    times = []
    with httpx.Client(timeout=60) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(f"{base}{path}", headers={"Authorization": f"Bearer {token_}"})
            response.raise_for_status()
            times.append(time.perf_counter() - started)
    return times


def _cpu(pids: list[int]) -> float:
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def _stored_once(url: str, acknowledged: int) -> str:
    """Check that the acknowledged reports are stored exactly once; a verdict line."""
    engine = create_engine(url)
    with engine.connect() as connection:
        receipts = connection.execute(text("SELECT count(*) FROM report_receipts")).scalar_one()
        duplicates = connection.execute(
            text(
                "SELECT count(*) FROM (SELECT gpu_uuid, at FROM samples GROUP BY gpu_uuid, at "
                "HAVING count(*) > 1) AS d"
            )
        ).scalar_one()
        samples = connection.execute(text("SELECT count(*) FROM samples")).scalar_one()
    engine.dispose()
    ok = receipts == acknowledged and samples == 8 * acknowledged and duplicates == 0
    return (
        f"{'exactly once' if ok else 'NOT exactly once'}: {acknowledged} acknowledged reports, "
        f"{receipts} receipts, {samples} samples (8 per report), {duplicates} duplicated"
    )


def bench_backend(backend: str, nodes: int, seconds: float, replicas: int) -> int:
    """One backend's table; returns the highest sustained rate."""
    folder = Path(tempfile.mkdtemp(prefix="stowage-bench-"))
    reader = "reader-token-bench-00000001"
    entries = [{"token": token(n), "subject": node_name(n), "role": "agent"} for n in range(nodes)]
    entries.append({"token": reader, "subject": "bench", "role": "reader"})
    (folder / "tokens.yaml").write_text(yaml.safe_dump(entries))
    with ExitStack() as stack:
        url = stack.enter_context(_database(backend, folder))
        env = {
            **os.environ,
            "STOWAGE_DATABASE_URL": url,
            "STOWAGE_TOKENS_FILE": str(folder / "tokens.yaml"),
        }
        subprocess.run(
            [str(BIN / "stowage-optimizer"), "db", "upgrade"],
            env=env,
            check=True,
            capture_output=True,
        )
        servers = [
            stack.enter_context(_server(url, folder / "tokens.yaml")) for _ in range(replicas)
        ]
        bases, pids = [b for b, _ in servers], [p for _, p in servers]
        (topology,) = _loadgen(bases[:1], nodes, "--topology")
        acknowledged = int(topology["statuses"].get("202", 0))  # type: ignore[union-attr]
        print(
            f"\n### {backend}: {nodes:,} nodes x 8 GPUs, {replicas} optimizer process(es); "
            f"{nodes:,} topology reports in {topology['seconds']:.1f} s "
            f"({nodes / float(topology['seconds']):.0f}/s, 32 connections)\n"  # type: ignore[arg-type]
        )
        print(
            "| target reports/s | achieved/s | p50 ms | p99 ms | errors | optimizer CPU | verdict |"
        )
        print("|---:|---:|---:|---:|---:|---:|---|")
        best, sequence = 0, 0
        for rate in RATES:
            cpu_before, wall_before = _cpu(pids), time.perf_counter()
            results = _loadgen(
                bases,
                nodes,
                "--rate",
                str(rate),
                "--seconds",
                str(seconds),
                "--first-sequence",
                str(sequence),
            )
            cpu = (_cpu(pids) - cpu_before) / (time.perf_counter() - wall_before)
            sent = sum(int(r["sent"]) for r in results)  # type: ignore[call-overload]
            sequence += -(-sent // nodes) + 1
            statuses: dict[str, int] = {}
            for r in results:
                for code, count in r["statuses"].items():  # type: ignore[union-attr]
                    statuses[code] = statuses.get(code, 0) + count
            acknowledged += statuses.get("202", 0)
            errors = sent - statuses.get("202", 0) - statuses.get("200", 0)
            achieved = sum(float(r["achieved_per_s"]) for r in results)  # type: ignore[arg-type]
            p50 = max(float(r["p50_s"]) for r in results)  # type: ignore[arg-type]
            p99 = max(float(r["p99_s"]) for r in results)  # type: ignore[arg-type]
            ok = p99 < P99_LIMIT_S and achieved >= 0.95 * rate and errors == 0
            best = rate if ok else best
            print(
                f"| {rate:,} | {achieved:,.0f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} | {errors} "
                f"| {cpu:.0%} | {'sustained' if ok else 'not sustained'} |",
                flush=True,
            )
            if not ok:
                break
        print(f"\nmaximum sustained rate ({backend}): {best:,} reports/s")
        time.sleep(2)  # answers still in flight after a failed step are stored by now
        print(_stored_once(url, acknowledged))
        health = _timed_get(bases[0], "/healthz", reader, 50)
        summary = _timed_get(bases[0], "/v1/cluster/summary", reader, 20)
        listing = _timed_get(bases[0], "/v1/nodes", reader, 3)
        baseline = statistics.median(health)
        print(
            f"\n| request ({nodes:,} nodes, {8 * nodes:,} GPUs) "
            "| median ms | p95 ms | vs /healthz |"
        )
        print("|---|---:|---:|---:|")
        for name, times in (
            ("GET /healthz (baseline)", health),
            ("GET /v1/cluster/summary", summary),
            ("GET /v1/nodes", listing),
        ):
            median = statistics.median(times)
            p95 = sorted(times)[max(int(len(times) * 0.95) - 1, 0)]
            print(f"| {name} | {median * 1e3:.1f} | {p95 * 1e3:.1f} | {median / baseline:.1f}x |")
        return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; optimizer pinned to CPU 0, load generator to CPU 1"
    )
    for backend in args.backends.split(","):
        bench_backend(backend, args.nodes, args.seconds, args.replicas)


if __name__ == "__main__":
    main()
