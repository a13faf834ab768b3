"""Device profiles: a machine described as data, for the fake NVML and for ``from-topo``.

A profile says what NVML would answer on one node: the GPUs and their wiring (as the
``nvidia-smi topo -m`` matrix a person already knows how to read), the host's NUMA layout,
and scripted live behaviour (utilisation curves, a process per pod, an XID at time t, a GPU
falling off the bus). Profiles are YAML files; :func:`load_profile` names the file and the
field of any problem.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Final, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.ranges import parse_cpu_list
from shared.report import GpuArchitecture, PcieLevel
from shared.schema import problems_from
from shared.units import GIB

PROFILE_PACKAGE: Final = "agent.profiles"
_NV_CELL: Final = re.compile(r"^NV(\d+)$")


def nvlinks_in_cell(cell: str) -> int:
    """The NVLink count of an ``nvidia-smi topo -m`` cell (``NV12`` -> 12, others -> 0)."""
    match = _NV_CELL.match(cell)
    return int(match[1]) if match else 0


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumaNodeSpec(_Model):
    """One host NUMA node."""

    id: Annotated[int, Field(ge=0)]
    cpus: str  # Linux CPU list syntax
    memory_gib: Annotated[float, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _cpus_parse(self) -> Self:
        parse_cpu_list(self.cpus)
        return self


class GpuSpec(_Model):
    """Facts shared by the node's GPUs (all GPUs of a node are one model)."""

    product: str
    architecture: GpuArchitecture = GpuArchitecture.UNKNOWN
    compute_capability: str | None = None
    memory_gib: Annotated[float, Field(gt=0)]
    power_limit_w: Annotated[float, Field(gt=0)] = 300.0
    idle_power_w: Annotated[float, Field(ge=0)] = 60.0
    pcie_generation: Annotated[int, Field(ge=1, le=7)] | None = None
    pcie_width: Annotated[int, Field(ge=1, le=32)] | None = None
    nvlink_version: Annotated[int, Field(ge=1, le=5)] | None = None
    #: NVLinks per GPU into an NVSwitch fabric; None where GPUs link to each other directly.
    nvswitch_links: Annotated[int, Field(ge=1, le=36)] | None = None
    ecc: bool = True
    mig_capable: bool = False
    max_sm_clock_mhz: Annotated[int, Field(gt=0)] = 1980


class MigSpec(_Model):
    """One MIG device carved out of a GPU."""

    profile: str  # e.g. "1g.10gb"
    memory_gib: Annotated[float, Field(gt=0)]


class GpuEntry(_Model):
    """Per-GPU facts: where it sits and how the host sees it."""

    pci_bus_id: str
    #: MIG devices; non-empty means MIG mode is enabled on this GPU.
    mig_devices: list[MigSpec] = Field(default_factory=list, max_length=7)
    numa_node: Annotated[int, Field(ge=0)] | None = None
    cpu_affinity: str = ""  # Linux CPU list syntax; empty = unknown
    cluster_uuid: str | None = None
    clique_id: Annotated[int, Field(ge=0)] | None = None


class Curve(_Model):
    """A utilisation curve over time: ``mean + amplitude * sin(2 pi t / period_s + phase)``."""

    mean: Annotated[float, Field(ge=0, le=1)] = 0.0
    amplitude: Annotated[float, Field(ge=0, le=1)] = 0.0
    period_s: Annotated[float, Field(gt=0)] = 600.0
    phase: float = 0.0

    def at(self, t_s: float) -> float:
        """The curve's value at ``t_s`` seconds, clamped to [0, 1]."""
        value = self.mean + self.amplitude * math.sin(
            2 * math.pi * t_s / self.period_s + self.phase
        )
        return min(max(value, 0.0), 1.0)


