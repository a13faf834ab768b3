"""The node report: what an agent tells the optimizer about one node.

This is the versioned wire contract between ``agent/`` and ``optimizer/``. It is pure data with
validation; no I/O. Field names listed in the README's "Stable fields" table are relied on by
tools outside the code (dashboards, the planner's snapshot, customers' scripts): add fields
freely, never rename those.

A report comes in two forms:

* a **topology report** carries ``host`` (and the node's ``gpus`` and ``links``); the agent
  sends one at start and whenever its topology fingerprint changes;
* a **samples report** has ``host`` unset and no GPUs or links; its samples refer to GPUs by
  UUID from the node's last topology report.

Both may carry samples.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections import Counter
from collections.abc import Hashable, Iterable
from typing import Annotated, Final, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    field_validator,
    model_validator,
)

SCHEMA_VERSION: Final = 1
SUPPORTED_SCHEMA_VERSIONS: Final = frozenset({1})

MAX_GPUS_PER_NODE: Final = 256
MAX_LINKS_PER_NODE: Final = MAX_GPUS_PER_NODE * (MAX_GPUS_PER_NODE - 1) // 2
MAX_PROCESSES_PER_GPU: Final = 512
MAX_MIG_INSTANCES_PER_GPU: Final = 7 * 8
MAX_NUMA_NODES: Final = 64
MAX_CPUS: Final = 8192
MAX_THROTTLE_REASONS: Final = 32
#: Containers whose CPU and memory one report carries (those running GPU processes).
MAX_CONTAINERS_PER_NODE: Final = 1024
#: A host's memory, at most (the largest single-system-image servers today hold 32 TiB).
MAX_HOST_MEMORY_BYTES: Final = 2**46

_GPU_UUID_RE: Final = (
    r"^GPU-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_MIG_UUID_RE: Final = r"^MIG-[0-9A-Za-z/-]{1,80}$"
_PCI_BUS_ID_RE: Final = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<device>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)
#: A Kubernetes node name: a lowercase RFC 1123 subdomain (at most 253 characters).
NODE_NAME_PATTERN: Final = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
GpuUuid = Annotated[str, StringConstraints(pattern=_GPU_UUID_RE)]
#: Numbers are strict: a bool is no number and a string no integer (``true`` is not 1).
Ratio = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
#: Every integer on the wire fits a signed 64-bit database column.
INT64_MAX: Final = 2**63 - 1
NonNegativeInt = Annotated[int, Strict(), Field(ge=0, le=INT64_MAX)]
NonNegativeFloat = Annotated[float, Strict(), Field(ge=0.0)]
CpuId = Annotated[int, Strict(), Field(ge=0, lt=MAX_CPUS)]
# Physical bounds on measures (a reading past them is a broken sensor or a forged report).
MAX_GPU_POWER_W: Final = 5_000.0
MAX_ENERGY_J: Final = 1e15  # 5 kW for six years
MAX_CLOCK_HZ: Final = 1e10
MAX_GPU_MEMORY_BYTES: Final = 2**44  # 16 TiB
MAX_NVLINK_BANDWIDTH_BYTES_PER_S: Final = 1e14
Watts = Annotated[float, Strict(), Field(ge=0.0, le=MAX_GPU_POWER_W)]
GpuBytes = Annotated[int, Strict(), Field(ge=0, le=MAX_GPU_MEMORY_BYTES)]


class GpuHealth(enum.StrEnum):
    """Health of one GPU as the agent judges it."""

    OK = "ok"
    DEGRADED = "degraded"  # uncorrected ECC errors, row-remap failure, a critical XID
    LOST = "lost"  # fallen off the bus (NVML GpuIsLost, XID 79)


class PcieLevel(enum.StrEnum):
    """NVML's ``nvmlGpuTopologyLevel_t`` between two GPUs, nearest first.

    ``nvidia-smi topo -m`` prints these as (none for internal), PIX, PXB, PHB, NODE and SYS.
    """

    INTERNAL = "internal"  # same board (multi-GPU card)
    SINGLE = "single"  # PIX: at most one PCIe switch
    MULTIPLE = "multiple"  # PXB: several PCIe switches, no host bridge
    HOSTBRIDGE = "hostbridge"  # PHB: through a PCIe host bridge (the CPU)
    NODE = "node"  # NODE: between host bridges within one NUMA node
    SYSTEM = "system"  # SYS: across the SMP interconnect between sockets

    @property
    def rank(self) -> int:
        """0 for the nearest level, 5 for the farthest: smaller is better."""
        return _PCIE_LEVEL_ORDER.index(self)

    @classmethod
    def from_nvml(cls, value: int) -> PcieLevel:
        """Map NVML's numeric level (0, 10, 20, 30, 40, 50) to the enum."""
        try:
            return _PCIE_LEVEL_FROM_NVML[value]
        except KeyError:
            raise ValueError(f"unknown NVML topology level {value}") from None

    @classmethod
    def from_topo_code(cls, code: str) -> PcieLevel:
        """Map a ``nvidia-smi topo -m`` cell (PIX, PXB, PHB, NODE, SYS; SOC is old SYS)."""
        try:
            return _PCIE_LEVEL_FROM_TOPO[code.upper()]
        except KeyError:
            raise ValueError(f"unknown nvidia-smi topology code {code!r}") from None


