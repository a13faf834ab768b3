"""The planner's view of a cluster: per-node CPU, memory and per-GPU free milli-GPU.

Arrays, not objects, because every policy scores every node for every pod. Row ``i`` is the
``i``-th node in name order, so "lowest index" is "lexicographically smallest name", the
tie-break the FGD experiments use. GPUs a node does not have are marked by ``gpu_present``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from shared.topology import LinkMatrix
from shared.units import MILLI_GPU_PER_GPU

FULL: Final = MILLI_GPU_PER_GPU

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class NodeSpec:
    """A node's capacity; ``extra`` holds every other resource the node offers (``pods``,
    ``ephemeral-storage`` in bytes, extended resources such as MIG slices), by name."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str
    extra: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NodeTopology:
    """How a node's GPUs are connected (from its agent's report)."""

    links: LinkMatrix
    numa_of: Mapping[int, int | None]


@dataclass(frozen=True)
class PodRequest:
    """What one pod asks for: CPU, memory, and none, a share of one, or whole GPUs."""

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU; < 1000 only with num_gpu == 1 (a GPU share)
    gpu_models: frozenset[str] = frozenset()  # empty: any model
    #: Every other resource asked for, as (name, amount) pairs (see :class:`NodeSpec`).
    extra: tuple[tuple[str, int], ...] = ()
    #: Which of :attr:`ClusterState.masks` says where the pod may go ("": anywhere).
    mask_key: str = ""
    #: No two pods with this ``mask_key`` on one node (required anti-affinity on hostname
    #: that matches the pod's own kind).
    spread: bool = False

    @property
    def is_share(self) -> bool:
        """A fraction of one GPU."""
        return self.num_gpu == 1 and self.gpu_milli < FULL

    @property
    def gpu_request_milli(self) -> int:
        """Total milli-GPU requested."""
        return self.num_gpu * self.gpu_milli


