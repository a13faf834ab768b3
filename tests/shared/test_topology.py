"""Topology helpers: NVLink islands, NUMA groups, best-connected GPU sets."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.report import GpuLink, PcieLevel
from shared.samples import DGX1_V100, DGX_H100, L40S_PCIE, SHAPES, build_report
from shared.topology import (
    EXHAUSTIVE_SEARCH_LIMIT,
    LinkMatrix,
    best_connected_gpus,
    gpus_by_numa_node,
    nvlink_islands,
    score_gpu_set,
)
from tests.conftest import shared_data_path


def _report(name: str):  # type: ignore[no-untyped-def]
    return build_report(SHAPES[name], node_name=f"node-{name}")


def _numa_of(report) -> dict[int, int | None]:  # type: ignore[no-untyped-def]
    return {g.index: g.numa_node for g in report.gpus}


def test_dgx_h100_is_one_island_on_two_numa_nodes() -> None:
    report = _report("dgx-h100")
    assert nvlink_islands(range(8), report.links) == [tuple(range(8))]
    assert gpus_by_numa_node(report.gpus) == {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}
    assert all(lk.nvlink_count == 18 and lk.via_nvswitch for lk in report.links)
    assert report.links[0].nvlink_bandwidth_bytes_per_s == 900e9


def test_dgx_h100_best_quad_stays_on_one_numa_node() -> None:
    report = _report("dgx-h100")
    numa = _numa_of(report)
    assert best_connected_gpus(k=4, candidates=range(8), links=report.links, numa_of=numa) == (
        0,
        1,
        2,
        3,
    )
    # With 0 and 1 busy, the best quad is the other socket's, not a split one.
    assert best_connected_gpus(
        k=4, candidates=[2, 3, 4, 5, 6, 7], links=report.links, numa_of=numa
    ) == (4, 5, 6, 7)


def test_dgx1_best_quad_is_a_fully_nvlinked_quad() -> None:
    report = _report("dgx1-v100")
    matrix = LinkMatrix.from_links(report.links)
    quad = best_connected_gpus(k=4, candidates=range(8), links=matrix, numa_of=_numa_of(report))
    assert quad == (0, 1, 2, 3)
    assert all(matrix.nvlink_count(a, b) > 0 for a, b in itertools.combinations(quad, 2))
    # Without GPU 0 the other fully connected quad wins over any mixed set.
    rest = best_connected_gpus(k=4, candidates=range(1, 8), links=matrix)
    assert rest == (4, 5, 6, 7)


def test_dgx1_best_pair_uses_a_double_nvlink() -> None:
    report = _report("dgx1-v100")
    pair = best_connected_gpus(k=2, candidates=range(8), links=report.links)
    assert pair is not None
    assert LinkMatrix.from_links(report.links).nvlink_count(*pair) == 2


def test_pcie_only_node_prefers_a_shared_switch() -> None:
    report = _report("l40s-pcie")
    assert nvlink_islands(range(8), report.links) == [(i,) for i in range(8)]
    pair = best_connected_gpus(k=2, candidates=[1, 2, 3, 5], links=report.links)
    assert pair == (2, 3)  # same PCIe switch (PXB) beats same NUMA node (NODE)


@pytest.mark.parametrize(("k", "candidates"), [(0, range(8)), (3, [1, 2]), (1, [])])
def test_impossible_requests_return_none(k: int, candidates: range | list[int]) -> None:
    assert best_connected_gpus(k=k, candidates=candidates, links=[]) is None


def test_unknown_links_score_as_farthest() -> None:
    matrix = LinkMatrix.from_links([GpuLink(gpu_a=0, gpu_b=1, pcie_level=PcieLevel.SINGLE)])
    assert matrix.pcie_rank(0, 1) == PcieLevel.SINGLE.rank
    assert matrix.pcie_rank(1, 2) == PcieLevel.SYSTEM.rank
    assert matrix.nvlink_bytes_per_s(0, 2) == 0.0


def test_greedy_search_finds_a_clique_on_a_large_node() -> None:
    # Two 12-GPU NVLink cliques: C(24, 12) subsets is far beyond exhaustive search.
    links = [
        GpuLink(gpu_a=a, gpu_b=b, nvlink_count=4 if a // 12 == b // 12 else 0)
        for a, b in itertools.combinations(range(24), 2)
    ]
    assert EXHAUSTIVE_SEARCH_LIMIT < 2_704_156
    assert best_connected_gpus(k=12, candidates=range(24), links=links) == tuple(range(12))
    assert best_connected_gpus(k=12, candidates=range(1, 24), links=links) == tuple(range(12, 24))


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=4), min_size=28, max_size=28),
    free=st.sets(st.integers(min_value=0, max_value=7), min_size=1),
    k=st.integers(min_value=1, max_value=8),
)
def test_best_set_is_optimal_free_and_deterministic(
    counts: list[int], free: set[int], k: int
) -> None:
    pairs = list(itertools.combinations(range(8), 2))
    links = [
        GpuLink(gpu_a=a, gpu_b=b, nvlink_count=c) for (a, b), c in zip(pairs, counts, strict=True)
    ]
    matrix = LinkMatrix.from_links(links)
    numa = {i: i // 4 for i in range(8)}
    best = best_connected_gpus(k=k, candidates=free, links=matrix, numa_of=numa)
    if k > len(free):
        assert best is None
        return
    assert best is not None
    assert len(best) == k
    assert set(best) <= free
    assert list(best) == sorted(best)
    best_score = score_gpu_set(best, matrix=matrix, numa_of=numa)
    for other in itertools.combinations(sorted(free), k):
        assert score_gpu_set(other, matrix=matrix, numa_of=numa) <= best_score
    assert (
        best_connected_gpus(k=k, candidates=sorted(free, reverse=True), links=links, numa_of=numa)
        == best
    )


_CELL = re.compile(r"^NV(\d+)$")


def test_dgx1_sample_matches_the_real_machine() -> None:
    """The DGX-1 reference shape is wired exactly like the published nvidia-smi output."""
    path = shared_data_path("fixtures", "topo", "dgx1-v100-8gpu-hybrid-cube-mesh-nv1-nv2.txt")
    rows = [line.split() for line in path.read_text().splitlines() if line.startswith("GPU")]
    for a, row in enumerate(rows):
        cells = row[1:9]
        for b, cell in enumerate(cells):
            match = _CELL.match(cell)
            assert DGX1_V100.nvlinks[a][b] == (int(match[1]) if match else 0), (a, b, cell)


def test_reference_shapes_are_symmetric() -> None:
    for shape in (DGX_H100, DGX1_V100, L40S_PCIE):
        n = shape.gpu_count
        for a, b in itertools.product(range(n), repeat=2):
            assert shape.nvlinks[a][b] == shape.nvlinks[b][a]
            assert shape.pcie[a][b] == shape.pcie[b][a]
