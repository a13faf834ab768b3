"""The Prometheus exporter: names, labels, values, and `promtool check metrics`."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.collector import Collection
from agent.exporter import build_registry
from agent.fake.machine import FakeMachine
from agent.pods import PodAttributor
from agent.profile import load_profile
from tests.agent.helpers import ManualClock, fake_collector
from tests.conftest import prometheus_binary

STABLE_NAMES = [
    "stowage_gpu_info",
    "stowage_gpu_utilization_ratio",
    "stowage_gpu_memory_used_bytes",
    "stowage_gpu_memory_total_bytes",
    "stowage_gpu_power_watts",
    "stowage_gpu_energy_joules_total",
    "stowage_gpu_temperature_celsius",
    "stowage_gpu_sm_clock_hertz",
    "stowage_gpu_ecc_errors_total",
    "stowage_gpu_xid_errors_total",
    "stowage_gpu_health",
    "stowage_gpu_nvlinks",
    "stowage_pod_gpu_utilization_ratio",
    "stowage_pod_gpu_memory_used_bytes",
    "stowage_gpu_sm_active_ratio",
    "stowage_gpu_sm_occupancy_ratio",
    "stowage_gpu_tensor_active_ratio",
    "stowage_gpu_dram_active_ratio",
    "stowage_pod_gpu_sm_util_ratio",
    "stowage_agent_collect_duration_seconds",
    "stowage_agent_report_failures_total",
]


def _exposition(tmp_path: Path) -> tuple[bytes, Collection]:
    profile = load_profile("dgx-h100")
    clock = ManualClock(5.0)
    with FakeMachine(profile, clock=clock) as machine:
        from agent.collector import Collector
        from agent.nvml import Nvml

        attributor = PodAttributor(
            socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
        )
        attributor.refresh()
        collector = Collector(
            nvml=Nvml(machine.binding), root=machine.root, node_name="gpu-1", attributor=attributor
        )
        collector.start()
        collector.collect()
        clock.advance(10)  # a second read: GPM has two samples to compare
        collection = collector.collect()
        registry, metrics = build_registry(lambda: collection)
        metrics.collect_duration.observe(collection.duration_s)
        metrics.report_failures.inc()
        return generate_latest(registry), collection


def _samples(text: bytes) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_stable_metric_names_are_exported(tmp_path: Path) -> None:
    text, _ = _exposition(tmp_path)
    samples = _samples(text)
    for name in STABLE_NAMES:
        present = name in samples or f"{name}_count" in samples or f"{name}_bucket" in samples
        assert present, name


def test_values_and_labels_follow_the_report(tmp_path: Path) -> None:
    text, collection = _exposition(tmp_path)
    report = collection.report
    samples = _samples(text)
    info = {labels["gpu"]: labels for labels, _ in samples["stowage_gpu_info"]}
    assert info["0"]["model"] == "NVIDIA H100 80GB HBM3"
    assert info["0"]["uuid"] == report.gpus[0].uuid
    assert info["0"]["driver_version"] == "550.54.15"
    util = {labels["gpu"]: value for labels, value in samples["stowage_gpu_utilization_ratio"]}
    assert util["0"] == report.samples[0].util_ratio
    nvlinks = [v for labels, v in samples["stowage_gpu_nvlinks"] if labels["gpu"] == "0"]
    assert nvlinks == [18.0] * 7
    healthy = [labels for labels, v in samples["stowage_gpu_health"] if v == 1]
    assert {labels["state"] for labels in healthy} == {"ok"}
    pods = {
        (labels["pod"], labels["gpu"]): value
        for labels, value in samples["stowage_pod_gpu_memory_used_bytes"]
    }
    assert pods[("llama-pretrain-0", "2")] == 71 * 1024**3
    assert ("eval-sweep-7", "4") in pods
    pod_util = [labels for labels, _ in samples["stowage_pod_gpu_utilization_ratio"]]
    assert all(labels["namespace"] in {"ml", "research"} for labels in pod_util)
    active = {labels["gpu"]: v for labels, v in samples["stowage_gpu_sm_active_ratio"]}
    assert active["0"] == report.samples[0].sm_active_ratio
    pod_sm = {
        (labels["pod"], labels["gpu"]): value
        for labels, value in samples["stowage_pod_gpu_sm_util_ratio"]
    }
    [process] = report.samples[2].processes
    assert pod_sm[("llama-pretrain-0", "2")] == process.sm_util_ratio
    assert samples["stowage_agent_report_failures_total"][0][1] == 1.0
    # per-GPU series name the one container running on the GPU, as dcgm-exporter's do
    owner = {
        labels["gpu"]: (labels["model"], labels["namespace"], labels["pod"], labels["container"])
        for labels, _ in samples["stowage_gpu_power_watts"]
    }
    assert owner["2"] == ("NVIDIA H100 80GB HBM3", "ml", "llama-pretrain-0", process.container)
    idle = [gpu for gpu, (_, _, pod, _) in owner.items() if pod == ""]
    running = {s.gpu_uuid for s in report.samples if s.processes}
    assert len(idle) == len(report.samples) - len(running)


def test_no_collection_yet_exports_only_agent_health() -> None:
    registry, _ = build_registry(lambda: None)
    samples = _samples(generate_latest(registry))
    assert "stowage_gpu_info" not in samples
    assert "stowage_agent_report_failures_total" in samples


def test_lost_gpu_is_visible_in_health(tmp_path: Path) -> None:
    clock = ManualClock(0.0)
    collector, _ = fake_collector(load_profile("dgx-a100"), tmp_path, clock=clock)
    collector.collect()
    clock.advance(200)
    collection = collector.collect()
    registry, _ = build_registry(lambda: collection)
    samples = _samples(generate_latest(registry))
    lost = [
        labels["gpu"]
        for labels, v in samples["stowage_gpu_health"]
        if v == 1 and labels["state"] == "lost"
    ]
    assert lost == ["6"]


def test_promtool_accepts_the_exposition(tmp_path: Path) -> None:
    promtool = prometheus_binary("promtool")
    text, _ = _exposition(tmp_path)
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert done.stdout.decode().strip() == "", done.stdout.decode()