@dataclass
class ClusterState:
    """Free resources of every node; the simulator mutates it through :meth:`allocate`."""

    names: list[str]
    models: list[str]  # model name by model id
    model_id: IntArray
    cpu_total: IntArray
    cpu_free: IntArray
    memory_free: IntArray
    gpu_free: IntArray  # (nodes, max GPUs), milli; 0 where absent
    gpu_present: BoolArray
    kinds: IntArray  # pods per node by kind_of(): CPU only, GPU share, whole GPUs
    #: GPU topology by node name, where known (the simulator's traces have none).
    topology: Mapping[str, NodeTopology] = field(default_factory=dict)
    #: Names of the other resources (columns of ``extra_free``).
    extra_names: tuple[str, ...] = ()
    extra_free: IntArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    #: Mask key -> the nodes a pod with that key may use (the static filters' verdict).
    masks: dict[str, BoolArray] = field(default_factory=dict)
    #: Mask key -> pods of a ``spread`` kind on each node.
    spread_count: dict[str, IntArray] = field(default_factory=dict)

    @classmethod
    def from_nodes(
        cls, nodes: Sequence[NodeSpec], *, topology: Mapping[str, NodeTopology] | None = None
    ) -> ClusterState:
        """An empty cluster of ``nodes`` (sorted by name)."""
        ordered = sorted(nodes, key=lambda n: n.name)
        models = sorted({n.model for n in ordered})
        width = max((n.gpus for n in ordered), default=0) or 1
        present = np.zeros((len(ordered), width), dtype=np.bool_)
        for i, node in enumerate(ordered):
            present[i, : node.gpus] = True
        extra_names = tuple(sorted({name for n in ordered for name in n.extra}))
        extra = np.array(
            [[n.extra.get(name, 0) for name in extra_names] for n in ordered], dtype=np.int64
        ).reshape(len(ordered), len(extra_names))
        return cls(
            names=[n.name for n in ordered],
            models=models,
            model_id=np.array([models.index(n.model) for n in ordered], dtype=np.int64),
            cpu_total=np.array([n.cpu_milli for n in ordered], dtype=np.int64),
            cpu_free=np.array([n.cpu_milli for n in ordered], dtype=np.int64),
            memory_free=np.array([n.memory_mib for n in ordered], dtype=np.int64),
            gpu_free=np.where(present, FULL, 0).astype(np.int64),
            gpu_present=present,
            kinds=np.zeros((len(ordered), 3), dtype=np.int64),
            topology=dict(topology or {}),
            extra_names=extra_names,
            extra_free=extra,
        )

    @property
    def total_gpu_milli(self) -> int:
        """The cluster's GPU capacity in milli-GPU."""
        return int(self.gpu_present.sum()) * FULL

    @property
    def allocated_gpu_milli(self) -> int:
        """Milli-GPU in use."""
        return self.total_gpu_milli - int(self.gpu_free.sum())

    def subset(self, rows: IntArray) -> ClusterState:
        """A copy holding only ``rows`` (in the same order); row ``i`` of the copy is
        ``rows[i]`` here."""
        return ClusterState(
            names=[self.names[r] for r in rows],
            models=self.models,
            model_id=self.model_id[rows].copy(),
            cpu_total=self.cpu_total[rows].copy(),
            cpu_free=self.cpu_free[rows].copy(),
            memory_free=self.memory_free[rows].copy(),
            gpu_free=self.gpu_free[rows].copy(),
            gpu_present=self.gpu_present[rows].copy(),
            kinds=self.kinds[rows].copy(),
            topology=self.topology,
            extra_names=self.extra_names,
            extra_free=self.extra_free[rows].copy(),
            masks={key: mask[rows] for key, mask in self.masks.items()},
            spread_count={key: count[rows] for key, count in self.spread_count.items()},
        )

    def copy(self) -> ClusterState:
        """An independent copy (a session's working state)."""
        return self.subset(np.arange(len(self.names)))

    def model_mask(self, pod: PodRequest) -> BoolArray:
        """Nodes whose GPU model the pod accepts."""
        if not pod.gpu_models:
            return np.ones(len(self.names), dtype=np.bool_)
        allowed = [i for i, m in enumerate(self.models) if m in pod.gpu_models]
        return np.asarray(np.isin(self.model_id, allowed), dtype=np.bool_)

    def _fits(self, pod: PodRequest) -> BoolArray:
        """Nodes with room for ``pod``'s CPU, memory and GPUs."""
        ok = (self.cpu_free >= pod.cpu_milli) & (self.memory_free >= pod.memory_mib)
        if pod.num_gpu == 0:
            return ok
        ok &= self.model_mask(pod)
        if pod.is_share:
            gpu_ok = (self.gpu_free >= pod.gpu_milli).any(axis=1)
        else:
            gpu_ok = (self.gpu_free == FULL).sum(axis=1) >= pod.num_gpu
        return np.asarray(ok & gpu_ok, dtype=np.bool_)

    def feasible(self, pod: PodRequest) -> BoolArray:
        """Nodes that can host ``pod`` now: resources, and the pod's mask where it has one."""
        ok = self._fits(pod)
        if pod.extra:
            columns = {name: i for i, name in enumerate(self.extra_names)}
            for name, amount in pod.extra:
                if name in columns:
                    ok = ok & (self.extra_free[:, columns[name]] >= amount)
                elif amount > 0:
                    return np.zeros(len(self.names), dtype=np.bool_)
        if pod.mask_key:
            mask = self.masks.get(pod.mask_key)
            if mask is not None:
                ok = ok & mask
            count = self.spread_count.get(pod.mask_key)
            if count is not None:
                ok = ok & (count == 0)
        return ok

    def allocate(self, node: int, gpus: Sequence[int], pod: PodRequest) -> None:
        """Take ``pod``'s resources on ``node``: ``gpu_milli`` from each of ``gpus``."""
        self.cpu_free[node] -= pod.cpu_milli
        self.memory_free[node] -= pod.memory_mib
        for gpu in gpus:
            if self.gpu_free[node, gpu] < pod.gpu_milli:
                raise ValueError(f"GPU {gpu} of node {self.names[node]} is over-allocated")
            self.gpu_free[node, gpu] -= pod.gpu_milli
        self.kinds[node, kind_of(pod)] += 1
        self._take_extra(node, pod, sign=1)
        if self.cpu_free[node] < 0 or self.memory_free[node] < 0:
            raise ValueError(f"node {self.names[node]} is over-allocated")

    def release(self, node: int, gpus: Sequence[int], pod: PodRequest) -> None:
        """Give back what :meth:`allocate` took (an eviction, or a discarded trial)."""
        self.cpu_free[node] += pod.cpu_milli
        self.memory_free[node] += pod.memory_mib
        for gpu in gpus:
            self.gpu_free[node, gpu] += pod.gpu_milli
            if self.gpu_free[node, gpu] > FULL:
                raise ValueError(f"GPU {gpu} of node {self.names[node]} released twice")
        self.kinds[node, kind_of(pod)] -= 1
        self._take_extra(node, pod, sign=-1)

    def _take_extra(self, node: int, pod: PodRequest, *, sign: int) -> None:
        if pod.extra:
            columns = {name: i for i, name in enumerate(self.extra_names)}
            for name, amount in pod.extra:
                if name in columns:
                    self.extra_free[node, columns[name]] -= sign * amount
        if pod.spread and pod.mask_key:
            count = self.spread_count.get(pod.mask_key)
            if count is None:
                count = self.spread_count[pod.mask_key] = np.zeros(len(self.names), np.int64)
            count[node] += sign


def take_whole_gpus(gpu_free: IntArray, counts: IntArray | int) -> None:
    """Take (set to 0, in place) the ``counts`` lowest-numbered fully free GPUs of each row
    of ``gpu_free``; a row asking for more than it has loses all its fully free GPUs."""
    whole = gpu_free == FULL
    gpu_free[whole & (np.cumsum(whole, axis=1) <= np.reshape(counts, (-1, 1)))] = 0


def kind_of(pod: PodRequest) -> int:
    """0: CPU only, 1: a GPU share, 2: whole GPUs (GPU clustering groups by these)."""
    if pod.num_gpu == 0:
        return 0
    return 1 if pod.is_share else 2
