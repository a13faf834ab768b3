"""A node report as text a person can read, in the shape of ``nvidia-smi topo -m``."""

from __future__ import annotations

from shared.ranges import format_cpu_list
from shared.report import NodeReport, PcieLevel
from shared.topology import best_connected_gpus, gpus_by_numa_node, nvlink_islands

_TOPO_CODE = {
    PcieLevel.INTERNAL: "BRD",
    PcieLevel.SINGLE: "PIX",
    PcieLevel.MULTIPLE: "PXB",
    PcieLevel.HOSTBRIDGE: "PHB",
    PcieLevel.NODE: "NODE",
    PcieLevel.SYSTEM: "SYS",
}


def render_table(report: NodeReport) -> str:
    """The GPU matrix (NV# for NVLink, else the PCIe level), affinities, islands, NUMA groups."""
    gpus = sorted(report.gpus, key=lambda g: g.index)
    names = [f"GPU{g.index}" for g in gpus]
    rows = [["", *names, "CPU Affinity", "NUMA", "Health"]]
    for a in gpus:
        row = [f"GPU{a.index}"]
        for b in gpus:
            link = report.link_between(a.index, b.index)
            if a.index == b.index:
                row.append("X")
            elif link is not None and link.nvlink_count:
                row.append(f"NV{link.nvlink_count}")
            elif link is not None and link.pcie_level is not None:
                row.append(_TOPO_CODE[link.pcie_level])
            else:
                row.append("?")
        numa = "N/A" if a.numa_node is None else str(a.numa_node)
        row += [(format_cpu_list(a.cpu_affinity) or "N/A"), numa, a.health.value]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    indices = [g.index for g in gpus]
    numa_of = {g.index: g.numa_node for g in gpus}
    lines.append("")
    lines.append(f"Node {report.node_name}: {len(gpus)} x {gpus[0].product if gpus else '-'}")
    islands = nvlink_islands(indices, report.links)
    lines.append("NVLink islands: " + " ".join("{" + ",".join(map(str, i)) + "}" for i in islands))
    groups = gpus_by_numa_node(gpus)
    lines.append(
        "GPUs per NUMA node: "
        + "; ".join(
            f"{'N/A' if n is None else n}: {list(g)}" for n, g in sorted(groups.items(), key=str)
        )
    )
    for k in (2, 4):
        best = best_connected_gpus(k=k, candidates=indices, links=report.links, numa_of=numa_of)
        if best is not None:
            lines.append(f"Best-connected {k} GPUs: {list(best)}")
    lines.append("Legend: X self, NV# bonded NVLinks, PIX/PXB/PHB/NODE/SYS PCIe path (nvidia-smi)")
    return "\n".join(lines)
