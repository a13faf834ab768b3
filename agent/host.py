"""Host facts from sysfs and procfs: NUMA nodes, CPUs, sockets, memory, a GPU's NUMA node.

Every path is read under ``root`` (``/`` on a node; a materialised fake host in tests and
fake-profile runs). Missing files mean "unknown", never an error: containers often hide
parts of sysfs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import psutil

from shared.ranges import parse_cpu_list
from shared.report import HostInfo, NumaNode, normalize_pci_bus_id

_NODE_DIR: Final = re.compile(r"^node(\d+)$")
_MEMTOTAL: Final = re.compile(r"MemTotal:\s+(\d+)\s+kB")
KIB: Final = 1024


def gpu_numa_node(root: Path, pci_bus_id: str) -> int | None:
    """The NUMA node of a PCI device as sysfs reports it (as NVIDIA's device plugin reads it).

    ``pci_bus_id`` may be in NVML's form; it is normalised. -1 or a missing file is None.
    """
    path = root / "sys/bus/pci/devices" / normalize_pci_bus_id(pci_bus_id) / "numa_node"
    text = _read(path)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def host_info(root: Path) -> HostInfo:
    """NUMA nodes with their CPUs and memory, socket and CPU counts, total memory."""
    nodes = []
    node_root = root / "sys/devices/system/node"
    for folder in sorted(node_root.glob("node*"), key=lambda p: _node_id(p.name)):
        match = _NODE_DIR.match(folder.name)
        if match is None:
            continue
        cpus_text = _read(folder / "cpulist") or ""
        memory = _memtotal_bytes(_read(folder / "meminfo"))
        nodes.append(
            NumaNode(id=int(match[1]), cpus=parse_cpu_list(cpus_text), memory_bytes=memory)
        )
    packages = set()
    cpu_count = 0
    for package in (root / "sys/devices/system/cpu").glob("cpu[0-9]*/topology/physical_package_id"):
        cpu_count += 1
        if (text := _read(package)) is not None:
            packages.add(text)
    memory_total = _memtotal_bytes(_read(root / "proc/meminfo"))
    if memory_total is None:
        memory_total = int(psutil.virtual_memory().total)
    return HostInfo(
        cpu_sockets=max(len(packages), 1),
        logical_cpus=cpu_count or psutil.cpu_count(logical=True) or 1,
        memory_bytes=memory_total,
        numa_nodes=nodes,
    )


def _node_id(name: str) -> int:
    match = _NODE_DIR.match(name)
    return int(match[1]) if match else -1


def _memtotal_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    match = _MEMTOTAL.search(text)
    return int(match[1]) * KIB if match else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
