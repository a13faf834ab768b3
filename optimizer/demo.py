"""``stowage demo``: the whole story on a simulated cluster, end to end.

Today the story is the contract: simulated GPU nodes of real server designs produce node
reports, the reports cross the wire as JSON, the optimizer side parses and validates them,
derives each node's topology (NVLink islands, NUMA groups, best-connected GPU sets) and
refuses a corrupted report with the offending field path. Each later capability (agent,
store, planner, controller) adds its chapter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.report import NodeReport
from shared.samples import DGX1_V100, DGX_H100, L40S_PCIE, NodeShape, build_report
from shared.schema import ReportError, parse_report
from shared.topology import LinkMatrix, best_connected_gpus, gpus_by_numa_node, nvlink_islands

#: A GPU below this utilisation counts as idle in the demo.
IDLE_UTIL_RATIO: Final = 0.05

#: The simulated cluster: (node name, server design, per-GPU utilisation).
SIMULATED_CLUSTER: Final[tuple[tuple[str, NodeShape, tuple[float, ...]], ...]] = (
    ("gpu-h100-a", DGX_H100, (0.92, 0.88, 0.95, 0.90, 0.0, 0.0, 0.0, 0.0)),
    ("gpu-h100-b", DGX_H100, (0.40,) * 8),
    ("gpu-v100-a", DGX1_V100, (0.0, 0.0, 0.0, 0.0, 0.75, 0.70, 0.0, 0.0)),
    ("gpu-l40s-a", L40S_PCIE, (0.30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.65)),
)


@dataclass(frozen=True)
class NodeSummary:
    """What the optimizer learned about one node from its report."""

    node_name: str
    product: str
    gpu_count: int
    wire_bytes: int
    islands: tuple[tuple[int, ...], ...]
    numa_groups: dict[int | None, tuple[int, ...]]
    idle_gpus: tuple[int, ...]
    best_idle_quad: tuple[int, ...] | None
    best_quad_nvlinks: int
    mean_util_ratio: float
    power_w: float


@dataclass(frozen=True)
class DemoResult:
    """The demo's findings, printed by the CLI and asserted by the tests."""

    nodes: tuple[NodeSummary, ...]
    rejected: ReportError


def summarize(report: NodeReport, *, wire_bytes: int) -> NodeSummary:
    """Derive a node's topology summary from its (validated) report."""
    matrix = LinkMatrix.from_links(report.links)
    numa_of = {g.index: g.numa_node for g in report.gpus}
    by_uuid = {g.uuid: g.index for g in report.gpus}
    idle = tuple(
        sorted(
            by_uuid[s.gpu_uuid]
            for s in report.samples
            if s.util_ratio is not None and s.util_ratio < IDLE_UTIL_RATIO
        )
    )
    quad = best_connected_gpus(k=4, candidates=idle, links=matrix, numa_of=numa_of)
    quad_nvlinks = 0
    if quad is not None:
        quad_nvlinks = sum(matrix.nvlink_count(a, b) for a in quad for b in quad if a < b)
    utils = [s.util_ratio for s in report.samples if s.util_ratio is not None]
    return NodeSummary(
        node_name=report.node_name,
        product=report.gpus[0].product if report.gpus else "-",
        gpu_count=len(report.gpus),
        wire_bytes=wire_bytes,
        islands=tuple(nvlink_islands(numa_of, report.links)),
        numa_groups=gpus_by_numa_node(report.gpus),
        idle_gpus=idle,
        best_idle_quad=quad,
        best_quad_nvlinks=quad_nvlinks,
        mean_util_ratio=sum(utils) / len(utils) if utils else 0.0,
        power_w=sum(s.power_w or 0.0 for s in report.samples),
    )


def run_demo() -> DemoResult:
    """Run the demo: every simulated node's report over the wire, then a corrupted one."""
    summaries = []
    wire_payloads = []
    for node_name, shape, utils in SIMULATED_CLUSTER:
        sent = build_report(shape, node_name=node_name, util_ratios=utils)
        wire = sent.model_dump_json()
        received = parse_report(wire)
        if received != sent:
            raise RuntimeError(f"node={node_name} report changed on the wire")
        summaries.append(summarize(received, wire_bytes=len(wire)))
        wire_payloads.append(wire)
    corrupted = wire_payloads[0].replace('"gpu_b":1,', '"gpu_b":99,', 1)
    try:
        parse_report(corrupted)
    except ReportError as error:
        rejected = error
    else:
        raise RuntimeError("a report linking a missing GPU was accepted")
    return DemoResult(nodes=tuple(summaries), rejected=rejected)
