"""Turn the text of ``nvidia-smi topo -m`` into a device profile.

Handles every format the driver has printed: tab- or space-separated, with or without the
``NUMA Affinity`` and ``GPU NUMA ID`` columns, NIC rows and columns named ``mlx5_N`` or
``NICN``, legends and NIC legends, and ``# source:`` annotation lines. What the matrix does
not say (GPU model, memory, PCI bus ids) comes from the caller or is synthesised, and is
named as such in the profile's description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from agent.profile import GpuEntry, GpuSpec, NumaNodeSpec, Profile, nvlinks_in_cell
from shared.ranges import format_cpu_list, parse_cpu_list

_GPU_NAME: Final = re.compile(r"^GPU(\d+)$")
_HEADER_SPLIT: Final = re.compile(r"\t+|\s{2,}")
_EXTRA_COLUMNS: Final = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")
_NOT_AVAILABLE: Final = {"N/A", "n/a", ""}


class TopoParseError(ValueError):
    """The text is not ``nvidia-smi topo -m`` output; the message says where it broke."""


@dataclass(frozen=True)
class TopoMatrix:
    """What one ``nvidia-smi topo -m`` output says about the GPUs."""

    cells: tuple[tuple[str, ...], ...]  # GPU-by-GPU cells, "X" on the diagonal
    cpu_affinity: tuple[tuple[int, ...] | None, ...]  # None where the column is absent or N/A
    numa_affinity: tuple[int | None, ...]
    nic_names: tuple[str, ...]

    @property
    def gpu_count(self) -> int:
        return len(self.cells)


def parse_topo(text: str) -> TopoMatrix:
    """Parse ``nvidia-smi topo -m`` output.

    Raises:
        TopoParseError: no GPU header, a malformed row, or a non-square GPU matrix.
    """
    lines = [ln for ln in text.splitlines() if not ln.startswith("# source:")]
    header_at = next(
        (i for i, ln in enumerate(lines) if ln[:1].isspace() and "GPU0" in ln.split()), None
    )
    if header_at is None:
        raise TopoParseError("no header line with GPU0 found (is this `nvidia-smi topo -m`?)")
    columns = [c for c in _HEADER_SPLIT.split(lines[header_at].strip()) if c]
    devices = [c for c in columns if c not in _EXTRA_COLUMNS]
    extras = [c for c in columns if c in _EXTRA_COLUMNS]
    gpu_columns = [c for c in devices if _GPU_NAME.match(c)]
    if gpu_columns != [f"GPU{i}" for i in range(len(gpu_columns))]:
        raise TopoParseError(f"GPU columns are not GPU0..GPUn in order: {gpu_columns}")
    rows: dict[int, list[str]] = {}
    for number, line in enumerate(lines[header_at + 1 :], start=header_at + 2):
        tokens = line.split()
        if not tokens or tokens[0] in {"Legend:", "NIC"}:
            if tokens[:1] == ["Legend:"]:
                break
            continue
        match = _GPU_NAME.match(tokens[0])
        if match is None:
            continue  # NIC rows
        if len(tokens) < 1 + len(devices):
            raise TopoParseError(f"line {number}: {len(tokens) - 1} cells, expected {len(devices)}")
        rows[int(match[1])] = tokens[1:]
    n = len(gpu_columns)
    if sorted(rows) != list(range(n)):
        raise TopoParseError(f"GPU rows {sorted(rows)} do not match the {n} GPU columns")
    cells = tuple(tuple(rows[a][:n]) for a in range(n))
    for a in range(n):
        for b in range(n):
            if (a == b) != (cells[a][b] == "X") or cells[a][b] != cells[b][a]:
                raise TopoParseError(
                    f"GPU matrix is not symmetric with X on the diagonal at {a},{b}"
                )
    extra_values = [dict(zip(extras, rows[a][len(devices) :], strict=False)) for a in range(n)]
    return TopoMatrix(
        cells=cells,
        cpu_affinity=tuple(_cpus(v.get("CPU Affinity")) for v in extra_values),
        numa_affinity=tuple(_int_or_none(v.get("NUMA Affinity")) for v in extra_values),
        nic_names=tuple(devices[n:]),
    )


def profile_from_topo(
    text: str,
    *,
    name: str,
    product: str = "NVIDIA GPU",
    memory_gib: float = 80.0,
    nvlink_version: int | None = None,
) -> Profile:
    """Build a device profile from ``nvidia-smi topo -m`` output.

    NVLink counts, PCIe levels, CPU and NUMA affinity are taken exactly from the text. A
    matrix where every GPU pair shows the same ``NV#`` (and there are at least three GPUs) is
    an NVSwitch fabric: each GPU gets that many switch links. PCI bus ids are synthesised.
    """
    topo = parse_topo(text)
    n = topo.gpu_count
    nv_counts = {nvlinks_in_cell(topo.cells[a][b]) for a in range(n) for b in range(n) if a != b}
    switch_links = None
    if n >= 3 and len(nv_counts) == 1 and (only := next(iter(nv_counts))) > 0:
        switch_links = only
    numa_cpus: dict[int, set[int]] = {}
    for cpus, numa in zip(topo.cpu_affinity, topo.numa_affinity, strict=True):
        if numa is not None:
            numa_cpus.setdefault(numa, set()).update(cpus or ())
    crosses_sockets = any("SYS" in row for row in topo.cells)
    return Profile(
        name=name,
        description=(
            f"imported from nvidia-smi topo -m ({n} GPUs, {len(topo.nic_names)} NICs); "
            "product, memory and PCI bus ids are not in that output and were supplied or "
            "synthesised"
        ),
        sockets=2 if crosses_sockets else 1,
        numa_nodes=[
            NumaNodeSpec(id=numa, cpus=format_cpu_list(sorted(cpus)))
            for numa, cpus in sorted(numa_cpus.items())
        ],
        gpu=GpuSpec(
            product=product,
            memory_gib=memory_gib,
            nvlink_version=nvlink_version,
            nvswitch_links=switch_links,
        ),
        gpus=[
            GpuEntry(
                pci_bus_id=f"0000:{0x10 + 0x10 * i:02x}:00.0",
                numa_node=topo.numa_affinity[i],
                cpu_affinity=format_cpu_list(topo.cpu_affinity[i] or ()),
            )
            for i in range(n)
        ],
        topology=[" ".join(row) for row in topo.cells],
    )


def _cpus(value: str | None) -> tuple[int, ...] | None:
    if value is None or value in _NOT_AVAILABLE:
        return None
    return tuple(parse_cpu_list(value))


def _int_or_none(value: str | None) -> int | None:
    if value is None or value in _NOT_AVAILABLE or not value.isdigit():
        return None
    return int(value)
