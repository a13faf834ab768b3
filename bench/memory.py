"""The optimizer's memory while clients flood it with the largest bodies and the database is
frozen.

Run: ``.venv/bin/python -m bench.memory [--seconds 30] [--connections 200]`` (needs
PostgreSQL's server binaries: the database is a throwaway cluster, frozen with SIGSTOP).

``stowage-optimizer serve`` runs on its defaults (2 MiB body limit, 128 MiB of bodies in
progress, a 64 MiB ingest queue, 10 s to answer) against a cluster of its own. Nodes send
their topology, then the cluster is frozen and ``--connections`` clients send, back to
back for ``--seconds``: the largest valid topology reports (about 2 MiB each: they queue
for the frozen writer), 2 MiB bodies that are not JSON, bodies over the limit, and 2 MiB
bodies to the unauthenticated webhook. The optimizer's RSS is sampled every 100 ms; after
the flood the cluster thaws and ``/readyz`` must answer 200 again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil
import yaml

from bench.loadgen import http_post, node_name, read_response, token
from bench.loopback import free_port
from bench.pgcluster import ClusterUnavailableError, signal_cluster, throwaway_postgres
from shared.samples import DGX_H100, build_report, gpu_uuid

BIN = Path(sys.executable).parent
NODES = 64
MAX_BODY = 2 * 2**20


def largest_report(n: int, *, at: str, limit: int = MAX_BODY) -> bytes:
    """A valid topology report of 256 GPUs with as many links as fit in ``limit`` bytes."""
    base = json.loads(build_report(DGX_H100, node_name=node_name(n)).model_dump_json())
    gpu, sample, link = base["gpus"][0], base["samples"][0], base["links"][0]
    gpus, samples = [], []
    for i in range(256):
        uuid = gpu_uuid(node_name(n), i)
        gpus.append(
            dict(gpu, index=i, uuid=uuid, pci_bus_id=f"0000:{i // 32 + 0x18:02x}:{i % 32:02x}.0")
        )
        samples.append(dict(sample, gpu_uuid=uuid))
    report = dict(base, gpus=gpus, samples=samples, links=[], collected_at=at, sequence=1)
    size = len(json.dumps(report))
    per_link = len(json.dumps(dict(link, gpu_a=254, gpu_b=255))) + 2
    room = (limit - size - 1024) // per_link
    pairs = [(a, b) for a in range(256) for b in range(a + 1, 256)][:room]
    report["links"] = [dict(link, gpu_a=a, gpu_b=b) for a, b in pairs]
    body = json.dumps(report).encode()
    assert len(body) <= limit, len(body)
    return body


async def _flood(
    port: int, requests: list[bytes], seconds: float, connections: int
) -> Counter[int]:
    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def client(k: int) -> None:
        reader = writer = None
        i = k
        while time.monotonic() < deadline:
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert reader is not None
                writer.write(requests[i % len(requests)])
                i += connections
                head, status = await asyncio.wait_for(read_response(reader), timeout=15)
                statuses[status] += 1
                if b"connection: close" in head.lower():
                    writer.close()
                    writer = None
            except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError) as error:
                # 0: no answer within 15 s; -1: the connection closed before an answer
                # arrived (a refusal that closes it while the client is still sending)
                statuses[0 if isinstance(error, TimeoutError) else -1] += 1
                if writer is not None:
                    writer.close()
                writer = None
        if writer is not None:  # the flood's connections end with it
            writer.close()

    await asyncio.gather(*(client(k) for k in range(connections)))
    return statuses


def _run(url: str, data: Path, seconds: float, connections: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="stowage-memory-"))
    entries = [{"token": token(n), "subject": node_name(n), "role": "agent"} for n in range(NODES)]
    (folder / "tokens.yaml").write_text(yaml.safe_dump(entries))
    env = {
        **os.environ,
        "STOWAGE_DATABASE_URL": url,
        "STOWAGE_TOKENS_FILE": str(folder / "tokens.yaml"),
    }
    subprocess.run(
        [str(BIN / "stowage-optimizer"), "db", "upgrade"], env=env, check=True, capture_output=True
    )
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "stowage-optimizer"), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 60))
    with httpx.Client(timeout=30) as client:
        for n in range(4):  # a few nodes are known before the freeze
            body = build_report(DGX_H100, node_name=node_name(n)).model_dump(mode="json")
            body.update(collected_at=now)
            client.post(
                f"{base}/v1/reports", json=body, headers={"Authorization": f"Bearer {token(n)}"}
            ).raise_for_status()
    process = psutil.Process(server.pid)
    before = process.memory_info().rss
    host = f"127.0.0.1:{port}"
    big = [largest_report(n, at=now) for n in range(4, NODES)]
    junk = b"[" + b"0," * (MAX_BODY // 2 - 2) + b"0]"
    requests = []
    for n, body in zip(range(4, NODES), big, strict=True):
        requests.append(http_post(host, "/v1/reports", body, token(n)))
        requests.append(http_post(host, "/v1/reports", junk, token(n)))
        requests.append(http_post(host, "/webhooks/mutate-pods", junk, None))
        requests.append(http_post(host, "/v1/reports", junk + b" " * 4096, token(n)))
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            peak.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    signal_cluster(data, signal.SIGSTOP)
    try:
        statuses = asyncio.run(_flood(port, requests, seconds, connections))
    finally:
        signal_cluster(data, signal.SIGCONT)
    stop.set()
    sampler.join()
    ready: int | str | None = None
    for _ in range(60):
        try:
            ready = httpx.get(f"{base}/readyz", timeout=5).status_code
        except httpx.HTTPError as error:
            ready = type(error).__name__
        if ready == 200:
            break
        time.sleep(0.5)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
        stopped = "stopped on SIGTERM"
    except subprocess.TimeoutExpired:
        server.kill()
        stopped = "did NOT stop within 60 s of SIGTERM (killed)"
    mib = 2**20
    print(
        f"{connections} connections for {seconds:.0f} s against a frozen PostgreSQL "
        f"(bodies of {len(big[0]) / mib:.1f} MiB: valid 256-GPU reports, non-reports, "
        "webhook bodies, bodies over the limit)\n"
    )
    print("| optimizer RSS before | peak during the flood | answers |")
    print("|---:|---:|---|")
    names = {0: "unanswered in 15 s", -1: "closed while sending"}
    answers = ", ".join(
        f"{names.get(code, code)}: {count}" for code, count in sorted(statuses.items())
    )
    print(f"| {before / mib:.0f} MiB | {max(peak) / mib:.0f} MiB | {answers} |")
    print(f"\nafter the thaw: /readyz {ready}; the optimizer {stopped}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--connections", type=int, default=200)
    args = parser.parse_args()
    # a terminated run must still thaw and remove its cluster (the finally blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        with throwaway_postgres() as (url, data):
            _run(url, data, args.seconds, args.connections)
    except ClusterUnavailableError as why:
        raise SystemExit(f"bench.memory: {why}") from None


if __name__ == "__main__":
    main()
