"""One collection cycle: NVML (or, for live readings, a dcgm-exporter) + host facts + pod
attribution (+ the CPU and memory of the containers running GPU processes) -> a
:class:`NodeReport`.

:class:`Collector` discovers the node once (devices, host, NVLink wiring), then each call to
:meth:`Collector.collect` drains XID events, samples every GPU, attributes processes to pods
and returns a topology report with samples. It never raises for one GPU's failure: a GPU
that falls off the bus is reported ``lost`` and the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol

import pynvml
import structlog

from agent.cgroups import ContainerMeter
from agent.dcgm import DcgmExporter
from agent.device import GpuDevice, cpu_set_size
from agent.host import host_info
from agent.links import derive_links
from agent.nvml import GpuLostError, Nvml
from shared.report import GpuInfo, GpuLink, GpuProcess, GpuSample, HostInfo, NodeReport
from shared.version import __version__

log = structlog.get_logger(__name__)

MAX_EVENTS_PER_CYCLE: Final = 256


class Attributor(Protocol):
    """Maps GPU processes to pods (see :mod:`agent.pods`)."""

    def refresh(self) -> None:
        """Re-read the pod-to-device assignment (called on its own slower cadence)."""

    def attribute(self, *, gpu_uuid: str, process: GpuProcess) -> GpuProcess:
        """``process`` with its pod fields filled where known."""


@dataclass(frozen=True)
class Collection:
    """The result of one cycle and how long it took."""

    report: NodeReport
    duration_s: float


class Collector:
    """Reads one node through NVML and the host filesystem.

    Args:
        nvml: the NVML chokepoint (real or fake binding).
        root: where sysfs/procfs live (``/`` on a node).
        node_name: the Kubernetes node name to report as.
        attributor: maps processes to pods; None reports processes unattributed.
        meter: reads the CPU and memory of the containers running GPU processes; None
            reports none.
        dcgm: a dcgm-exporter on the node to take live readings from instead of NVML (see
            :mod:`agent.dcgm`); None reads everything through NVML.
        wall_clock: current time, injectable for tests.
    """

    def __init__(
        self,
        *,
        nvml: Nvml,
        root: Path,
        node_name: str,
        attributor: Attributor | None = None,
        meter: ContainerMeter | None = None,
        dcgm: DcgmExporter | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.nvml = nvml
        self.root = root
        self.node_name = node_name
        self.attributor = attributor
        self.meter = meter
        self.dcgm = dcgm
        self.wall_clock = wall_clock
        self.devices: list[GpuDevice] = []
        self.host: HostInfo | None = None
        self.driver_version: str | None = None
        self.cuda_version: str | None = None
        self._links: list[GpuLink] | None = None
        self._links_lost: frozenset[int] = frozenset()  # lost GPUs when links were derived
        self._event_set: Any = None
        self._sequence = 0
        self._lost_logged: set[int] = set()  # GPUs lost before discovery, logged once each
        self.latest: Collection | None = None

    def start(self) -> None:
        """Initialise NVML and discover the node (raises NvmlUnavailableError without one)."""
        self.nvml.init()
        self.host = host_info(self.root)
        self.driver_version = self.nvml.optional("nvmlSystemGetDriverVersion")
        cuda = self.nvml.optional("nvmlSystemGetCudaDriverVersion")
        self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        highest_cpu = max((c for n in self.host.numa_nodes for c in n.cpus), default=0)
        words = cpu_set_size(max(self.host.logical_cpus, highest_cpu + 1))
        count = int(self.nvml.call("nvmlDeviceGetCount"))
        for index in range(count):
            try:
                handle = self.nvml.call("nvmlDeviceGetHandleByIndex", index)
            except (GpuLostError, pynvml.NVMLError) as error:
                log.warning("gpu_unreachable_at_start", gpu=index, error=str(error))
                continue
            self.devices.append(
                GpuDevice(
                    nvml=self.nvml, handle=handle, index=index, root=self.root, cpu_set_size=words
                )
            )
        self._event_set = self._register_events()
        log.info(
            "node_discovered",
            node=self.node_name,
            gpus=len(self.devices),
            driver=self.driver_version,
        )

    def close(self) -> None:
        """Free the event set, close the dcgm-exporter client and shut NVML down."""
        if self._event_set is not None:
            self.nvml.optional("nvmlEventSetFree", self._event_set)
            self._event_set = None
        if self.dcgm is not None:
            self.dcgm.close()
        self.nvml.shutdown()

    def collect(self) -> Collection:
        """One cycle: events, static facts (cached), samples, attribution -> a report."""
        started = time.perf_counter()
        self._drain_events()
        infos = self._infos()
        lost = frozenset(d.index for d in self.devices if d.lost)
        if self._links is None or lost != self._links_lost:  # derive again only on a change
            known = [device for device, _ in self._pairs(infos)]
            self._links = derive_links(nvml=self.nvml, devices=known, infos=infos)
            self._links_lost = lost
        external = self.dcgm.read() if self.dcgm is not None else {}
        samples = [
            s
            for s in (self._sample(d, external.get(i.uuid)) for d, i in self._pairs(infos))
            if s is not None
        ]
        containers = []
        if self.meter is not None:
            containers = self.meter.measure(p for s in samples for p in s.processes)
        self._sequence += 1
        report = NodeReport(
            node_name=self.node_name,
            agent_version=__version__,
            sequence=self._sequence,
            collected_at=self.wall_clock(),
            driver_version=self.driver_version,
            cuda_version=self.cuda_version,
            host=self.host,
            gpus=infos,
            links=self._links,
            samples=samples,
            containers=containers,
        )
        collection = Collection(report=report, duration_s=time.perf_counter() - started)
        self.latest = collection
        return collection

    def _infos(self) -> list[GpuInfo]:
        infos = []
        for device in self.devices:
            try:
                infos.append(device.info())
            except GpuLostError:
                if device.index not in self._lost_logged:
                    self._lost_logged.add(device.index)
                    log.warning("gpu_lost_before_discovery", node=self.node_name, gpu=device.index)
        return infos

    def _pairs(self, infos: list[GpuInfo]) -> list[tuple[GpuDevice, GpuInfo]]:
        by_index = {info.index: info for info in infos}
        return [(d, by_index[d.index]) for d in self.devices if d.index in by_index]

    def _sample(
        self, device: GpuDevice, external: dict[str, float | int] | None
    ) -> GpuSample | None:
        was_lost = device.lost
        sample = device.sample(external)
        if device.lost and not was_lost:
            log.error("gpu_lost", node=self.node_name, gpu=device.index)
        if sample is None or self.attributor is None or not sample.processes:
            return sample
        attributed = [
            self.attributor.attribute(gpu_uuid=sample.gpu_uuid, process=p) for p in sample.processes
        ]
        return sample.model_copy(update={"processes": attributed})

    def _register_events(self) -> Any:
        event_set = self.nvml.optional("nvmlEventSetCreate")
        if event_set is None:
            return None
        for device in self.devices:
            try:
                self.nvml.optional(
                    "nvmlDeviceRegisterEvents",
                    device.handle,
                    pynvml.nvmlEventTypeXidCriticalError,
                    event_set,
                )
            except GpuLostError:
                device.lost = True
        return event_set

    def _drain_events(self) -> None:
        if self._event_set is None:
            return
        for _ in range(MAX_EVENTS_PER_CYCLE):
            try:
                event = self.nvml.call("nvmlEventSetWait", self._event_set, 0)
            except pynvml.NVMLError_Timeout:
                return
            except (pynvml.NVMLError, GpuLostError) as error:
                log.warning("xid_event_wait_failed", error=str(error))
                return
            device = self._device_for(event.device)
            if device is None:
                continue
            device.record_xid(int(event.eventData))
            log.warning("xid", node=self.node_name, gpu=device.index, xid=int(event.eventData))

    def _device_for(self, handle: Any) -> GpuDevice | None:
        try:
            index = self.nvml.optional("nvmlDeviceGetIndex", handle)
        except GpuLostError:
            index = None
        for device in self.devices:
            if device.index == index or device.handle == handle:
                return device
        return None
