"""GPU-pair links from per-GPU NVLink ends and NVML's PCIe common ancestor.

Direct NVLinks are matched by the far end's PCI bus id. On NVSwitch systems every link's
far end is a switch, so matching finds nothing: there each GPU's switch-connected links are
counted and all switch-connected GPUs of the node are treated as one all-to-all fabric, a
pair getting the smaller of the two GPUs' switch link counts (what ``nvidia-smi topo -m``
prints as ``NV18`` on a DGX H100).
"""

from __future__ import annotations

from collections.abc import Sequence

from agent.device import GpuDevice
from agent.nvml import GpuLostError, Nvml
from shared.report import GpuInfo, GpuLink, PcieLevel
from shared.units import nvlink_bandwidth_bytes_per_s


def derive_links(
    *, nvml: Nvml, devices: Sequence[GpuDevice], infos: Sequence[GpuInfo]
) -> list[GpuLink]:
    """One :class:`GpuLink` per pair of the GPUs in ``infos`` (same order as ``devices``)."""
    by_bus = {info.pci_bus_id: info.index for info in infos}
    ends = {}
    for device in devices:
        try:
            ends[device.index] = device.link_ends() if not device.lost else ()
        except GpuLostError:
            device.lost = True
            ends[device.index] = ()
    switch_links = {i: sum(1 for e in ends[i] if e.remote_is_switch) for i in ends}
    versions = {i: next((e.version for e in ends[i] if e.version is not None), None) for i in ends}
    handles = {d.index: d for d in devices}
    links = []
    ordered = sorted(info.index for info in infos)
    for pos, a in enumerate(ordered):
        for b in ordered[pos + 1 :]:
            direct = sum(
                1 for e in ends[a] if not e.remote_is_switch and by_bus.get(e.remote_bus_id) == b
            )
            switched = min(switch_links[a], switch_links[b])
            count = direct + switched
            level = _pcie_level(nvml, handles[a], handles[b])
            links.append(
                GpuLink(
                    gpu_a=a,
                    gpu_b=b,
                    nvlink_count=count,
                    nvlink_bandwidth_bytes_per_s=nvlink_bandwidth_bytes_per_s(
                        link_count=count, version=versions[a] or versions[b]
                    )
                    if count
                    else None,
                    via_nvswitch=switched > 0,
                    pcie_level=level,
                )
            )
    return links


def _pcie_level(nvml: Nvml, a: GpuDevice, b: GpuDevice) -> PcieLevel | None:
    if a.lost or b.lost:
        return None
    try:
        value = nvml.optional("nvmlDeviceGetTopologyCommonAncestor", a.handle, b.handle)
    except GpuLostError:
        return None
    if value is None:
        return None
    try:
        return PcieLevel.from_nvml(int(value))
    except ValueError:
        return None