class PodSpec(_Model):
    """A pod whose container runs one process on some GPUs."""

    namespace: str
    pod: str
    uid: str
    container: str
    pid: Annotated[int, Field(ge=1)]
    gpus: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    memory_gib: Annotated[float, Field(ge=0)] = 1.0
    utilization: Curve | None = None
    #: Real SM activity (what GPM and per-process utilisation measure); default: 0.6 x
    #: ``utilization`` (NVML's coarse "a kernel ran" ratio overstates it).
    activity: Curve | None = None
    #: GPUs the pod holds but never runs on (a gang sized larger than it uses): no kernel,
    #: no activity, and only a context's memory there.
    idle_gpus: list[Annotated[int, Field(ge=0)]] = Field(default_factory=list)
    #: CPU cores the container uses, steadily (its cgroup's ``cpu.stat`` grows by this).
    cpu_cores: Annotated[float, Field(ge=0)] = 1.0
    #: The container's host-memory working set, GiB (its cgroup's ``memory.current``).
    host_memory_gib: Annotated[float, Field(ge=0)] = 4.0

    @model_validator(mode="after")
    def _idle_gpus_are_held(self) -> Self:
        stray = sorted(set(self.idle_gpus) - set(self.gpus))
        if stray:
            raise ValueError(f"idle_gpus {stray} are not among the pod's gpus {self.gpus}")
        return self

    def active_on(self, gpu: int) -> bool:
        return gpu in self.gpus and gpu not in self.idle_gpus

    def activity_at(self, t_s: float) -> float:
        """The pod's SM activity on the GPUs it runs on."""
        if self.activity is not None:
            return self.activity.at(t_s)
        return 0.6 * self.utilization.at(t_s) if self.utilization is not None else 0.0


class EventSpec(_Model):
    """Something that happens to one GPU at ``at_s`` seconds after start."""

    at_s: Annotated[float, Field(ge=0)]
    gpu: Annotated[int, Field(ge=0)]
    kind: Literal["xid", "lost", "ecc_uncorrected"]
    xid: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _xid_has_code(self) -> Self:
        if self.kind == "xid" and self.xid is None:
            raise ValueError("an xid event needs its xid code")
        return self


class Behaviour(_Model):
    """Scripted live behaviour."""

    utilization: Curve = Curve()
    per_gpu_utilization: dict[int, Curve] = Field(default_factory=dict)
    pods: list[PodSpec] = Field(default_factory=list)
    events: list[EventSpec] = Field(default_factory=list)