_PCIE_LEVEL_ORDER: Final = tuple(PcieLevel)
_PCIE_LEVEL_FROM_NVML: Final = {level * 10: member for level, member in enumerate(PcieLevel)}
_PCIE_LEVEL_FROM_TOPO: Final = {
    "PIX": PcieLevel.SINGLE,
    "PXB": PcieLevel.MULTIPLE,
    "PHB": PcieLevel.HOSTBRIDGE,
    "NODE": PcieLevel.NODE,
    "SYS": PcieLevel.SYSTEM,
    "SOC": PcieLevel.SYSTEM,
}


class GpuArchitecture(enum.StrEnum):
    """NVML's device architecture, lower-cased."""

    KEPLER = "kepler"
    MAXWELL = "maxwell"
    PASCAL = "pascal"
    VOLTA = "volta"
    TURING = "turing"
    AMPERE = "ampere"
    ADA = "ada"
    HOPPER = "hopper"
    BLACKWELL = "blackwell"
    UNKNOWN = "unknown"


def is_valid_node_name(name: str) -> bool:
    """True when ``name`` can be a Kubernetes node name (and so a report's ``node_name``)."""
    return len(name) <= 253 and re.match(NODE_NAME_PATTERN, name) is not None


def normalize_pci_bus_id(bus_id: str) -> str:
    """NVML's ``00000000:3B:00.0`` (or ``3b:00.0``) to sysfs's ``0000:3b:00.0``.

    Raises:
        ValueError: ``bus_id`` is not a PCI address.
    """
    match = _PCI_BUS_ID_RE.match(bus_id.strip())
    if match is None:
        raise ValueError(f"not a PCI bus id: {bus_id!r} (expected DDDD:BB:DD.F)")
    domain = int(match["domain"] or "0", 16)
    if domain > 0xFFFF:
        raise ValueError(f"PCI domain out of range in {bus_id!r}")
    return f"{domain:04x}:{match['bus'].lower()}:{match['device'].lower()}.{match['function']}"


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        str_strip_whitespace=True,
        validate_default=True,
        allow_inf_nan=False,
    )


class NumaNode(_Model):
    """One NUMA node of the host: its CPUs and memory."""

    id: NonNegativeInt
    cpus: list[CpuId] = Field(default_factory=list, max_length=MAX_CPUS)
    memory_bytes: NonNegativeInt | None = None


class HostInfo(_Model):
    """The host a GPU node runs on."""

    cpu_sockets: Annotated[int, Field(ge=1, le=64)]
    logical_cpus: Annotated[int, Field(ge=1, le=MAX_CPUS)]
    memory_bytes: NonNegativeInt
    numa_nodes: list[NumaNode] = Field(default_factory=list, max_length=MAX_NUMA_NODES)

    @model_validator(mode="after")
    def _numa_ids_unique(self) -> Self:
        _raise_on_duplicates((n.id for n in self.numa_nodes), what="NUMA node id")
        return self


