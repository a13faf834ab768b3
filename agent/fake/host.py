"""A fake host filesystem (sysfs, procfs and cgroup excerpts) laid out from a device profile.

The agent reads NUMA facts, process cgroups and the containers' CPU and memory from files
under a root directory (``/`` on a real node). For a fake profile, :func:`materialize`
writes the same files under a temporary root, and :func:`write_cgroups` the cgroup v2 files
of each pod's container as they stand at a time, so the agent's real file-reading code runs
unchanged.
"""

from __future__ import annotations

from pathlib import Path

from agent.profile import PodSpec, Profile
from shared.ranges import parse_cpu_list
from shared.units import GIB

KIB = 1024


def materialize(profile: Profile, root: Path) -> Path:
    """Write the files the agent reads for ``profile`` under ``root``; returns ``root``."""
    for gpu in profile.gpus:
        device = root / "sys/bus/pci/devices" / gpu.pci_bus_id
        device.mkdir(parents=True, exist_ok=True)
        numa = -1 if gpu.numa_node is None else gpu.numa_node
        (device / "numa_node").write_text(f"{numa}\n")
    all_cpus: dict[int, int] = {}
    numa_nodes = profile.numa_nodes
    per_node_kib = int(profile.host_memory_gib * GIB / KIB / max(len(numa_nodes), 1))
    for node in numa_nodes:
        folder = root / f"sys/devices/system/node/node{node.id}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cpulist").write_text(f"{node.cpus}\n")
        memory_kib = int(node.memory_gib * GIB / KIB) if node.memory_gib else per_node_kib
        (folder / "meminfo").write_text(f"Node {node.id} MemTotal:       {memory_kib} kB\n")
        for cpu in parse_cpu_list(node.cpus):
            all_cpus[cpu] = node.id
    sockets = max(profile.sockets, 1)
    nodes_per_socket = max(len(numa_nodes) // sockets, 1)
    for cpu, node_id in sorted(all_cpus.items()):
        topology = root / f"sys/devices/system/cpu/cpu{cpu}/topology"
        topology.mkdir(parents=True, exist_ok=True)
        rank = [n.id for n in numa_nodes].index(node_id)
        (topology / "physical_package_id").write_text(
            f"{min(rank // nodes_per_socket, sockets - 1)}\n"
        )
    proc = root / "proc"
    proc.mkdir(parents=True, exist_ok=True)
    total_kib = int(profile.host_memory_gib * GIB / KIB)
    (proc / "meminfo").write_text(f"MemTotal:       {total_kib} kB\n")
    for pod in profile.behaviour.pods:
        folder = proc / str(pod.pid)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "cgroup").write_text(f"0::{_cgroup_of(pod)}\n")
    write_cgroups(profile, root, 0.0)
    return root


def _cgroup_of(pod: PodSpec) -> str:
    container_id = pod.uid.replace("-", "")[:12] + "0" * 52
    return (
        "/kubepods.slice/kubepods-besteffort.slice/"
        f"kubepods-besteffort-pod{pod.uid.replace('-', '_')}.slice/"
        f"cri-containerd-{container_id}.scope"
    )


def write_cgroups(profile: Profile, root: Path, t_s: float) -> None:
    """Each pod container's cgroup v2 files at ``t_s`` seconds after boot: ``cpu.stat``
    (``cpu_cores`` used since boot), ``memory.current`` and ``memory.stat`` (a tenth of it
    inactive file cache, which the working set leaves out)."""
    for pod in profile.behaviour.pods:
        folder = root / "sys/fs/cgroup" / _cgroup_of(pod).lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        usec = int(pod.cpu_cores * max(t_s, 0.0) * 1e6)
        (folder / "cpu.stat").write_text(f"usage_usec {usec}\nuser_usec {usec}\nsystem_usec 0\n")
        working_set = int(pod.host_memory_gib * GIB)
        cache = working_set // 9
        (folder / "memory.current").write_text(f"{working_set + cache}\n")
        (folder / "memory.stat").write_text(f"anon {working_set}\ninactive_file {cache}\n")