class Profile(_Model):
    """One machine, as NVML and the host would describe it."""

    name: str
    description: str = ""
    driver_version: str = "550.54.15"
    cuda_version: Annotated[int, Field(ge=1000)] = 12040  # NVML's integer form
    sockets: Annotated[int, Field(ge=1)] = 1
    host_memory_gib: Annotated[float, Field(gt=0)] = 512
    numa_nodes: list[NumaNodeSpec] = Field(default_factory=list)
    gpu: GpuSpec
    gpus: list[GpuEntry] = Field(min_length=1, max_length=64)
    #: ``nvidia-smi topo -m`` GPU-by-GPU matrix: ``X`` on the diagonal, ``NV#`` for NVLink,
    #: ``PIX``/``PXB``/``PHB``/``NODE``/``SYS`` for PCIe. Optional ``pcie`` gives the PCIe level
    #: behind NVLinked pairs (``nvidia-smi`` hides it); ``-`` where unknown.
    topology: list[str]
    pcie: list[str] | None = None
    behaviour: Behaviour = Behaviour()

    @model_validator(mode="after")
    def _matrix_consistent(self) -> Self:
        n = len(self.gpus)
        for name, matrix in (("topology", self.topology), ("pcie", self.pcie)):
            if matrix is None:
                continue
            if len(matrix) != n:
                raise ValueError(f"{name}: {len(matrix)} rows for {n} GPUs")
            rows = [row.split() for row in matrix]
            for a, row in enumerate(rows):
                if len(row) != n:
                    raise ValueError(f"{name}.{a}: {len(row)} cells for {n} GPUs")
                for b, cell in enumerate(row):
                    if (a == b) != (cell == "X"):
                        raise ValueError(f"{name}.{a}: 'X' belongs on the diagonal only")
                    if cell != rows[b][a]:
                        raise ValueError(f"{name}.{a}: cell {b} ({cell}) differs from {b},{a}")
                    if a != b:
                        _check_cell(cell, where=f"{name}.{a}.{b}", pcie_only=name == "pcie")
        for i, gpu in enumerate(self.gpus):
            if gpu.mig_devices and not self.gpu.mig_capable:
                raise ValueError(f"gpus.{i}.mig_devices: gpu.mig_capable is false")
        numa_ids = {node.id for node in self.numa_nodes}
        for i, gpu in enumerate(self.gpus):
            if gpu.numa_node is not None and numa_ids and gpu.numa_node not in numa_ids:
                raise ValueError(f"gpus.{i}.numa_node: {gpu.numa_node} is not in numa_nodes")
        for p, pod in enumerate(self.behaviour.pods):
            for gpu_index in pod.gpus:
                if gpu_index >= n:
                    raise ValueError(f"behaviour.pods.{p}.gpus: no GPU {gpu_index}")
        for e, event in enumerate(self.behaviour.events):
            if event.gpu >= n:
                raise ValueError(f"behaviour.events.{e}.gpu: no GPU {event.gpu}")
        return self

    def nvlinks(self, a: int, b: int) -> int:
        """NVLinks between GPUs ``a`` and ``b`` as the topology matrix says."""
        return nvlinks_in_cell(self.topology[a].split()[b])

    def pcie_level(self, a: int, b: int) -> PcieLevel | None:
        """The PCIe level between ``a`` and ``b``, or None where the profile does not say."""
        cell = self.topology[a].split()[b]
        if not _NV_CELL.match(cell):
            return PcieLevel.from_topo_code(cell)
        if self.pcie is None:
            return None
        behind = self.pcie[a].split()[b]
        return None if behind == "-" else PcieLevel.from_topo_code(behind)

    @property
    def memory_bytes(self) -> int:
        """Each GPU's framebuffer in bytes."""
        return int(self.gpu.memory_gib * GIB)


def _check_cell(cell: str, *, where: str, pcie_only: bool) -> None:
    if not pcie_only and _NV_CELL.match(cell):
        return
    if pcie_only and cell == "-":
        return
    try:
        PcieLevel.from_topo_code(cell)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def load_profile(source: str | Path) -> Profile:
    """Load a profile by shipped name (``dgx-h100``) or by path to a YAML file.

    Raises:
        ProfileError: no such profile, unreadable YAML, or a field that breaks the rules; the
            message names the file and the field.
    """
    path = Path(source)
    if path.suffix not in {".yaml", ".yml"} and not path.exists():
        shipped = resources.files(PROFILE_PACKAGE).joinpath(f"{source}.yaml")
        if not shipped.is_file():
            known = ", ".join(shipped_profile_names())
            raise ProfileError(f"unknown profile {source!r}; shipped profiles: {known}")
        return parse_profile(shipped.read_text(), origin=f"{source} (shipped)")
    try:
        text = path.read_text()
    except OSError as error:
        raise ProfileError(f"{path}: cannot read: {error.strerror}") from None
    return parse_profile(text, origin=str(path))


def parse_profile(text: str, *, origin: str) -> Profile:
    """Validate a profile from YAML text; ``origin`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ProfileError(f"{origin}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{origin}: a profile must be a YAML mapping")
    try:
        return Profile.model_validate(data)
    except ValidationError as error:
        details = "; ".join(str(p) for p in problems_from(error))
        raise ProfileError(f"{origin}: {details}") from None


def shipped_profile_names() -> list[str]:
    """Names of the profiles that ship with the agent."""
    folder = resources.files(PROFILE_PACKAGE)
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def dump_profile(profile: Profile) -> str:
    """A profile as YAML, in field order, for ``profile from-topo``."""
    data = profile.model_dump(mode="json", exclude_defaults=True)
    data["name"] = profile.name
    data["topology"] = profile.topology
    return yaml.safe_dump(data, sort_keys=False, width=200)
