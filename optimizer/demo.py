"""``stowage demo``: the whole story on a simulated cluster, end to end.

Each simulated node is a real server design (a shipped device profile) run by the real agent
code over a fake NVML, a fake host filesystem and a fake kubelet: the agent discovers its
GPUs, NVLink/PCIe wiring and NUMA layout, samples them, attributes GPU processes to pods and
builds a ``NodeReport``. The reports cross the wire as JSON; the optimizer side parses and
validates them, derives each node's topology and free GPUs, and refuses a corrupted report
with the offending field path. Each later capability (store, planner, controller) adds its
chapter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.profile import load_profile
from shared.report import GpuHealth, NodeReport
from shared.schema import ReportError, parse_report
from shared.topology import LinkMatrix, best_connected_gpus, gpus_by_numa_node, nvlink_islands

#: The simulated cluster: (node name, device profile).
SIMULATED_CLUSTER: Final = (
    ("gpu-h100-a", "dgx-h100"),
    ("gpu-h200-a", "hgx-h200"),
    ("gpu-a100-a", "dgx-a100"),
    ("gpu-v100-a", "dgx1-v100"),
    ("gpu-l40s-a", "l40s-pcie"),
    ("gb200-tray-a", "gb200-nvl72-tray"),
)
#: Simulated seconds since the nodes booted when the demo reads them (past dgx-a100's
#: scripted XID at 30 s and lost GPU at 120 s).
DEMO_TIME_S: Final = 150.0
#: A GPU below this utilisation with no process on it counts as free.
FREE_UTIL_RATIO: Final = 0.1
JOB_GPUS: Final = 2


@dataclass(frozen=True)
class NodeSummary:
    """What the optimizer learned about one node from its report."""

    node_name: str
    product: str
    gpu_count: int
    wire_bytes: int
    islands: tuple[tuple[int, ...], ...]
    numa_groups: dict[int | None, tuple[int, ...]]
    unhealthy: dict[int, GpuHealth]
    pods: tuple[str, ...]
    free_gpus: tuple[int, ...]
    best_free_pair: tuple[int, ...] | None
    best_pair_nvlinks: int
    mean_util_ratio: float
    power_w: float


@dataclass(frozen=True)
class DemoResult:
    """The demo's findings, printed by the CLI and asserted by the tests."""

    nodes: tuple[NodeSummary, ...]
    rejected: ReportError


def agent_report(node_name: str, profile_name: str, *, at_s: float = DEMO_TIME_S) -> NodeReport:
    """What the real agent reports for ``profile_name`` after ``at_s`` simulated seconds."""
    now = [0.0]
    with FakeMachine(load_profile(profile_name), clock=lambda: now[0]) as machine:
        attributor = PodAttributor(
            socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
        )
        collector = Collector(
            nvml=Nvml(machine.binding),
            root=machine.root,
            node_name=node_name,
            attributor=attributor,
        )
        collector.start()
        try:
            attributor.refresh()
            collector.collect()
            now[0] = at_s
            return collector.collect().report
        finally:
            collector.close()


def summarize(report: NodeReport, *, wire_bytes: int) -> NodeSummary:
    """Derive a node's topology, health and free GPUs from its (validated) report."""
    matrix = LinkMatrix.from_links(report.links)
    numa_of = {g.index: g.numa_node for g in report.gpus}
    index_of = {g.uuid: g.index for g in report.gpus}
    healthy = {g.index for g in report.gpus if g.health is GpuHealth.OK}
    free = tuple(
        sorted(
            index_of[s.gpu_uuid]
            for s in report.samples
            if index_of[s.gpu_uuid] in healthy
            and not s.processes
            and s.util_ratio is not None
            and s.util_ratio < FREE_UTIL_RATIO
        )
    )
    pair = best_connected_gpus(k=JOB_GPUS, candidates=free, links=matrix, numa_of=numa_of)
    pair_nvlinks = matrix.nvlink_count(*pair) if pair is not None else 0
    pods = sorted({f"{p.namespace}/{p.pod}" for s in report.samples for p in s.processes if p.pod})
    utils = [s.util_ratio for s in report.samples if s.util_ratio is not None]
    return NodeSummary(
        node_name=report.node_name,
        product=report.gpus[0].product if report.gpus else "-",
        gpu_count=len(report.gpus),
        wire_bytes=wire_bytes,
        islands=tuple(nvlink_islands(numa_of, report.links)),
        numa_groups=gpus_by_numa_node(report.gpus),
        unhealthy={g.index: g.health for g in report.gpus if g.health is not GpuHealth.OK},
        pods=tuple(pods),
        free_gpus=free,
        best_free_pair=pair,
        best_pair_nvlinks=pair_nvlinks,
        mean_util_ratio=sum(utils) / len(utils) if utils else 0.0,
        power_w=sum(s.power_w or 0.0 for s in report.samples),
    )


def run_demo() -> DemoResult:
    """Every simulated node's agent report over the wire, then a corrupted one refused."""
    summaries = []
    first_wire = ""
    for node_name, profile_name in SIMULATED_CLUSTER:
        sent = agent_report(node_name, profile_name)
        wire = sent.model_dump_json()
        received = parse_report(wire)
        if received != sent:
            raise RuntimeError(f"node={node_name} report changed on the wire")
        summaries.append(summarize(received, wire_bytes=len(wire)))
        first_wire = first_wire or wire
    corrupted = first_wire.replace('"gpu_b":1,', '"gpu_b":99,', 1)
    try:
        parse_report(corrupted)
    except ReportError as error:
        rejected = error
    else:
        raise RuntimeError("a report linking a missing GPU was accepted")
    return DemoResult(nodes=tuple(summaries), rejected=rejected)
