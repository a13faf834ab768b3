"""``profile from-topo`` reproduces every real ``nvidia-smi topo -m`` fixture exactly.

Expected values are read from each file by this test's own minimal reader (whitespace split
of the GPU rows), independent of the importer, then compared with what the agent reports
when it runs over the imported profile.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.topo_import import TopoParseError, parse_topo, profile_from_topo
from shared.ranges import parse_cpu_list
from shared.report import PcieLevel
from tests.agent.helpers import fake_collector
from tests.conftest import SHARED_DATA, shared_data_path

TOPO_DIR = SHARED_DATA / "fixtures" / "topo"
FIXTURES = sorted(p.name for p in TOPO_DIR.glob("*.txt")) if TOPO_DIR.exists() else []


def _expected(text: str) -> tuple[list[list[str]], list[list[int] | None], list[int | None]]:
    """Cells, CPU affinity and NUMA affinity per GPU, straight from the text."""
    rows = [ln.split() for ln in text.splitlines() if re.match(r"^GPU\d+\s", ln)]
    n = len(rows)
    header = next(ln for ln in text.splitlines() if ln[:1].isspace() and "GPU0" in ln)
    has_numa = "NUMA Affinity" in header
    devices = len(re.findall(r"\b(?:GPU\d+|NIC\d+|mlx5_\d+)\b", header))
    cells = [row[1 : n + 1] for row in rows]
    extras = [row[1 + devices :] for row in rows]
    cpus = [parse_cpu_list(e[0]) if e and e[0] != "N/A" else None for e in extras]
    numa = [int(e[1]) if has_numa and len(e) > 1 and e[1].isdigit() else None for e in extras]
    return cells, cpus, numa


@pytest.mark.parametrize("name", FIXTURES or ["<no fixtures>"])
def test_from_topo_reproduces_the_fixture(name: str, tmp_path: Path) -> None:
    path = shared_data_path("fixtures", "topo", name)
    text = path.read_text()
    cells, cpus, numa = _expected(text)
    profile = profile_from_topo(text, name=path.stem)
    collector, _ = fake_collector(profile, tmp_path)
    report = collector.collect().report
    assert len(report.gpus) == len(cells)
    for link in report.links:
        cell = cells[link.gpu_a][link.gpu_b]
        nv = re.match(r"^NV(\d+)$", cell)
        assert link.nvlink_count == (int(nv[1]) if nv else 0), (link, cell)
        expected_level = None if nv else PcieLevel.from_topo_code(cell)
        assert link.pcie_level == expected_level, (link, cell)
    for gpu in report.gpus:
        assert gpu.cpu_affinity == (cpus[gpu.index] or []), gpu.index
        assert gpu.numa_node == numa[gpu.index], gpu.index


def test_fixture_facts_spot_checks(tmp_path: Path) -> None:
    """Hand-read facts from three fixtures, as a person would read the files."""
    dgx_a100 = parse_topo(
        shared_data_path("fixtures", "topo", "dgx-a100-8gpu-nv12-12nic-numa1357.txt").read_text()
    )
    assert dgx_a100.numa_affinity == (3, 3, 1, 1, 7, 7, 5, 5)
    assert dgx_a100.cpu_affinity[0] == (*range(48, 64), *range(176, 192))
    assert len(dgx_a100.nic_names) == 12
    bridge = parse_topo(
        shared_data_path(
            "fixtures", "topo", "a100-4gpu-nvlink-bridge-pair-nv12-2numa.txt"
        ).read_text()
    )
    assert bridge.cells[0][1] == "NV12"
    assert bridge.cells[2][3] == "NODE"  # the anomaly the fixture keeps
    hopper = parse_topo(
        shared_data_path("fixtures", "topo", "hopper-8gpu-nv18-12nic-2numa.txt").read_text()
    )
    assert hopper.cpu_affinity[0] == (4, 6, 8, 10, 12)
    assert hopper.numa_affinity[4] == 1


def test_nvswitch_is_recognised_and_bridges_are_not() -> None:
    hgx = shared_data_path("fixtures", "topo", "hgx-a100-80gb-8gpu-nv12-8nic-2numa.txt")
    assert profile_from_topo(hgx.read_text(), name="hgx").gpu.nvswitch_links == 12
    pair = shared_data_path("fixtures", "topo", "a100-4gpu-nvlink-bridge-pair-nv12-2numa.txt")
    assert profile_from_topo(pair.read_text(), name="pair").gpu.nvswitch_links is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("hello\nworld\n", "no header line with GPU0"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV1\n", "do not match"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV1\nGPU1\tNV2\t X \n", "not symmetric"),
        ("\tGPU0\tGPU1\nGPU0\t X\nGPU1\tNV2\t X \n", "line 2"),
    ],
)
def test_malformed_text_is_refused_with_a_reason(text: str, fragment: str) -> None:
    with pytest.raises(TopoParseError, match=fragment):
        parse_topo(text)
