"""Reference node shapes and the reports they produce, for the demo, docs and tests.

Each :class:`NodeShape` describes a real server design (GPU model, NVLink wiring, PCIe
levels, NUMA layout); :func:`build_report` turns one into a valid topology report with
deterministic UUIDs, so the same shape always yields the same report.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from shared.report import (
    GpuArchitecture,
    GpuInfo,
    GpuLink,
    GpuSample,
    HostInfo,
    NodeReport,
    NumaNode,
    PcieLevel,
)
from shared.units import GIB, nvlink_bandwidth_bytes_per_s

_UUID_NAMESPACE: Final = uuid.UUID("6f1f5b4e-2b8c-4a43-9d0e-5a7c3e0b9d21")
_EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC)

S, N, H, M, P = (
    PcieLevel.SYSTEM,
    PcieLevel.NODE,
    PcieLevel.HOSTBRIDGE,
    PcieLevel.MULTIPLE,
    PcieLevel.SINGLE,
)


@dataclass(frozen=True)
class NodeShape:
    """A server design: GPUs, their wiring, and the host around them."""

    name: str
    product: str
    architecture: GpuArchitecture
    memory_bytes: int
    gpu_numa: Sequence[int]  # NUMA node of each GPU, by index
    numa_cpus: Sequence[Sequence[int]]  # CPU ids of each NUMA node
    host_memory_bytes: int
    nvlinks: Sequence[Sequence[int]]  # NVLink count per pair, symmetric, 0 on the diagonal
    pcie: Sequence[Sequence[PcieLevel | None]]  # common-ancestor level per pair
    nvlink_version: int | None = None
    via_nvswitch: bool = False
    power_limit_w: float | None = None

    @property
    def gpu_count(self) -> int:
        return len(self.gpu_numa)


def _uniform(n: int, value: int) -> list[list[int]]:
    return [[0 if a == b else value for b in range(n)] for a in range(n)]


def _by_socket(gpu_numa: Sequence[int], *, same: PcieLevel) -> list[list[PcieLevel | None]]:
    n = len(gpu_numa)
    return [
        [None if a == b else (same if gpu_numa[a] == gpu_numa[b] else S) for b in range(n)]
        for a in range(n)
    ]


def _two_sockets(cpus_per_socket: int) -> list[list[int]]:
    return [list(range(s * cpus_per_socket, (s + 1) * cpus_per_socket)) for s in range(2)]


_EIGHT_ON_TWO: Final = (0, 0, 0, 0, 1, 1, 1, 1)

DGX_H100: Final = NodeShape(
    name="dgx-h100",
    product="NVIDIA H100 80GB HBM3",
    architecture=GpuArchitecture.HOPPER,
    memory_bytes=80 * GIB,
    gpu_numa=_EIGHT_ON_TWO,
    numa_cpus=_two_sockets(112),
    host_memory_bytes=2048 * GIB,
    nvlinks=_uniform(8, 18),
    pcie=_by_socket(_EIGHT_ON_TWO, same=N),
    nvlink_version=4,
    via_nvswitch=True,
    power_limit_w=700.0,
)

# DGX-1 hybrid cube-mesh, as in ../shared/fixtures/topo/dgx1-v100-8gpu-hybrid-cube-mesh-nv1-nv2.txt
_DGX1_NVLINKS: Final = (
    (0, 1, 1, 2, 2, 0, 0, 0),
    (1, 0, 2, 1, 0, 2, 0, 0),
    (1, 2, 0, 2, 0, 0, 1, 0),
    (2, 1, 2, 0, 0, 0, 0, 1),
    (2, 0, 0, 0, 0, 1, 1, 2),
    (0, 2, 0, 0, 1, 0, 2, 1),
    (0, 0, 1, 0, 1, 2, 0, 2),
    (0, 0, 0, 1, 2, 1, 2, 0),
)
DGX1_V100: Final = NodeShape(
    name="dgx1-v100",
    product="Tesla V100-SXM2-16GB",
    architecture=GpuArchitecture.VOLTA,
    memory_bytes=16 * GIB,
    gpu_numa=_EIGHT_ON_TWO,
    numa_cpus=[[*range(0, 12), *range(24, 36)], [*range(12, 24), *range(36, 48)]],
    host_memory_bytes=512 * GIB,
    nvlinks=_DGX1_NVLINKS,
    pcie=_by_socket(_EIGHT_ON_TWO, same=N),
    nvlink_version=2,
    power_limit_w=300.0,
)

L40S_PCIE: Final = NodeShape(
    name="l40s-pcie",
    product="NVIDIA L40S",
    architecture=GpuArchitecture.ADA,
    memory_bytes=48 * GIB,
    gpu_numa=_EIGHT_ON_TWO,
    numa_cpus=_two_sockets(64),
    host_memory_bytes=1024 * GIB,
    nvlinks=_uniform(8, 0),
    pcie=[
        [
            None if a == b else (M if a // 2 == b // 2 else (N if a // 4 == b // 4 else S))
            for b in range(8)
        ]
        for a in range(8)
    ],
    power_limit_w=350.0,
)

SHAPES: Final = {shape.name: shape for shape in (DGX_H100, DGX1_V100, L40S_PCIE)}


def gpu_uuid(node_name: str, index: int) -> str:
    """Deterministic NVML-style UUID for GPU ``index`` of ``node_name``."""
    return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node_name}/{index}')}"


def build_report(
    shape: NodeShape,
    *,
    node_name: str,
    collected_at: datetime = _EPOCH,
    util_ratios: Sequence[float] | None = None,
) -> NodeReport:
    """A topology report of ``shape`` named ``node_name``, with one sample per GPU.

    ``util_ratios`` sets each GPU's utilisation (default: idle).
    """
    gpus = [
        GpuInfo(
            index=i,
            uuid=gpu_uuid(node_name, i),
            product=shape.product,
            architecture=shape.architecture,
            memory_bytes=shape.memory_bytes,
            pci_bus_id=f"0000:{0x18 + 0x10 * i:02x}:00.0",
            pcie_generation=5 if shape.architecture is GpuArchitecture.HOPPER else 4,
            pcie_width=16,
            numa_node=shape.gpu_numa[i],
            cpu_affinity=list(shape.numa_cpus[shape.gpu_numa[i]]),
            power_limit_w=shape.power_limit_w,
        )
        for i in range(shape.gpu_count)
    ]
    links = [
        GpuLink(
            gpu_a=a,
            gpu_b=b,
            nvlink_count=shape.nvlinks[a][b],
            nvlink_bandwidth_bytes_per_s=nvlink_bandwidth_bytes_per_s(
                link_count=shape.nvlinks[a][b], version=shape.nvlink_version
            )
            if shape.nvlinks[a][b]
            else None,
            via_nvswitch=shape.via_nvswitch and shape.nvlinks[a][b] > 0,
            pcie_level=shape.pcie[a][b],
        )
        for a in range(shape.gpu_count)
        for b in range(a + 1, shape.gpu_count)
    ]
    ratios = util_ratios or [0.0] * shape.gpu_count
    samples = [
        GpuSample(
            gpu_uuid=gpu.uuid,
            util_ratio=ratios[gpu.index],
            memory_used_bytes=int(ratios[gpu.index] * shape.memory_bytes * 0.8),
            power_w=(shape.power_limit_w or 300.0) * (0.15 + 0.8 * ratios[gpu.index]),
            energy_j=0.0,
            temperature_c=35.0 + 40.0 * ratios[gpu.index],
        )
        for gpu in gpus
    ]
    host = HostInfo(
        cpu_sockets=len(shape.numa_cpus),
        logical_cpus=sum(len(c) for c in shape.numa_cpus),
        memory_bytes=shape.host_memory_bytes,
        numa_nodes=[
            NumaNode(
                id=n,
                cpus=list(cpus),
                memory_bytes=shape.host_memory_bytes // len(shape.numa_cpus),
            )
            for n, cpus in enumerate(shape.numa_cpus)
        ],
    )
    return NodeReport(
        node_name=node_name,
        agent_version="sample",
        collected_at=collected_at,
        driver_version="550.54.15",
        cuda_version="12.4",
        host=host,
        gpus=gpus,
        links=links,
        samples=samples,
    )


def full_report_dict() -> dict[str, Any]:
    """A valid topology report as decoded JSON, with MIG, ECC, XID and per-pod processes."""
    data = build_report(DGX_H100, node_name="gpu-node-1").model_dump(mode="json")
    gpu0 = data["gpus"][0]
    gpu0["mig_enabled"] = True
    gpu0["mig_instances"] = [
        {
            "uuid": "MIG-4b1ea7b0-7a4d-5b5e-9a23-1f1e0c7d3a11",
            "profile": "1g.10gb",
            "memory_bytes": 10 * GIB,
            "gpu_instance_id": 7,
            "compute_instance_id": 0,
        }
    ]
    gpu0["cluster_uuid"] = "b7a1c2d3-0000-4000-8000-000000000001"
    gpu0["clique_id"] = 3
    sample = data["samples"][1]
    sample["ecc"] = {"corrected_total": 4, "uncorrected_total": 0}
    sample["xid_total"] = 1
    sample["last_xid"] = 13
    sample["throttle_reasons"] = ["sw_power_cap"]
    sample["processes"] = [
        {
            "pid": 4242,
            "namespace": "ml",
            "pod": "trainer-0",
            "pod_uid": "0b6f8a2e-1111-4222-8333-444455556666",
            "container": "pytorch",
            "memory_used_bytes": 30 * GIB,
        }
    ]
    return data


def full_report() -> NodeReport:
    """:func:`full_report_dict` validated."""
    return NodeReport.model_validate(full_report_dict())
