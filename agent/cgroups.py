"""CPU and memory of the containers that run GPU processes, from their cgroups.

A GPU process's ``/proc/<pid>/cgroup`` names its container's cgroup; the kubelet and
cAdvisor read the same files:

========  ============================================  =====================================
cgroup    CPU (cumulative)                              memory working set
========  ============================================  =====================================
v2        ``cpu.stat`` ``usage_usec``                   ``memory.current`` less ``memory.stat``
                                                        ``inactive_file``
v1        ``cpuacct/<path>/cpuacct.usage`` (ns)         ``memory/<path>/memory.usage_in_bytes``
                                                        less ``total_inactive_file``
========  ============================================  =====================================

CPU is reported as cores: the usage since the previous read over the time between them, so
the first read of a container has none. A container whose files cannot be read is left out
(it ended, or the cgroup filesystem is not mounted where the agent looks).

Inside a container with a private cgroup namespace (the default on cgroup v2), other
processes' paths read ``/../../kubepods-...slice/cri-containerd-<id>.scope``: relative to
the agent's own cgroup. Such a path is found by its last component under the host's
``kubepods`` hierarchy, once per container.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shared.report import ContainerUsage, GpuProcess

#: Where the host's cgroup filesystem is, under the agent's root.
CGROUP_ROOT: Final = Path("sys/fs/cgroup")
#: Containers whose cgroup folder was looked up (a tree walk each), remembered.
MAX_LOCATED: Final = 4096
_LOCATED: dict[tuple[Path, tuple[str, ...]], Path] = {}


@dataclass(frozen=True)
class Reading:
    """One read of a container's cgroup: cumulative CPU seconds and the working set."""

    cpu_s: float | None
    memory_bytes: int | None


def cgroup_paths(text: str) -> dict[str, str]:
    """Controller -> path from a ``/proc/<pid>/cgroup`` text (``""`` for the v2 hierarchy)."""
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _stat(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _working_set(current: int | None, inactive: int | None) -> int | None:
    if current is None:
        return None
    return max(current - (inactive or 0), 0)


def locate(root: Path, path: str) -> Path:
    """The folder of cgroup ``path`` under ``root``; a path relative to another cgroup
    namespace (``/../..``) is looked up by its remaining components under ``kubepods*``."""
    parts = [p for p in path.split("/") if p]
    if ".." not in parts:
        return root.joinpath(*parts)
    rest = tuple(p for p in parts if p != "..")
    if not rest:
        return root
    key = (root, rest)
    if key not in _LOCATED:
        for top in sorted(root.glob("kubepods*")):
            found = next((f for f in top.rglob(rest[-1]) if f.parts[-len(rest) :] == rest), None)
            if found is not None:
                if len(_LOCATED) >= MAX_LOCATED:
                    _LOCATED.clear()
                _LOCATED[key] = found
                break
        else:
            return root.joinpath(*rest)
    return _LOCATED[key]


def read_cgroup(root: Path, paths: dict[str, str]) -> Reading | None:
    """The container's reading, v2 when the process is in the unified hierarchy, else v1;
    None when neither can be read."""
    if "" in paths and ("cpu" not in paths or "memory" not in paths):
        folder = locate(root, paths[""])
        usec = _stat(folder / "cpu.stat", "usage_usec")
        current = _number(folder / "memory.current")
        if usec is not None or current is not None:
            return Reading(
                cpu_s=None if usec is None else usec / 1e6,
                memory_bytes=_working_set(current, _stat(folder / "memory.stat", "inactive_file")),
            )
    cpu_path, memory_path = paths.get("cpuacct") or paths.get("cpu"), paths.get("memory")
    nanos = None
    if cpu_path is not None:
        nanos = _number(locate(root / "cpuacct", cpu_path) / "cpuacct.usage")
    current = inactive = None
    if memory_path is not None:
        memory = locate(root / "memory", memory_path)
        current = _number(memory / "memory.usage_in_bytes")
        inactive = _stat(memory / "memory.stat", "total_inactive_file")
    if nanos is None and current is None:
        return None
    return Reading(
        cpu_s=None if nanos is None else nanos / 1e9, memory_bytes=_working_set(current, inactive)
    )


class ContainerMeter:
    """Reads the cgroups of the containers that run GPU processes, once per cycle.

    Args:
        proc_root: where ``/proc`` is (``/proc`` with hostPID).
        cgroup_root: where the cgroup filesystem is mounted.
        clock: monotonic seconds, injectable.
    """

    def __init__(
        self,
        *,
        proc_root: Path,
        cgroup_root: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc_root = proc_root
        self.cgroup_root = cgroup_root
        self.clock = clock
        self._previous: dict[str, tuple[float, float]] = {}  # cgroup -> (cpu s, read at)

    def measure(self, processes: Iterable[GpuProcess]) -> list[ContainerUsage]:
        """One entry per container among ``processes`` (attributed to a pod), read now."""
        now = self.clock()
        seen: dict[str, ContainerUsage] = {}
        for process in processes:
            if process.pod is None and process.pod_uid is None:
                continue  # not a pod's
            try:
                text = (self.proc_root / str(process.pid) / "cgroup").read_text()
            except OSError:
                continue
            paths = cgroup_paths(text)
            key = paths.get("") or paths.get("memory") or paths.get("cpuacct") or ""
            if not key or key in seen:
                continue
            reading = read_cgroup(self.cgroup_root, paths)
            if reading is None:
                continue
            cores = None
            if reading.cpu_s is not None:
                before = self._previous.get(key)
                if before is not None and now > before[1] and reading.cpu_s >= before[0]:
                    cores = (reading.cpu_s - before[0]) / (now - before[1])
                self._previous[key] = (reading.cpu_s, now)
            seen[key] = ContainerUsage(
                namespace=process.namespace,
                pod=process.pod,
                pod_uid=process.pod_uid,
                container=process.container,
                cpu_cores=None if cores is None else min(cores, 4096.0),
                memory_working_set_bytes=reading.memory_bytes,
            )
        for gone in set(self._previous) - set(seen):
            del self._previous[gone]
        return list(seen.values())
