"""Intra-node GPU topology helpers used by both the agent and the planner.

Pure functions over the contract's :class:`~shared.report.GpuInfo` and
:class:`~shared.report.GpuLink`: NVLink islands, GPUs per NUMA node, and the best-connected
set of k GPUs among the free ones.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from shared.report import GpuInfo, GpuLink, PcieLevel
from shared.units import NVLINK_BYTES_PER_S_BY_VERSION

#: Bandwidth assumed per NVLink when a link entry has a count but no bandwidth (NVLink 3/4).
DEFAULT_NVLINK_BYTES_PER_S: Final = NVLINK_BYTES_PER_S_BY_VERSION[3]
#: Above this many candidate subsets, :func:`best_connected_gpus` searches greedily.
EXHAUSTIVE_SEARCH_LIMIT: Final = 20_000
_UNKNOWN_PCIE_RANK: Final = PcieLevel.SYSTEM.rank


@dataclass(frozen=True)
class LinkMatrix:
    """Pairwise connectivity of one node's GPUs, looked up in O(1) by index pair."""

    _links: Mapping[tuple[int, int], GpuLink] = field(default_factory=dict)

    @classmethod
    def from_links(cls, links: Iterable[GpuLink]) -> LinkMatrix:
        """Index ``links`` by ordered pair."""
        return cls({(lk.gpu_a, lk.gpu_b): lk for lk in links})

    def link(self, a: int, b: int) -> GpuLink | None:
        """The entry for the pair in either order, or None."""
        return self._links.get((a, b) if a < b else (b, a))

    def nvlink_count(self, a: int, b: int) -> int:
        """NVLinks between the pair (0 when unknown)."""
        link = self.link(a, b)
        return 0 if link is None else link.nvlink_count

    def nvlink_bytes_per_s(self, a: int, b: int) -> float:
        """Aggregate NVLink bandwidth between the pair; counts without a bandwidth are valued
        at :data:`DEFAULT_NVLINK_BYTES_PER_S` per link."""
        link = self.link(a, b)
        if link is None or link.nvlink_count == 0:
            return 0.0
        if link.nvlink_bandwidth_bytes_per_s is not None:
            return link.nvlink_bandwidth_bytes_per_s
        return link.nvlink_count * DEFAULT_NVLINK_BYTES_PER_S

    def pcie_rank(self, a: int, b: int) -> int:
        """PCIe distance rank of the pair (0 nearest ... 5 across sockets; unknown = 5)."""
        link = self.link(a, b)
        if link is None or link.pcie_level is None:
            return _UNKNOWN_PCIE_RANK
        return link.pcie_level.rank


def nvlink_islands(indices: Iterable[int], links: Iterable[GpuLink]) -> list[tuple[int, ...]]:
    """Groups of GPUs connected to each other by NVLink, directly or through peers.

    Every index appears in exactly one island; a GPU without NVLink is an island of one.
    Islands are sorted largest first, then by their smallest index.
    """
    members = sorted(set(indices))
    parent = {i: i for i in members}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for link in links:
        if link.nvlink_count > 0 and link.gpu_a in parent and link.gpu_b in parent:
            parent[root(link.gpu_a)] = root(link.gpu_b)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in members:
        groups[root(i)].append(i)
    return sorted((tuple(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def gpus_by_numa_node(gpus: Iterable[GpuInfo]) -> dict[int | None, tuple[int, ...]]:
    """GPU indices grouped by NUMA node; ``None`` collects GPUs with no NUMA information."""
    groups: dict[int | None, list[int]] = defaultdict(list)
    for gpu in gpus:
        groups[gpu.numa_node].append(gpu.index)
    return {node: tuple(sorted(idx)) for node, idx in groups.items()}


@dataclass(frozen=True, order=True)
class SetScore:
    """How well a GPU set is connected; larger compares better.

    Lexicographic: total NVLink bandwidth over all pairs, then nearer PCIe paths (negated sum
    of ranks), then fewer NUMA nodes spanned (negated).
    """

    nvlink_bytes_per_s: float
    neg_pcie_rank_sum: int
    neg_numa_nodes: int


def score_gpu_set(
    gpus: Sequence[int], *, matrix: LinkMatrix, numa_of: Mapping[int, int | None]
) -> SetScore:
    """Connectivity score of one GPU set (see :class:`SetScore`)."""
    bandwidth = 0.0
    pcie = 0
    for a, b in itertools.combinations(gpus, 2):
        bandwidth += matrix.nvlink_bytes_per_s(a, b)
        pcie += matrix.pcie_rank(a, b)
    numa_nodes = len({numa_of.get(g) for g in gpus})
    return SetScore(bandwidth, -pcie, -numa_nodes)


def best_connected_gpus(
    *,
    k: int,
    candidates: Iterable[int],
    links: Iterable[GpuLink] | LinkMatrix,
    numa_of: Mapping[int, int | None] | None = None,
) -> tuple[int, ...] | None:
    """The k GPUs among ``candidates`` that are best connected to each other.

    Maximises NVLink bandwidth, then PCIe nearness, then NUMA locality (:class:`SetScore`);
    ties go to the lexicographically smallest index tuple, so the answer is deterministic.
    Exhaustive when there are at most :data:`EXHAUSTIVE_SEARCH_LIMIT` subsets (every real
    node), greedy growth from each seed GPU otherwise.

    Returns:
        The chosen indices in ascending order, or None when fewer than ``k`` candidates exist.
    """
    pool = sorted(set(candidates))
    if k <= 0 or k > len(pool):
        return None
    matrix = links if isinstance(links, LinkMatrix) else LinkMatrix.from_links(links)
    numa = numa_of or {}
    if math.comb(len(pool), k) <= EXHAUSTIVE_SEARCH_LIMIT:
        subsets: Iterable[tuple[int, ...]] = itertools.combinations(pool, k)
    else:
        subsets = (_grow_greedily(seed, k=k, pool=pool, matrix=matrix, numa=numa) for seed in pool)
    best: tuple[int, ...] | None = None
    best_score: SetScore | None = None
    for subset in subsets:
        score = score_gpu_set(subset, matrix=matrix, numa_of=numa)
        if (
            best is None
            or best_score is None
            or score > best_score
            or (score == best_score and subset < best)
        ):
            best, best_score = subset, score
    return best


def _grow_greedily(
    seed: int,
    *,
    k: int,
    pool: Sequence[int],
    matrix: LinkMatrix,
    numa: Mapping[int, int | None],
) -> tuple[int, ...]:
    chosen = [seed]
    while len(chosen) < k:
        rest = (g for g in pool if g not in chosen)
        nxt = max(
            rest,
            key=lambda g: (score_gpu_set([*chosen, g], matrix=matrix, numa_of=numa), -g),
        )
        chosen.append(nxt)
    return tuple(sorted(chosen))
