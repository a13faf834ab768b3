"""Prometheus metrics of the agent: per-GPU and per-pod series, and the agent's own health.

GPU and pod series come from a custom collector that reads the latest collection at scrape
time (nothing is sampled twice, nothing goes stale in a gauge). The agent's own health
(collection time, report failures, buffered and dropped reports) uses ordinary counters and
a histogram. Every metric is registered on a registry passed in, so tests use a fresh one.
Names follow Prometheus rules: base units, ``_total`` counters, ``_ratio`` for 0-1 values.

Every per-GPU series carries, as dcgm-exporter's do, the GPU's model (``model``: Prometheus
wants snake_case label names, so dcgm-exporter's ``modelName`` is added by the recording
rules) and the ``namespace``, ``pod`` and ``container`` of the one container whose processes
run on the GPU (empty when none or several do); ``helm/stowage/files/dcgm-compat.yaml``
records them under the ``DCGM_FI_*`` names, units and labels.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.collector import Collection
from shared.report import GpuHealth, GpuSample, NodeReport

DEFAULT_PORT: Final = 9402
_GPU_LABELS: Final = ("node", "gpu", "uuid", "model", "namespace", "pod", "container")
#: The per-pod series: the GPU's labels, the pod's own in the last three.
_POD_LABELS: Final = _GPU_LABELS


class GpuMetricsCollector(Collector):
    """Yields GPU and pod metrics from the latest :class:`Collection` at scrape time.

    Args:
        latest: returns the most recent collection, or None before the first one.
    """

    def __init__(self, latest: Callable[[], Collection | None]) -> None:
        self.latest = latest

    def describe(self) -> Iterable[Metric]:
        return []  # series depend on the node; describe nothing so registration never scrapes

    def collect(self) -> Iterator[Metric]:
        collection = self.latest()
        if collection is None:
            return
        yield from _node_metrics(collection.report)


def _gauge(name: str, doc: str, labels: tuple[str, ...] = _GPU_LABELS) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _node_metrics(report: NodeReport) -> Iterator[Metric]:
    node = report.node_name
    info = _gauge(
        "stowage_gpu_info",
        "GPU identity; always 1.",
        (*_GPU_LABELS, "pci_bus_id", "numa_node", "driver_version", "cuda_version", "clique"),
    )
    total = _gauge("stowage_gpu_memory_total_bytes", "GPU framebuffer size in bytes.")
    health = _gauge(
        "stowage_gpu_health", "1 for the GPU's current health state.", (*_GPU_LABELS, "state")
    )
    nvlinks = _gauge(
        "stowage_gpu_nvlinks", "NVLinks between this GPU and a peer GPU.", (*_GPU_LABELS, "peer")
    )
    labels_of: dict[str, list[str]] = {}
    owners = {s.gpu_uuid: _sole_owner(s) for s in report.samples}
    for gpu in report.gpus:
        labels = [node, str(gpu.index), gpu.uuid, gpu.product, *owners.get(gpu.uuid, ("", "", ""))]
        labels_of[gpu.uuid] = labels
        info.add_metric(
            [
                *labels,
                gpu.pci_bus_id,
                "" if gpu.numa_node is None else str(gpu.numa_node),
                report.driver_version or "",
                report.cuda_version or "",
                gpu.clique or "",
            ],
            1,
        )
        total.add_metric(labels, gpu.memory_bytes)
        for state in GpuHealth:
            health.add_metric([*labels, state.value], 1 if gpu.health is state else 0)
    for link in report.links:
        a, b = report.gpu_by_index(link.gpu_a), report.gpu_by_index(link.gpu_b)
        if a is None or b is None:
            continue
        nvlinks.add_metric([*labels_of[a.uuid], str(b.index)], link.nvlink_count)
        nvlinks.add_metric([*labels_of[b.uuid], str(a.index)], link.nvlink_count)
    yield from (info, total, health, nvlinks)
    yield from _sample_metrics(report.samples, labels_of)


def _sample_metrics(samples: list[GpuSample], labels_of: dict[str, list[str]]) -> Iterator[Metric]:
    util = _gauge("stowage_gpu_utilization_ratio", "Fraction of time a kernel ran (NVML).")
    mem_util = _gauge(
        "stowage_gpu_memory_bandwidth_utilization_ratio", "Fraction of time memory was busy."
    )
    used = _gauge("stowage_gpu_memory_used_bytes", "GPU framebuffer used in bytes.")
    sm_active = _gauge("stowage_gpu_sm_active_ratio", "Fraction of SMs busy (GPM, Hopper+).")
    occupancy = _gauge(
        "stowage_gpu_sm_occupancy_ratio", "Resident warps over the maximum (GPM, Hopper+)."
    )
    tensor = _gauge(
        "stowage_gpu_tensor_active_ratio", "Fraction of cycles a tensor core was busy (GPM)."
    )
    dram = _gauge("stowage_gpu_dram_active_ratio", "Fraction of peak DRAM bandwidth used (GPM).")
    power = _gauge("stowage_gpu_power_watts", "GPU power draw in watts.")
    energy = CounterMetricFamily(
        "stowage_gpu_energy_joules",
        "GPU energy since driver load, joules.",
        labels=list(_GPU_LABELS),
    )
    temperature = _gauge("stowage_gpu_temperature_celsius", "GPU temperature in degrees Celsius.")
    clock = _gauge("stowage_gpu_sm_clock_hertz", "GPU SM clock in hertz.")
    ecc = CounterMetricFamily(
        "stowage_gpu_ecc_errors",
        "Volatile ECC errors since driver load.",
        labels=[*_GPU_LABELS, "type"],
    )
    xid = CounterMetricFamily(
        "stowage_gpu_xid_errors", "Critical XID events seen by the agent.", labels=list(_GPU_LABELS)
    )
    last_xid = _gauge(
        "stowage_gpu_last_xid",
        "Code of the last critical XID event the agent saw on the GPU (0: none yet).",
    )
    pod_util = _gauge(
        "stowage_pod_gpu_utilization_ratio",
        "GPU utilisation attributed to a pod's container (a shared GPU is split by memory used).",
        _POD_LABELS,
    )
    pod_mem = _gauge(
        "stowage_pod_gpu_memory_used_bytes", "GPU memory used by a pod's container.", _POD_LABELS
    )
    pod_sm = _gauge(
        "stowage_pod_gpu_sm_util_ratio",
        "A pod's container's share of SM time on a GPU (NVML per-process utilisation).",
        _POD_LABELS,
    )
    for sample in samples:
        labels = labels_of.get(sample.gpu_uuid)
        if labels is None:
            continue
        for family, value in (
            (util, sample.util_ratio),
            (mem_util, sample.memory_bandwidth_util_ratio),
            (used, sample.memory_used_bytes),
            (sm_active, sample.sm_active_ratio),
            (occupancy, sample.sm_occupancy_ratio),
            (tensor, sample.tensor_active_ratio),
            (dram, sample.dram_active_ratio),
            (power, sample.power_w),
            (energy, sample.energy_j),
            (temperature, sample.temperature_c),
            (clock, sample.sm_clock_hz),
        ):
            if value is not None:
                family.add_metric(labels, value)
        if sample.ecc is not None:
            ecc.add_metric([*labels, "corrected"], sample.ecc.corrected_total)
            ecc.add_metric([*labels, "uncorrected"], sample.ecc.uncorrected_total)
        xid.add_metric(labels, sample.xid_total)
        last_xid.add_metric(labels, sample.last_xid or 0)
        gpu_labels = labels[:4]
        for pod_labels, (share, memory) in _pod_shares(sample).items():
            if sample.util_ratio is not None:
                pod_util.add_metric([*gpu_labels, *pod_labels], sample.util_ratio * share)
            pod_mem.add_metric([*gpu_labels, *pod_labels], memory)
        for pod_labels, ratio in _pod_sm(sample).items():
            pod_sm.add_metric([*gpu_labels, *pod_labels], ratio)
    yield from (
        util,
        mem_util,
        used,
        power,
        energy,
        temperature,
        clock,
        ecc,
        xid,
        last_xid,
        sm_active,
        occupancy,
        tensor,
        dram,
        pod_util,
        pod_mem,
        pod_sm,
    )


def _sole_owner(sample: GpuSample) -> tuple[str, str, str]:
    """(namespace, pod, container) of the one container running processes on the GPU, or
    empty strings when none or several do."""
    owners = {
        (p.namespace, p.pod, p.container or "")
        for p in sample.processes
        if p.namespace is not None and p.pod is not None
    }
    return owners.pop() if len(owners) == 1 else ("", "", "")


def _pod_shares(sample: GpuSample) -> dict[tuple[str, str, str], tuple[float, int]]:
    """(namespace, pod, container) -> (share of the GPU, memory bytes) for attributed processes."""
    memory: dict[tuple[str, str, str], int] = defaultdict(int)
    for process in sample.processes:
        if process.namespace is None or process.pod is None:
            continue
        key = (process.namespace, process.pod, process.container or "")
        memory[key] += process.memory_used_bytes or 0
    total = sum(memory.values())
    return {key: (used / total if total else 1 / len(memory), used) for key, used in memory.items()}


def _pod_sm(sample: GpuSample) -> dict[tuple[str, str, str], float]:
    """(namespace, pod, container) -> summed SM share of its processes, where NVML told."""
    shares: dict[tuple[str, str, str], float] = defaultdict(float)
    for process in sample.processes:
        if process.namespace is None or process.pod is None or process.sm_util_ratio is None:
            continue
        shares[process.namespace, process.pod, process.container or ""] += process.sm_util_ratio
    return {key: min(value, 1.0) for key, value in shares.items()}


class AgentMetrics:
    """The agent's own health metrics, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.collect_duration = Histogram(
            "stowage_agent_collect_duration_seconds",
            "Time to collect one cycle from NVML.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.reports_sent = Counter(
            "stowage_agent_reports_sent_total",
            "Reports the optimizer acknowledged.",
            registry=registry,
        )
        self.report_failures = Counter(
            "stowage_agent_report_failures_total",
            "Failed attempts to send a report.",
            registry=registry,
        )
        self.reports_dropped = Counter(
            "stowage_agent_reports_dropped_total",
            "Reports dropped because the buffer was full (oldest first).",
            registry=registry,
        )
        self.buffered = Gauge(
            "stowage_agent_buffered_reports", "Reports waiting to be sent.", registry=registry
        )


def build_registry(
    latest: Callable[[], Collection | None],
) -> tuple[CollectorRegistry, AgentMetrics]:
    """A registry with the GPU collector and the agent's health metrics."""
    registry = CollectorRegistry()
    registry.register(GpuMetricsCollector(latest))
    return registry, AgentMetrics(registry)