class MigInstance(_Model):
    """One MIG device carved out of a GPU."""

    uuid: Annotated[str, StringConstraints(pattern=_MIG_UUID_RE)]
    profile: ShortText  # e.g. "1g.10gb"
    memory_bytes: NonNegativeInt
    gpu_instance_id: NonNegativeInt | None = None
    compute_instance_id: NonNegativeInt | None = None


class GpuInfo(_Model):
    """Static facts about one GPU; they change only when hardware or driver state changes."""

    index: Annotated[int, Strict(), Field(ge=0, lt=MAX_GPUS_PER_NODE)]
    uuid: GpuUuid
    product: ShortText  # NVML name, e.g. "NVIDIA H100 80GB HBM3"
    architecture: GpuArchitecture | None = None
    compute_capability: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+$")] | None = None
    serial: ShortText | None = None
    memory_bytes: Annotated[int, Strict(), Field(gt=0, le=MAX_GPU_MEMORY_BYTES)]
    pci_bus_id: str
    pcie_generation: Annotated[int, Strict(), Field(ge=1, le=7)] | None = None
    pcie_width: Annotated[int, Strict(), Field(ge=1, le=32)] | None = None
    numa_node: NonNegativeInt | None = None
    cpu_affinity: list[CpuId] = Field(default_factory=list, max_length=MAX_CPUS)
    power_limit_w: Watts | None = None
    mig_enabled: Annotated[bool, Strict()] = False
    mig_instances: list[MigInstance] = Field(
        default_factory=list, max_length=MAX_MIG_INSTANCES_PER_GPU
    )
    health: GpuHealth = GpuHealth.OK
    # Multi-node NVLink fabric (GB200 NVL72 class): GPUs with equal (cluster_uuid, clique_id)
    # share one NVLink domain across trays.
    cluster_uuid: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    clique_id: Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)] | None = None

    @field_validator("pci_bus_id")
    @classmethod
    def _normalize_bus_id(cls, value: str) -> str:
        return normalize_pci_bus_id(value)

    @field_validator("cpu_affinity")
    @classmethod
    def _sorted_unique_cpus(cls, value: list[int]) -> list[int]:
        return sorted(set(value))

    @model_validator(mode="after")
    def _mig_consistent(self) -> Self:
        if self.mig_instances and not self.mig_enabled:
            raise ValueError("mig_instances given while mig_enabled is false")
        _raise_on_duplicates((m.uuid for m in self.mig_instances), what="MIG uuid")
        return self

    @property
    def clique(self) -> str | None:
        """``<cluster_uuid>.<clique_id>`` as GPU Feature Discovery names it, or None."""
        if self.cluster_uuid is None or self.clique_id is None:
            return None
        return f"{self.cluster_uuid}.{self.clique_id}"


class GpuLink(_Model):
    """How one pair of GPUs on a node is connected. One entry per pair, ``gpu_a < gpu_b``."""

    gpu_a: NonNegativeInt
    gpu_b: NonNegativeInt
    nvlink_count: Annotated[int, Strict(), Field(ge=0, le=64)] = 0
    #: Aggregate bidirectional NVLink bandwidth between the pair, bytes per second.
    nvlink_bandwidth_bytes_per_s: (
        Annotated[float, Strict(), Field(ge=0.0, le=MAX_NVLINK_BANDWIDTH_BYTES_PER_S)] | None
    ) = None
    #: True when the links go through NVSwitch (every GPU on the fabric is all-to-all).
    via_nvswitch: Annotated[bool, Strict()] = False
    #: NVML common-ancestor level; None where only the NVLink count is known.
    pcie_level: PcieLevel | None = None

    @model_validator(mode="after")
    def _ordered_pair(self) -> Self:
        if self.gpu_a >= self.gpu_b:
            raise ValueError(f"gpu_a ({self.gpu_a}) must be less than gpu_b ({self.gpu_b})")
        if self.nvlink_count == 0 and self.nvlink_bandwidth_bytes_per_s:
            raise ValueError("nvlink_bandwidth_bytes_per_s given for a pair with no NVLink")
        return self


