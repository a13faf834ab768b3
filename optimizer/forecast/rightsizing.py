"""GPU right-sizing: idle pods, pods holding more GPUs than they use, pods that fit a
smaller slice of a GPU. Pure: usage aggregated over a window in, recommendations out.

The activity signal is the best the agent measured for each GPU: GPM SM activity where the
GPU has it (Hopper and newer), the pod's own per-process SM share otherwise, NVML's coarse
"a kernel ran" utilisation last (which overstates activity; a recommendation says which
signal it rests on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

#: The activity signals, best first: GPM, the process's SM share, NVML's coarse utilisation.
SIGNALS: Final = ("gpm", "process-sm", "nvml-util")
#: Mean activity under which a held GPU counts as unused.
IDLE_RATIO: Final = 0.05
#: Headroom over the peak memory a smaller slice must leave.
MEMORY_MARGIN: Final = 0.10
GIB: Final = 1024**3

#: MIG profiles by GPU model (NVIDIA's MIG user guide), smallest first: (name, memory GiB).
MIG_PROFILES: Final[dict[str, tuple[tuple[str, float], ...]]] = {
    "A100-SXM4-40GB": (("1g.5gb", 5), ("2g.10gb", 10), ("3g.20gb", 20), ("7g.40gb", 40)),
    "A100-PCIE-40GB": (("1g.5gb", 5), ("2g.10gb", 10), ("3g.20gb", 20), ("7g.40gb", 40)),
    "A100-SXM4-80GB": (("1g.10gb", 10), ("2g.20gb", 20), ("3g.40gb", 40), ("7g.80gb", 80)),
    "A100 80GB PCIe": (("1g.10gb", 10), ("2g.20gb", 20), ("3g.40gb", 40), ("7g.80gb", 80)),
    "H100 80GB HBM3": (
        ("1g.10gb", 10),
        ("1g.20gb", 20),
        ("2g.20gb", 20),
        ("3g.40gb", 40),
        ("7g.80gb", 80),
    ),
    "H200": (("1g.18gb", 18), ("1g.35gb", 35), ("2g.35gb", 35), ("3g.71gb", 71), ("7g.141gb", 141)),
}


@dataclass(frozen=True)
class GpuUsage:
    """One GPU a pod held over the window, aggregated."""

    gpu_uuid: str
    product: str
    memory_bytes: int  # the GPU's
    samples: int
    first_s: float
    last_s: float
    activity_mean: float
    activity_max: float
    signal: str  # "gpm", "process-sm" or "nvml-util"
    memory_peak_bytes: int


@dataclass(frozen=True)
class PodUsage:
    namespace: str
    pod: str
    gpus: tuple[GpuUsage, ...]

    @property
    def observed_s(self) -> float:
        return max(g.last_s for g in self.gpus) - min(g.first_s for g in self.gpus)


@dataclass(frozen=True, order=True)
class Workload:
    """What owns a pod and is right-sized as one: the top controller (a Deployment, a Job,
    a PyTorchJob, a JobSet, ...) or, for a bare pod, the pod itself."""

    kind: str
    name: str
    api_version: str = "v1"

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class Recommendation:
    """``kind``: ``idle`` (release the workload's GPUs), ``gpu-count`` (ask for fewer GPUs),
    ``gpu-memory`` (a smaller slice fits), or ``cpu`` / ``memory`` (a request for one
    ``container``; :mod:`optimizer.forecast.resources`), for one workload (``Kind/name``)
    and the pods it rests on."""

    kind: str
    namespace: str
    workload: str
    pods: tuple[str, ...]
    current: str
    recommended: str
    reason: str
    signal: str
    gpus: tuple[str, ...] = field(default_factory=tuple)
    container: str | None = None


def mig_profile_for(product: str, need_bytes: float) -> str | None:
    """The smallest MIG profile of ``product`` with at least ``need_bytes`` of memory."""
    for model, profiles in MIG_PROFILES.items():
        if model in product:
            for name, gib in profiles:
                if gib * GIB >= need_bytes:
                    return name
    return None


def _weakest(signals: Iterable[str]) -> str:
    return max(signals, key=SIGNALS.index)


def recommend(
    pods: Sequence[PodUsage],
    *,
    min_window_s: float,
    owners: Mapping[tuple[str, str], Workload] | None = None,
) -> list[Recommendation]:
    """Recommendations per workload (``owners``: namespace, pod -> its workload; a pod not
    there is its own), from its pods observed for at least ``min_window_s``; one kind per
    workload at most (idle wins over fewer GPUs, which wins over a smaller slice)."""
    groups: dict[tuple[str, Workload], list[PodUsage]] = {}
    for pod in pods:
        if pod.gpus and pod.observed_s >= min_window_s:
            owner = (owners or {}).get((pod.namespace, pod.pod)) or Workload("Pod", pod.pod)
            groups.setdefault((pod.namespace, owner), []).append(pod)
    out: list[Recommendation] = []
    for (namespace, owner), members in sorted(groups.items()):
        found = _judge(namespace, str(owner), sorted(members, key=lambda p: p.pod))
        if found is not None:
            out.append(found)
    return out


def _judge(namespace: str, workload: str, pods: Sequence[PodUsage]) -> Recommendation | None:
    """The one recommendation for a workload's pods, if any."""
    hours = min(p.observed_s for p in pods) / 3600
    gpus = [g for p in pods for g in p.gpus]
    held = len(gpus)
    idle = tuple(g.gpu_uuid for g in gpus if g.activity_mean < IDLE_RATIO)
    across = f" across {len(pods)} pods" if len(pods) > 1 else ""

    def make(kind: str, current: str, recommended: str, reason: str) -> Recommendation:
        return Recommendation(
            kind,
            namespace,
            workload,
            tuple(p.pod for p in pods),
            current,
            recommended,
            reason,
            _weakest(g.signal for g in gpus),
            idle if kind == "gpu-count" else tuple(g.gpu_uuid for g in gpus),
        )

    if len(idle) == held:
        busiest = max(g.activity_mean for g in gpus)
        return make(
            "idle",
            f"{held} GPU(s)",
            "release the GPUs",
            f"{held} GPU(s){across} held at under {IDLE_RATIO:.0%} activity for {hours:.1f} h "
            f"(busiest GPU {busiest:.1%} on average)",
        )
    if idle:
        return make(
            "gpu-count",
            f"{held} GPUs",
            f"{held - len(idle)} GPU(s)",
            f"{len(idle)} of its {held} GPUs{across} stayed under {IDLE_RATIO:.0%} activity "
            f"for {hours:.1f} h",
        )
    if any(len(p.gpus) > 1 for p in pods):
        return None
    gpu = max(gpus, key=lambda g: (g.memory_peak_bytes, g.gpu_uuid))  # the pod needing most
    need = gpu.memory_peak_bytes * (1 + MEMORY_MARGIN)
    if not gpu.memory_bytes or need > min(g.memory_bytes for g in gpus) / 2:
        return None
    mig = mig_profile_for(gpu.product, need)
    share = math.ceil(need / gpu.memory_bytes * 10) * 100  # milli-GPU, in 10% steps
    each = " per pod" if len(pods) > 1 else ""
    return make(
        "gpu-memory",
        f"1 x {gpu.product} ({gpu.memory_bytes / GIB:.0f} GiB){each}",
        f"MIG {mig}" if mig else f"a {share / 10:.0f}% GPU share (stowage.io/gpu-milli={share})",
        f"peak GPU memory {gpu.memory_peak_bytes / GIB:.1f} GiB{across} over {hours:.1f} h, "
        f"{gpu.memory_peak_bytes / gpu.memory_bytes:.0%} of the GPU; with "
        f"{MEMORY_MARGIN:.0%} headroom it fits",
    )
