"""A fake of the ``pynvml`` module, driven by a device profile.

It replaces NVML only at the ``pynvml`` boundary: the same function names and signatures,
the same return shapes (objects with the attributes the ctypes structs have), and the real
``pynvml`` error classes, so the agent's NVML layer runs unchanged against it. Time is
injected: behaviour scripted "at t seconds" happens when the clock says so.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn

import pynvml

from agent.profile import Profile
from shared.ranges import parse_cpu_list
from shared.report import GpuArchitecture

_ARCH_TO_NVML: Final = {
    GpuArchitecture.KEPLER: pynvml.NVML_DEVICE_ARCH_KEPLER,
    GpuArchitecture.MAXWELL: pynvml.NVML_DEVICE_ARCH_MAXWELL,
    GpuArchitecture.PASCAL: pynvml.NVML_DEVICE_ARCH_PASCAL,
    GpuArchitecture.VOLTA: pynvml.NVML_DEVICE_ARCH_VOLTA,
    GpuArchitecture.TURING: pynvml.NVML_DEVICE_ARCH_TURING,
    GpuArchitecture.AMPERE: pynvml.NVML_DEVICE_ARCH_AMPERE,
    GpuArchitecture.ADA: pynvml.NVML_DEVICE_ARCH_ADA,
    GpuArchitecture.HOPPER: pynvml.NVML_DEVICE_ARCH_HOPPER,
    GpuArchitecture.BLACKWELL: pynvml.NVML_DEVICE_ARCH_BLACKWELL,
}
_XID_GPU_LOST: Final = 79
_XID_DOUBLE_BIT_ECC: Final = 48
_UUID_NAMESPACE: Final = uuid.UUID("0c8f6d1e-7a55-4c1b-9a7e-3f2d1b0a9c88")


def _error(code: int) -> NoReturn:
    raise pynvml.NVMLError(code)


@dataclass(frozen=True)
class _Handle:
    index: int


@dataclass(frozen=True)
class _MigHandle:
    parent: int
    slot: int


@dataclass
class _PciInfo:
    busId: str  # noqa: N815 - the ctypes struct's name
    bus: int = 0
    device: int = 0
    domain: int = 0


@dataclass
class _Utilization:
    gpu: int
    memory: int


@dataclass
class _Memory:
    total: int
    free: int
    used: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None  # noqa: N815


@dataclass
class _ProcessUtilization:
    pid: int
    timeStamp: int  # noqa: N815 - microseconds, as NVML's
    smUtil: int  # noqa: N815
    memUtil: int  # noqa: N815
    encUtil: int = 0  # noqa: N815
    decUtil: int = 0  # noqa: N815


@dataclass
class _GpmSupport:
    version: int
    isSupportedDevice: int  # noqa: N815


@dataclass
class _GpmSample:
    """What ``nvmlGpmSampleGet`` captured: which GPU, and when."""

    index: int = -1
    at_s: float = 0.0
    freed: bool = False


@dataclass
class _GpmMetric:
    metricId: int = 0  # noqa: N815
    nvmlReturn: int = pynvml.NVML_ERROR_NOT_SUPPORTED  # noqa: N815
    value: float = 0.0


class _GpmMetricsGet:
    """``pynvml.c_nvmlGpmMetricsGet_t`` with plain attributes (``metrics`` holds 477 slots,
    as the ctypes array does)."""

    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: _GpmSample | None = None
        self.sample2: _GpmSample | None = None
        self.metrics = [_GpmMetric() for _ in range(477)]


#: Scripted GPM ratios relative to SM activity (a fake's convention, not a measurement).
_GPM_SCALE: Final = {
    pynvml.NVML_GPM_METRIC_SM_UTIL: 1.0,
    pynvml.NVML_GPM_METRIC_SM_OCCUPANCY: 0.6,
    pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL: 0.5,
    pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL: 0.4,
}
_GPM_ARCHITECTURES: Final = frozenset({GpuArchitecture.HOPPER, GpuArchitecture.BLACKWELL})


@dataclass
class _EventData:
    device: _Handle
    eventType: int  # noqa: N815
    eventData: int  # noqa: N815
    gpuInstanceId: int = 0xFFFFFFFF  # noqa: N815
    computeInstanceId: int = 0xFFFFFFFF  # noqa: N815


@dataclass
class _EventSet:
    registered: set[int] = field(default_factory=set)
    delivered: set[int] = field(default_factory=set)  # indices into the profile's events


@dataclass
class _GpuState:
    energy_mj: float = 0.0
    last_t: float = 0.0
    ecc_uncorrected: int = 0
    lost: bool = False
    applied: set[int] = field(default_factory=set)  # profile event numbers already applied


class FakeNvml:
    """The ``pynvml`` functions the agent calls, answering from a :class:`Profile`.

    Args:
        profile: the machine to impersonate.
        clock: seconds since the fake machine "booted"; defaults to a monotonic clock
            started at construction. Scripted events fire once the clock reaches them.
        init_error: an NVML error code that ``nvmlInit`` raises (to test a broken driver).
        node_name: the node this fake machine is; its GPUs' UUIDs derive from it, so two fake
            nodes of one profile never report the same GPU.
    """

    NVMLError = pynvml.NVMLError
    c_nvmlGpmMetricsGet_t = _GpmMetricsGet  # noqa: N815 - pynvml's name

    def __init__(
        self,
        profile: Profile,
        *,
        clock: Callable[[], float] | None = None,
        init_error: int | None = None,
        node_name: str = "",
    ) -> None:
        self.profile = profile
        self.node_name = node_name
        start = time.monotonic()
        self._clock = clock or (lambda: time.monotonic() - start)
        self._init_error = init_error
        self._initialized = 0
        self._states = [_GpuState() for _ in profile.gpus]
        self._event_sets: list[_EventSet] = []

    # --- time and scripted behaviour -------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _advance(self, index: int) -> _GpuState:
        """Apply scripted events up to now and integrate energy for GPU ``index``."""
        now = self._now()
        state = self._states[index]
        for number, event in enumerate(self.profile.behaviour.events):
            if event.gpu == index and event.at_s <= now and number not in state.applied:
                state.applied.add(number)
                if event.kind == "lost":
                    state.lost = True
                elif event.kind == "ecc_uncorrected":
                    state.ecc_uncorrected += 1
        if now > state.last_t:
            state.energy_mj += self._power_mw(index, state.last_t) * (now - state.last_t)
            state.last_t = now
        return state

    def _util(self, index: int, t: float) -> float:
        pods = [p for p in self.profile.behaviour.pods if p.active_on(index)]
        curve = self.profile.behaviour.per_gpu_utilization.get(index)
        if curve is None:
            pod_curves = [p.utilization for p in pods if p.utilization is not None]
            curve = pod_curves[0] if pod_curves else self.profile.behaviour.utilization
        return curve.at(t)

    def _activity(self, index: int, t: float) -> float:
        """Real SM activity: the pods running there (capped at 1), else a fraction of the
        background utilisation."""
        pods = [p for p in self.profile.behaviour.pods if p.active_on(index)]
        if pods:
            return min(1.0, sum(p.activity_at(t) for p in pods))
        return 0.6 * self._util(index, t)

    def _power_mw(self, index: int, t: float) -> float:
        spec = self.profile.gpu
        watts = spec.idle_power_w + (spec.power_limit_w - spec.idle_power_w) * self._util(index, t)
        return watts * 1000.0

    def _live(self, handle: _Handle) -> _GpuState:
        self._check(handle)
        state = self._advance(handle.index)
        if state.lost:
            _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return state

    def _check(self, handle: Any) -> None:
        if not self._initialized:
            _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if not isinstance(handle, _Handle) or not 0 <= handle.index < len(self.profile.gpus):
            _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    # --- init and system -------------------------------------------------------------

    def nvmlInit(self) -> None:  # noqa: N802 - pynvml's names
        if self._init_error is not None:
            _error(self._init_error)
        self._initialized += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        if not self._initialized:
            _error(pynvml.NVML_ERROR_UNINITIALIZED)
        self._initialized -= 1

    def nvmlSystemGetDriverVersion(self) -> str:  # noqa: N802
        return self.profile.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:  # noqa: N802
        return self.profile.cuda_version

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        if not self._initialized:
            _error(pynvml.NVML_ERROR_UNINITIALIZED)
        return len(self.profile.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        handle = _Handle(index)
        self._check(handle)
        return handle

    # --- identity ----------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        return handle.index

    def uuid_of(self, index: int) -> str:
        """The UUID this fake reports for GPU ``index`` (stable per node, profile and bus id)."""
        seed = f"{self.profile.name}/{self.profile.gpus[index].pci_bus_id}"
        if self.node_name:
            seed = f"{self.node_name}/{seed}"
        return f"GPU-{uuid.uuid5(_UUID_NAMESPACE, seed)}"

    def nvmlDeviceGetUUID(self, handle: _Handle | _MigHandle) -> str:  # noqa: N802
        if isinstance(handle, _MigHandle):
            self._mig(handle)
            return (
                f"MIG-{uuid.uuid5(_UUID_NAMESPACE, f'{self.uuid_of(handle.parent)}/{handle.slot}')}"
            )
        self._live(handle)
        return self.uuid_of(handle.index)

    def nvmlDeviceGetName(self, handle: _Handle | _MigHandle) -> str:  # noqa: N802
        if isinstance(handle, _MigHandle):
            return f"{self.profile.gpu.product} MIG {self._mig(handle).profile}"
        self._live(handle)
        return self.profile.gpu.product

    def nvmlDeviceGetSerial(self, handle: _Handle) -> str:  # noqa: N802
        self._live(handle)
        return f"{1650000000000 + handle.index}"

    def nvmlDeviceGetArchitecture(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        arch = self.profile.gpu.architecture
        if arch not in _ARCH_TO_NVML:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(_ARCH_TO_NVML[arch])

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:  # noqa: N802
        self._live(handle)
        if self.profile.gpu.compute_capability is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        major, minor = self.profile.gpu.compute_capability.split(".")
        return int(major), int(minor)

    def nvmlDeviceGetMemoryInfo(  # noqa: N802
        self, handle: _Handle | _MigHandle, version: Any = None
    ) -> _Memory:
        if isinstance(handle, _MigHandle):
            total = int(self._mig(handle).memory_gib * 1024**3)
            return _Memory(total=total, free=total, used=0)
        self._live(handle)
        total = self.profile.memory_bytes
        used = min(self._memory_used(handle.index), total)
        return _Memory(total=total, free=total - used, used=used)

    def nvmlDeviceGetPciInfo(self, handle: _Handle) -> _PciInfo:  # noqa: N802
        self._live(handle)
        return _nvml_pci(self.profile.gpus[handle.index].pci_bus_id)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        return self._optional(self.profile.gpu.pcie_generation)

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        return self._optional(self.profile.gpu.pcie_width)

    def nvmlDeviceGetMigMode(self, handle: _Handle) -> list[int]:  # noqa: N802
        self._live(handle)
        if not self.profile.gpu.mig_capable:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        enabled = int(bool(self.profile.gpus[handle.index].mig_devices))
        return [enabled, enabled]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        if not self.profile.gpu.mig_capable:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: _Handle, slot: int) -> _MigHandle:  # noqa: N802
        self._live(handle)
        if slot >= len(self.profile.gpus[handle.index].mig_devices):
            _error(pynvml.NVML_ERROR_NOT_FOUND)  # an empty slot, as NVML answers
        return _MigHandle(handle.index, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: _MigHandle) -> int:  # noqa: N802
        self._mig(handle)
        return handle.slot + 1

    def nvmlDeviceGetComputeInstanceId(self, handle: _MigHandle) -> int:  # noqa: N802
        self._mig(handle)
        return 0

    def _mig(self, handle: _MigHandle) -> Any:
        self._live(_Handle(handle.parent))
        devices = self.profile.gpus[handle.parent].mig_devices
        if not isinstance(handle, _MigHandle) or handle.slot >= len(devices):
            _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return devices[handle.slot]

    def nvmlDeviceGetCpuAffinity(self, handle: _Handle, cpu_set_size: int) -> list[int]:  # noqa: N802
        self._live(handle)
        masks = [0] * cpu_set_size
        for cpu in parse_cpu_list(self.profile.gpus[handle.index].cpu_affinity):
            if cpu // 64 < cpu_set_size:
                masks[cpu // 64] |= 1 << (cpu % 64)
        return masks

    def nvmlDeviceGetGpuFabricInfoV(self, handle: _Handle, info: Any) -> int:  # noqa: N802
        self._live(handle)
        entry = self.profile.gpus[handle.index]
        if entry.cluster_uuid is None or entry.clique_id is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        for position, byte in enumerate(uuid.UUID(entry.cluster_uuid).bytes):
            info.clusterUuid[position] = byte  # the real ctypes struct: fill in place
        info.cliqueId = entry.clique_id
        info.state = pynvml.NVML_GPU_FABRIC_STATE_COMPLETED
        info.status = pynvml.NVML_SUCCESS
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        return int(self.profile.gpu.power_limit_w * 1000)

    # --- topology ---------------------------------------------------------------------

    def nvmlDeviceGetTopologyCommonAncestor(self, a: _Handle, b: _Handle) -> int:  # noqa: N802
        self._live(a)
        self._live(b)
        if a.index == b.index:
            return int(pynvml.NVML_TOPOLOGY_INTERNAL)
        level = self.profile.pcie_level(a.index, b.index)
        if level is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return level.rank * 10

    def _link_ends(self, index: int) -> list[tuple[str, int]]:
        """(remote bus id, remote device type) for each active NVLink of GPU ``index``."""
        switch_links = self.profile.gpu.nvswitch_links
        if switch_links is not None:
            return [
                (f"0000:{0xC0 + link % 4:02x}:00.0", pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH)
                for link in range(switch_links)
            ]
        ends = []
        for peer, entry in enumerate(self.profile.gpus):
            if peer != index:
                count = self.profile.nvlinks(index, peer)
                ends += [(entry.pci_bus_id, pynvml.NVML_NVLINK_DEVICE_TYPE_GPU)] * count
        return ends

    def _link(self, handle: _Handle, link: int) -> tuple[str, int] | None:
        self._live(handle)
        if self.profile.gpu.nvlink_version is None and not self._link_ends(handle.index):
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < pynvml.NVML_NVLINK_MAX_LINKS:
            _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        ends = self._link_ends(handle.index)
        return ends[link] if link < len(ends) else None

    def nvmlDeviceGetNvLinkState(self, handle: _Handle, link: int) -> int:  # noqa: N802
        return pynvml.NVML_FEATURE_ENABLED if self._link(handle, link) else 0

    def nvmlDeviceGetNvLinkVersion(self, handle: _Handle, link: int) -> int:  # noqa: N802
        if self._link(handle, link) is None or self.profile.gpu.nvlink_version is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.profile.gpu.nvlink_version

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: _Handle, link: int) -> _PciInfo:  # noqa: N802
        end = self._link(handle, link)
        if end is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _nvml_pci(end[0])

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: _Handle, link: int) -> int:  # noqa: N802
        end = self._link(handle, link)
        if end is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return end[1]

    # --- live readings ----------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:  # noqa: N802
        self._live(handle)
        if self.profile.gpus[handle.index].mig_devices:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)  # not reported for MIG-enabled GPUs
        util = self._util(handle.index, self._now())
        return _Utilization(gpu=round(util * 100), memory=round(util * 60))

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        return round(self._power_mw(handle.index, self._now()))

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:  # noqa: N802
        return round(self._live(handle).energy_mj)

    def nvmlDeviceGetTemperatureV(self, handle: _Handle, sensor: int, version: Any = None) -> int:  # noqa: N802
        self._live(handle)
        return round(30 + 50 * self._util(handle.index, self._now()))

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:  # noqa: N802
        self._live(handle)
        util = self._util(handle.index, self._now())
        return 210 if util == 0 else round(self.profile.gpu.max_sm_clock_mhz * (0.7 + 0.3 * util))

    def nvmlDeviceGetTotalEccErrors(self, handle: _Handle, error_type: int, counter: int) -> int:  # noqa: N802
        state = self._live(handle)
        if not self.profile.gpu.ecc:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if error_type == pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            return state.ecc_uncorrected
        return 0

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:  # noqa: N802
        self._live(handle)
        util = self._util(handle.index, self._now())
        if util == 0:
            return int(pynvml.nvmlClocksEventReasonGpuIdle)
        return int(pynvml.nvmlClocksEventReasonSwPowerCap) if util > 0.9 else 0

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[_Process]:  # noqa: N802
        self._live(handle)
        return [
            _Process(pid=pod.pid, usedGpuMemory=self._pod_memory(pod, handle.index))
            for pod in self.profile.behaviour.pods
            if handle.index in pod.gpus
        ]

    def _pod_memory(self, pod: Any, index: int) -> int:
        """A pod's memory on one GPU: its working set, or a context where it sits idle."""
        return int(pod.memory_gib * 1024**3) if pod.active_on(index) else 500 * 1024**2

    def _memory_used(self, index: int) -> int:
        pods = [p for p in self.profile.behaviour.pods if index in p.gpus]
        return 512 * 1024**2 + sum(self._pod_memory(p, index) for p in pods)

    # --- activity: per-process utilisation and GPM ------------------------------------

    def nvmlDeviceGetProcessUtilization(  # noqa: N802
        self, handle: _Handle, timestamp: int
    ) -> list[_ProcessUtilization]:
        self._live(handle)
        if self.profile.gpus[handle.index].mig_devices:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        now = self._now()
        now_us = int(now * 1e6)
        pods = [p for p in self.profile.behaviour.pods if handle.index in p.gpus]
        if not pods or now_us <= timestamp:
            _error(pynvml.NVML_ERROR_NOT_FOUND)  # no sample newer than the timestamp
        return [
            _ProcessUtilization(
                pid=p.pid,
                timeStamp=now_us,
                smUtil=round(100 * p.activity_at(now)) if p.active_on(handle.index) else 0,
                memUtil=round(40 * p.activity_at(now)) if p.active_on(handle.index) else 0,
            )
            for p in pods
        ]

    def nvmlGpmQueryDeviceSupport(self, handle: _Handle) -> _GpmSupport:  # noqa: N802
        self._check(handle)
        supported = (
            self.profile.gpu.architecture in _GPM_ARCHITECTURES
            and not self.profile.gpus[handle.index].mig_devices
        )
        return _GpmSupport(
            version=pynvml.NVML_GPM_SUPPORT_VERSION, isSupportedDevice=int(supported)
        )

    def nvmlGpmSampleAlloc(self) -> _GpmSample:  # noqa: N802
        return _GpmSample()

    def nvmlGpmSampleFree(self, sample: _GpmSample) -> None:  # noqa: N802
        if not isinstance(sample, _GpmSample) or sample.freed:
            _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        sample.freed = True

    def nvmlGpmSampleGet(self, handle: _Handle, sample: _GpmSample) -> _GpmSample:  # noqa: N802
        self._live(handle)
        if not self.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        sample.index, sample.at_s = handle.index, self._now()
        return sample

    def nvmlGpmMetricsGet(self, request: _GpmMetricsGet) -> _GpmMetricsGet:  # noqa: N802
        first, second = request.sample1, request.sample2
        if (
            request.version != pynvml.NVML_GPM_METRICS_GET_VERSION
            or first is None
            or second is None
            or first.freed
            or second.freed
            or first.index != second.index
            or first.index < 0
        ):
            _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        activity = self._activity(second.index, second.at_s)
        for metric in request.metrics[: request.numMetrics]:
            scale = _GPM_SCALE.get(metric.metricId)
            if scale is None:
                metric.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            metric.nvmlReturn = pynvml.NVML_SUCCESS
            metric.value = 100.0 * scale * activity
        return request

    # --- events -----------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> _EventSet:  # noqa: N802
        event_set = _EventSet()
        self._event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: _Handle, types: int, event_set: _EventSet) -> None:  # noqa: N802
        self._check(handle)
        if types & pynvml.nvmlEventTypeXidCriticalError:
            event_set.registered.add(handle.index)

    def nvmlEventSetWait(self, event_set: _EventSet, timeout_ms: int) -> _EventData:  # noqa: N802
        now = self._now()
        for number, event in enumerate(self.profile.behaviour.events):
            if number in event_set.delivered or event.at_s > now:
                continue
            if event.gpu not in event_set.registered:
                continue
            event_set.delivered.add(number)
            xid = {"lost": _XID_GPU_LOST, "ecc_uncorrected": _XID_DOUBLE_BIT_ECC}.get(
                event.kind, event.xid or 0
            )
            return _EventData(
                device=_Handle(event.gpu),
                eventType=pynvml.nvmlEventTypeXidCriticalError,
                eventData=xid,
            )
        _error(pynvml.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: _EventSet) -> None:  # noqa: N802
        if event_set in self._event_sets:
            self._event_sets.remove(event_set)

    @staticmethod
    def _optional(value: int | None) -> int:
        if value is None:
            _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return value


def _nvml_pci(bus_id: str) -> _PciInfo:
    """sysfs ``0000:3b:00.0`` to NVML's ``00000000:3B:00.0``."""
    domain, bus, rest = bus_id.split(":")
    device = rest.split(".")[0]
    return _PciInfo(
        busId=f"{int(domain, 16):08X}:{bus.upper()}:{device.upper()}.0",
        bus=int(bus, 16),
        device=int(device, 16),
        domain=int(domain, 16),
    )