class GpuProcess(_Model):
    """One process using a GPU, attributed to its pod where the agent could tell."""

    pid: Annotated[int, Strict(), Field(ge=1, le=2**31 - 1)]
    # Kubernetes' own limits, within the store's columns (SQLite and PostgreSQL agree)
    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    pod: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    pod_uid: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    container: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    memory_used_bytes: GpuBytes | None = None
    #: The process's share of SM time over the last sample window
    #: (``nvmlDeviceGetProcessUtilization``; None where the GPU cannot tell, e.g. MIG).
    sm_util_ratio: Ratio | None = None


class ContainerUsage(_Model):
    """CPU and memory of one container that runs GPU processes, from its cgroup."""

    namespace: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    pod: Annotated[str, StringConstraints(min_length=1, max_length=253)] | None = None
    pod_uid: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    container: Annotated[str, StringConstraints(min_length=1, max_length=63)] | None = None
    #: CPU cores used since the agent's previous read (None on the first).
    cpu_cores: Annotated[float, Strict(), Field(ge=0.0, le=float(MAX_CPUS))] | None = None
    #: The working set: memory in use less inactive file cache (what the kubelet evicts on).
    memory_working_set_bytes: (
        Annotated[int, Strict(), Field(ge=0, le=MAX_HOST_MEMORY_BYTES)] | None
    ) = None


class EccCounts(_Model):
    """Volatile ECC error counters since the last driver load."""

    corrected_total: NonNegativeInt = 0
    uncorrected_total: NonNegativeInt = 0


class GpuSample(_Model):
    """Live readings of one GPU at ``NodeReport.collected_at``. ``None`` = not supported."""

    gpu_uuid: GpuUuid
    #: Fraction of the sample window in which any kernel ran (NVML "GPU utilisation").
    util_ratio: Ratio | None = None
    #: Fraction of SMs busy (GPM SM activity, Hopper and newer): real activity.
    sm_active_ratio: Ratio | None = None
    #: Warps resident over the maximum (GPM SM occupancy).
    sm_occupancy_ratio: Ratio | None = None
    #: Fraction of cycles any tensor core was busy (GPM).
    tensor_active_ratio: Ratio | None = None
    #: Fraction of peak DRAM bandwidth used (GPM).
    dram_active_ratio: Ratio | None = None
    #: Fraction of the window the memory interface was busy (memory-bandwidth utilisation).
    memory_bandwidth_util_ratio: Ratio | None = None
    memory_used_bytes: GpuBytes | None = None
    power_w: Watts | None = None
    #: Cumulative energy since driver load, joules (a counter).
    energy_j: Annotated[float, Strict(), Field(ge=0.0, le=MAX_ENERGY_J)] | None = None
    temperature_c: Annotated[float, Strict(), Field(ge=-50.0, le=200.0)] | None = None
    sm_clock_hz: Annotated[float, Strict(), Field(ge=0.0, le=MAX_CLOCK_HZ)] | None = None
    ecc: EccCounts | None = None
    xid_total: NonNegativeInt = 0
    last_xid: NonNegativeInt | None = None
    throttle_reasons: list[ShortText] = Field(default_factory=list, max_length=MAX_THROTTLE_REASONS)
    processes: list[GpuProcess] = Field(default_factory=list, max_length=MAX_PROCESSES_PER_GPU)


