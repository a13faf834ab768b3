"""The agent's cost on a node: one collection cycle, and CPU and memory over minutes.

Run: ``.venv/bin/python -m bench.agent [--duration 180]`` (``make bench`` runs it).

1. Cycle time: ``Collector.collect()`` for 8 GPUs over the fake NVML (the agent's real
   code), against a baseline measured in the same run: the same NVML reads made directly on
   the binding, without the agent around them.
2. Footprint: ``stowage-agent run --fake-profile dgx-h100 --interval 10`` as a separate
   process, scraped every 15 s like Prometheus would, for ``--duration`` seconds: CPU as a
   share of one core and RSS, next to a bare interpreter that only imports the agent.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pynvml

from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.profile import load_profile
from bench.loopback import free_port

CYCLES = 300


def _raw_reads(binding: object, count: int) -> None:
    b = binding
    for index in range(count):
        h = b.nvmlDeviceGetHandleByIndex(index)  # type: ignore[attr-defined]
        b.nvmlDeviceGetUtilizationRates(h)  # type: ignore[attr-defined]
        b.nvmlDeviceGetMemoryInfo(h)  # type: ignore[attr-defined]
        b.nvmlDeviceGetPowerUsage(h)  # type: ignore[attr-defined]
        b.nvmlDeviceGetTotalEnergyConsumption(h)  # type: ignore[attr-defined]
        b.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU)  # type: ignore[attr-defined]
        b.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)  # type: ignore[attr-defined]
        b.nvmlDeviceGetCurrentClocksEventReasons(h)  # type: ignore[attr-defined]
        for kind in (0, 1):
            b.nvmlDeviceGetTotalEccErrors(h, kind, 0)  # type: ignore[attr-defined]
        b.nvmlDeviceGetComputeRunningProcesses(h)  # type: ignore[attr-defined]


def cycle_times() -> tuple[float, float]:
    """(median collect() seconds, median raw-read seconds) for dgx-h100."""
    with FakeMachine(load_profile("dgx-h100")) as machine:
        attributor = PodAttributor(
            socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
        )
        collector = Collector(
            nvml=Nvml(machine.binding), root=machine.root, node_name="bench", attributor=attributor
        )
        collector.start()
        attributor.refresh()
        collector.collect()  # discovery of links happens once
        ours, raw = [], []
        for _ in range(CYCLES):
            started = time.perf_counter()
            collector.collect()
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            _raw_reads(machine.binding, 8)
            raw.append(time.perf_counter() - started)
        collector.close()
    return statistics.median(ours), statistics.median(raw)


def footprint(duration_s: float) -> tuple[float, float, float]:
    """(CPU share of one core, peak RSS MiB, baseline RSS MiB) of a running agent."""
    agent_bin = str(Path(sys.executable).parent / "stowage-agent")
    port = free_port()
    process = subprocess.Popen(
        [
            agent_bin,
            "run",
            "--fake-profile",
            "dgx-h100",
            "--no-report",
            "--interval",
            "10",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    handle = psutil.Process(process.pid)
    time.sleep(5)  # start-up (imports, discovery) is not steady state
    cpu_start = sum(handle.cpu_times()[:2])
    started = time.monotonic()
    peak = 0
    while time.monotonic() - started < duration_s:
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        peak = max(peak, handle.memory_info().rss)
        time.sleep(15)
    cpu = sum(handle.cpu_times()[:2]) - cpu_start
    wall = time.monotonic() - started
    process.terminate()
    process.wait(timeout=30)
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, agent.cli; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return cpu / wall, peak / 2**20, int(baseline.stdout) / 1024


def main() -> None:
    """Measure and print the tables."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=180.0, help="footprint seconds")
    args = parser.parse_args()
    cpus = psutil.cpu_count()
    print(f"machine: {platform.machine()}, {cpus} CPUs, Python {platform.python_version()}")
    ours, raw = cycle_times()
    print()
    print("| measure (dgx-h100, 8 GPUs, fake NVML) | median | baseline | ratio |")
    print("|---|---:|---:|---:|")
    print(
        f"| one collection cycle vs the raw NVML reads | {ours * 1e3:.2f} ms | "
        f"{raw * 1e3:.2f} ms | {ours / raw:.1f}x |"
    )
    cpu, rss, base = footprint(args.duration)
    title = f"agent at a 10 s interval, {args.duration:.0f} s, scraped every 15 s"
    print()
    print(f"| {title} | value | baseline | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| CPU, share of one core | {cpu:.2%} | - | - |")
    print(
        f"| peak RSS vs `import agent.cli` alone | {rss:.1f} MiB | {base:.1f} MiB "
        f"| {rss / base:.2f}x |"
    )


if __name__ == "__main__":
    main()
