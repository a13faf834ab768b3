"""One GPU as the agent sees it: cached static facts and a batch of live readings.

:class:`GpuDevice` reads identity, memory, PCIe, NUMA/CPU affinity, MIG and fabric facts once
(they only change with hardware or driver state) and samples utilisation, memory, power,
energy, temperature, clocks, ECC, throttle reasons and processes on every cycle. Every
optional reading may be None; a lost GPU keeps its last known facts with health ``lost``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pynvml

from agent.gpm import GPM_METRICS, ActivityReader
from agent.host import gpu_numa_node
from agent.nvml import GpuLostError, Nvml
from shared.report import (
    EccCounts,
    GpuArchitecture,
    GpuHealth,
    GpuInfo,
    GpuProcess,
    GpuSample,
    MigInstance,
    normalize_pci_bus_id,
)
from shared.units import (
    megahertz_to_hertz,
    millijoules_to_joules,
    milliwatts_to_watts,
    percent_to_ratio,
)

_NVML_ARCH: Final = {
    pynvml.NVML_DEVICE_ARCH_KEPLER: GpuArchitecture.KEPLER,
    pynvml.NVML_DEVICE_ARCH_MAXWELL: GpuArchitecture.MAXWELL,
    pynvml.NVML_DEVICE_ARCH_PASCAL: GpuArchitecture.PASCAL,
    pynvml.NVML_DEVICE_ARCH_VOLTA: GpuArchitecture.VOLTA,
    pynvml.NVML_DEVICE_ARCH_TURING: GpuArchitecture.TURING,
    pynvml.NVML_DEVICE_ARCH_AMPERE: GpuArchitecture.AMPERE,
    pynvml.NVML_DEVICE_ARCH_ADA: GpuArchitecture.ADA,
    pynvml.NVML_DEVICE_ARCH_HOPPER: GpuArchitecture.HOPPER,
    pynvml.NVML_DEVICE_ARCH_BLACKWELL: GpuArchitecture.BLACKWELL,
}
THROTTLE_REASONS: Final = {
    pynvml.nvmlClocksEventReasonGpuIdle: "gpu_idle",
    pynvml.nvmlClocksEventReasonApplicationsClocksSetting: "applications_clocks_setting",
    pynvml.nvmlClocksEventReasonSwPowerCap: "sw_power_cap",
    pynvml.nvmlClocksEventReasonHwSlowdown: "hw_slowdown",
    pynvml.nvmlClocksEventReasonSyncBoost: "sync_boost",
    pynvml.nvmlClocksEventReasonSwThermalSlowdown: "sw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwThermalSlowdown: "hw_thermal_slowdown",
    pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown: "hw_power_brake_slowdown",
    pynvml.nvmlClocksEventReasonDisplayClockSetting: "display_clock_setting",
}
#: XIDs that mean the GPU needs attention (double-bit ECC, row-remap failure, contained and
#: uncontained ECC, fallen off the bus): the GPU is reported ``degraded`` (or ``lost``).
CRITICAL_XIDS: Final = frozenset({48, 63, 64, 74, 79, 92, 94, 95})
XID_GPU_LOST: Final = 79


@dataclass(frozen=True)
class LinkEnd:
    """The far end of one active NVLink."""

    remote_bus_id: str  # sysfs form
    remote_is_switch: bool
    version: int | None


@dataclass
class GpuDevice:
    """One GPU: cached static facts, live samples, health."""

    nvml: Nvml
    handle: Any
    index: int
    root: Path
    cpu_set_size: int
    lost: bool = False
    xid_total: int = 0
    last_xid: int | None = None
    critical_xid_seen: bool = False
    _info: GpuInfo | None = field(default=None, repr=False)
    _links: tuple[LinkEnd, ...] | None = field(default=None, repr=False)
    _ecc_uncorrected: int = 0
    _activity: ActivityReader | None = field(default=None, repr=False)

    def info(self) -> GpuInfo:
        """Static facts, read once; health is current.

        Raises:
            GpuLostError: the GPU was lost before its facts could be read even once.
        """
        if self._info is None:
            try:
                self._info = self._read_info()
            except GpuLostError:
                self.lost = True
                raise
        return self._info.model_copy(update={"health": self.health})

    @property
    def health(self) -> GpuHealth:
        """``lost`` after GpuIsLost or XID 79; ``degraded`` after uncorrected ECC errors or a
        critical XID; ``ok`` otherwise."""
        if self.lost:
            return GpuHealth.LOST
        if self.critical_xid_seen or self._ecc_uncorrected > 0:
            return GpuHealth.DEGRADED
        return GpuHealth.OK

    def record_xid(self, xid: int) -> None:
        """Count an XID event for this GPU (from the collector's event set)."""
        self.xid_total += 1
        self.last_xid = xid
        if xid in CRITICAL_XIDS:
            self.critical_xid_seen = True
        if xid == XID_GPU_LOST:
            self.lost = True

    def _read_info(self) -> GpuInfo:
        n, h = self.nvml, self.handle
        bus_id = normalize_pci_bus_id(n.call("nvmlDeviceGetPciInfo", h).busId)
        arch = n.optional("nvmlDeviceGetArchitecture", h)
        cc = n.optional("nvmlDeviceGetCudaComputeCapability", h)
        power_limit = n.optional("nvmlDeviceGetEnforcedPowerLimit", h)
        mig = n.optional("nvmlDeviceGetMigMode", h)
        mig_enabled = bool(mig and mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE)
        cluster_uuid, clique_id = self._fabric()
        return GpuInfo(
            index=self.index,
            uuid=n.call("nvmlDeviceGetUUID", h),
            product=n.call("nvmlDeviceGetName", h),
            architecture=_NVML_ARCH.get(arch, GpuArchitecture.UNKNOWN)
            if arch is not None
            else None,
            compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
            serial=n.optional("nvmlDeviceGetSerial", h) or None,
            memory_bytes=int(n.call("nvmlDeviceGetMemoryInfo", h).total),
            pci_bus_id=bus_id,
            pcie_generation=n.optional("nvmlDeviceGetCurrPcieLinkGeneration", h),
            pcie_width=n.optional("nvmlDeviceGetCurrPcieLinkWidth", h),
            numa_node=gpu_numa_node(self.root, bus_id),
            cpu_affinity=self._cpu_affinity(),
            power_limit_w=milliwatts_to_watts(power_limit) if power_limit is not None else None,
            mig_enabled=mig_enabled,
            mig_instances=self._mig_instances() if mig_enabled else [],
            cluster_uuid=cluster_uuid,
            clique_id=clique_id,
        )

    def _cpu_affinity(self) -> list[int]:
        masks = self.nvml.optional("nvmlDeviceGetCpuAffinity", self.handle, self.cpu_set_size)
        if masks is None:
            return []
        return [
            word * 64 + bit
            for word, mask in enumerate(masks)
            for bit in range(64)
            if int(mask) >> bit & 1
        ]

    def _fabric(self) -> tuple[str | None, int | None]:
        struct_type = getattr(pynvml, "c_nvmlGpuFabricInfoV_t", None)
        if struct_type is None:
            return None, None
        info = struct_type()
        info.version = pynvml.nvmlGpuFabricInfo_v2
        if self.nvml.optional("nvmlDeviceGetGpuFabricInfoV", self.handle, info) is None:
            return None, None
        if info.state != pynvml.NVML_GPU_FABRIC_STATE_COMPLETED:
            return None, None
        cluster = bytes(info.clusterUuid)
        if not any(cluster):
            return None, None
        return str(uuid.UUID(bytes=cluster)), int(info.cliqueId)

    def _mig_instances(self) -> list[MigInstance]:
        n = self.nvml
        count = n.optional("nvmlDeviceGetMaxMigDeviceCount", self.handle) or 0
        instances = []
        for slot in range(count):
            mig = n.optional("nvmlDeviceGetMigDeviceHandleByIndex", self.handle, slot)
            if mig is None:
                continue  # empty slot
            memory = n.optional("nvmlDeviceGetMemoryInfo", mig)
            name = n.optional("nvmlDeviceGetName", mig) or "unknown"
            instances.append(
                MigInstance(
                    uuid=n.call("nvmlDeviceGetUUID", mig),
                    profile=name.rsplit(" ", 1)[-1],
                    memory_bytes=int(memory.total) if memory is not None else 0,
                    gpu_instance_id=n.optional("nvmlDeviceGetGpuInstanceId", mig),
                    compute_instance_id=n.optional("nvmlDeviceGetComputeInstanceId", mig),
                )
            )
        return instances

    def link_ends(self) -> tuple[LinkEnd, ...]:
        """Active NVLinks and what is at their far end; empty without NVLink. Cached."""
        if self._links is None:
            ends = []
            for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
                state = self.nvml.optional("nvmlDeviceGetNvLinkState", self.handle, link)
                if state is None:
                    if link == 0:
                        break  # no NVLink on this GPU
                    continue
                if state != pynvml.NVML_FEATURE_ENABLED:
                    continue
                remote = self.nvml.optional("nvmlDeviceGetNvLinkRemotePciInfo", self.handle, link)
                kind = self.nvml.optional("nvmlDeviceGetNvLinkRemoteDeviceType", self.handle, link)
                if remote is None:
                    continue
                ends.append(
                    LinkEnd(
                        remote_bus_id=normalize_pci_bus_id(remote.busId),
                        remote_is_switch=kind == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH,
                        version=self.nvml.optional("nvmlDeviceGetNvLinkVersion", self.handle, link),
                    )
                )
            self._links = tuple(ends)
        return self._links

    def sample(self, external: Mapping[str, float | int] | None = None) -> GpuSample | None:
        """Live readings now; None when the GPU's facts were never readable.

        ``external`` holds readings already taken elsewhere this cycle (a dcgm-exporter's,
        in sample-field names): NVML is not asked for those again.
        """
        if self._info is None:
            return None
        if self.lost:
            return self._bare_sample()
        try:
            return self._read_sample(self._info.uuid, external or {})
        except GpuLostError:
            self.lost = True
            return self._bare_sample()

    def _bare_sample(self) -> GpuSample:
        assert self._info is not None
        return GpuSample(gpu_uuid=self._info.uuid, xid_total=self.xid_total, last_xid=self.last_xid)

    def _read_sample(self, gpu_uuid: str, got: Mapping[str, float | int]) -> GpuSample:
        n, h = self.nvml, self.handle

        def missing(*fields: str) -> bool:
            """Whether NVML must be asked: ``got`` lacks one of ``fields``."""
            return not all(f in got for f in fields)

        both = ("util_ratio", "memory_bandwidth_util_ratio")
        util = n.optional("nvmlDeviceGetUtilizationRates", h) if missing(*both) else None
        memory = n.optional("nvmlDeviceGetMemoryInfo", h) if missing("memory_used_bytes") else None
        power = n.optional("nvmlDeviceGetPowerUsage", h) if missing("power_w") else None
        energy = (
            n.optional("nvmlDeviceGetTotalEnergyConsumption", h) if missing("energy_j") else None
        )
        temperature = (
            n.optional("nvmlDeviceGetTemperatureV", h, pynvml.NVML_TEMPERATURE_GPU)
            if missing("temperature_c")
            else None
        )
        clock = (
            n.optional("nvmlDeviceGetClockInfo", h, pynvml.NVML_CLOCK_SM)
            if missing("sm_clock_hz")
            else None
        )
        reasons = n.optional("nvmlDeviceGetCurrentClocksEventReasons", h)
        ecc = self._ecc()
        processes = n.optional("nvmlDeviceGetComputeRunningProcesses", h) or []
        if self._activity is None:
            self._activity = ActivityReader(n, h)
        # DCGM's profiling ratios replace GPM's (both would compete for the same counters).
        activity = self._activity.read(gpm=not GPM_METRICS.keys() & got.keys())
        readings: dict[str, Any] = {
            "util_ratio": percent_to_ratio(util.gpu) if util is not None else None,
            "memory_bandwidth_util_ratio": percent_to_ratio(util.memory)
            if util is not None
            else None,
            **activity.gpm,
            "memory_used_bytes": int(memory.used) if memory is not None else None,
            "power_w": milliwatts_to_watts(power) if power is not None else None,
            "energy_j": millijoules_to_joules(energy) if energy is not None else None,
            "temperature_c": float(temperature) if temperature is not None else None,
            "sm_clock_hz": megahertz_to_hertz(clock) if clock is not None else None,
        }
        readings.update(got)
        return GpuSample(
            gpu_uuid=gpu_uuid,
            **readings,
            ecc=ecc,
            xid_total=self.xid_total,
            last_xid=self.last_xid,
            throttle_reasons=[
                name for bit, name in THROTTLE_REASONS.items() if reasons and reasons & bit
            ],
            processes=[
                GpuProcess(
                    pid=p.pid,
                    memory_used_bytes=int(p.usedGpuMemory) if p.usedGpuMemory is not None else None,
                    sm_util_ratio=activity.process_sm.get(p.pid),
                )
                for p in processes
                if p.pid > 0
            ],
        )

    def _ecc(self) -> EccCounts | None:
        kinds = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
        counts = [
            self.nvml.optional(
                "nvmlDeviceGetTotalEccErrors", self.handle, kind, pynvml.NVML_VOLATILE_ECC
            )
            for kind in kinds
        ]
        if counts[0] is None and counts[1] is None:
            return None
        self._ecc_uncorrected = int(counts[1] or 0)
        return EccCounts(corrected_total=int(counts[0] or 0), uncorrected_total=int(counts[1] or 0))


def cpu_set_size(logical_cpus: int) -> int:
    """Number of 64-bit words NVML needs for a CPU mask of ``logical_cpus`` CPUs."""
    return max(math.ceil(logical_cpus / 64), 1)