class NodeReport(_Model):
    """Everything one agent reports about its node in one cycle."""

    schema_version: Annotated[
        int, Strict(), Field(json_schema_extra={"enum": sorted(SUPPORTED_SCHEMA_VERSIONS)})
    ] = SCHEMA_VERSION
    node_name: Annotated[
        str, StringConstraints(min_length=1, max_length=253, pattern=NODE_NAME_PATTERN)
    ]
    agent_version: ShortText
    #: Monotonic per agent process start; with ``node_name`` and ``collected_at`` it makes a
    #: resent report recognisable (the optimizer stores it once).
    sequence: NonNegativeInt = 0
    collected_at: AwareDatetime
    driver_version: ShortText | None = None
    cuda_version: Annotated[str, StringConstraints(max_length=16, pattern=r"^\d+\.\d+$")] | None = (
        None
    )
    host: HostInfo | None = None
    gpus: list[GpuInfo] = Field(default_factory=list, max_length=MAX_GPUS_PER_NODE)
    links: list[GpuLink] = Field(default_factory=list, max_length=MAX_LINKS_PER_NODE)
    samples: list[GpuSample] = Field(default_factory=list, max_length=MAX_GPUS_PER_NODE)
    #: CPU and memory of the containers running GPU processes (optional; additive).
    containers: list[ContainerUsage] = Field(
        default_factory=list, max_length=MAX_CONTAINERS_PER_NODE
    )

    @field_validator("collected_at", mode="before")
    @classmethod
    def _time_is_a_timestamp(cls, value: object) -> object:
        if isinstance(value, bool | int | float):
            raise ValueError("must be an RFC 3339 timestamp with a UTC offset, not a number")
        return value

    @field_validator("schema_version")
    @classmethod
    def _supported_version(cls, value: int) -> int:
        if value not in SUPPORTED_SCHEMA_VERSIONS:
            supported = ", ".join(str(v) for v in sorted(SUPPORTED_SCHEMA_VERSIONS))
            raise ValueError(f"unsupported schema_version {value}; supported: {supported}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.host is None and (self.gpus or self.links):
            raise ValueError("gpus and links may only be sent in a topology report (with host)")
        _raise_on_duplicates((g.index for g in self.gpus), what="GPU index")
        _raise_on_duplicates((g.uuid.lower() for g in self.gpus), what="GPU uuid")
        _raise_on_duplicates(((lk.gpu_a, lk.gpu_b) for lk in self.links), what="link pair")
        _raise_on_duplicates((s.gpu_uuid.lower() for s in self.samples), what="sample gpu_uuid")
        indices = {g.index for g in self.gpus}
        for position, link in enumerate(self.links):
            for end in ("gpu_a", "gpu_b"):
                if getattr(link, end) not in indices:
                    raise ValueError(
                        f"links.{position}.{end}: GPU index {getattr(link, end)} is not in gpus"
                    )
        if self.is_topology_report:
            uuids = {g.uuid.lower() for g in self.gpus}
            for position, sample in enumerate(self.samples):
                if sample.gpu_uuid.lower() not in uuids:
                    raise ValueError(
                        f"samples.{position}.gpu_uuid: {sample.gpu_uuid} is not in gpus"
                    )
        if self.host is not None:
            numa_ids = {n.id for n in self.host.numa_nodes}
            for gpu in self.gpus:
                if numa_ids and gpu.numa_node is not None and gpu.numa_node not in numa_ids:
                    raise ValueError(
                        f"gpus.{gpu.index}.numa_node: {gpu.numa_node} is not in host.numa_nodes"
                    )
        return self

    @property
    def is_topology_report(self) -> bool:
        """True when this report carries the node's topology (``host`` is set)."""
        return self.host is not None

    def gpu_by_index(self, index: int) -> GpuInfo | None:
        """The GPU with NVML index ``index``, or None."""
        return next((g for g in self.gpus if g.index == index), None)

    def link_between(self, gpu_a: int, gpu_b: int) -> GpuLink | None:
        """The link entry for a pair in either order, or None when the report has none."""
        low, high = sorted((gpu_a, gpu_b))
        return next((lk for lk in self.links if (lk.gpu_a, lk.gpu_b) == (low, high)), None)

    def topology_fingerprint(self) -> str:
        """A SHA-256 over host, GPUs and links (not samples, not times).

        Equal fingerprints mean equal topology: the agent resends topology and the optimizer
        stores a new topology version only when this changes.
        """
        payload = self.model_dump_json(include={"host", "gpus", "links", "driver_version"})
        return hashlib.sha256(payload.encode()).hexdigest()


def _raise_on_duplicates(values: Iterable[Hashable], *, what: str) -> None:
    counts = Counter(values)
    duplicates = sorted(str(v) for v, n in counts.items() if n > 1)
    if duplicates:
        raise ValueError(f"duplicate {what}: {', '.join(duplicates)}")
