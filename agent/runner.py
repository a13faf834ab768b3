"""The agent's main loop: collect, export, report - every interval, until stopped.

Collection failures of one GPU never stop the loop (the collector reports it lost); an
unreachable optimizer never stops it either (the reporter buffers); the exporter keeps
serving the latest collection throughout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import start_http_server

from agent.cgroups import CGROUP_ROOT, ContainerMeter
from agent.collector import Collection, Collector
from agent.dcgm import DcgmExporter
from agent.exporter import build_registry
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.reporter import Reporter
from agent.settings import AgentSettings

log = structlog.get_logger(__name__)


class AgentRunner:
    """Wires collector, exporter and reporter from settings.

    Args:
        settings: the agent's settings.
        nvml: the NVML chokepoint (real or fake binding).
        root: the host root for sysfs/procfs.
        podresources_socket: the kubelet socket to read pod assignments from.
        report: False disables reporting even when an optimizer URL is set.
        clock: monotonic seconds, injectable.
        before_cycle: called at the start of each cycle (a fake machine brings its host
            files to now).
    """

    def __init__(
        self,
        *,
        settings: AgentSettings,
        nvml: Nvml,
        root: Path,
        podresources_socket: Path,
        report: bool = True,
        clock: Callable[[], float] = time.monotonic,
        before_cycle: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.before_cycle = before_cycle
        self.attributor = PodAttributor(
            socket_path=podresources_socket,
            proc_root=root / "proc",
            refresh_s=settings.podresources_refresh_s,
            clock=clock,
        )
        self.collector = Collector(
            nvml=nvml,
            root=root,
            node_name=settings.node_name,
            attributor=self.attributor,
            meter=ContainerMeter(
                proc_root=root / "proc", cgroup_root=root / CGROUP_ROOT, clock=clock
            ),
            dcgm=DcgmExporter(str(settings.dcgm_exporter_url))
            if settings.dcgm_exporter_url is not None
            else None,
        )
        self.registry, self.metrics = build_registry(lambda: self.collector.latest)
        self.reporter: Reporter | None = None
        if report and settings.optimizer_url is not None:
            self.reporter = Reporter(
                url=str(settings.optimizer_url),
                token_file=settings.token_file,
                metrics=self.metrics,
                buffer_size=settings.buffer_reports,
                ca_file=settings.ca_file,
                clock=clock,
            )
        self._server: Any = None

    def start(self) -> None:
        """Discover the node and start the exporter (raises NvmlUnavailableError)."""
        self.collector.start()
        if self.settings.metrics_port:
            self._server, _ = start_http_server(
                self.settings.metrics_port, addr=self.settings.metrics_host, registry=self.registry
            )
            log.info("exporter_listening", port=self.settings.metrics_port)

    def cycle(self) -> Collection:
        """One collection, exported and (if configured) reported."""
        self.before_cycle()
        self.attributor.refresh()
        collection = self.collector.collect()
        self.metrics.collect_duration.observe(collection.duration_s)
        if self.reporter is not None:
            self.reporter.submit(collection.report)
            self.reporter.flush()
        return collection

    def run(self, *, stop: threading.Event, cycles: int | None = None) -> None:
        """Cycle every ``interval_s`` until ``stop`` is set (or ``cycles`` cycles ran)."""
        done = 0
        while not stop.is_set():
            started = self.clock()
            try:
                self.cycle()
            except Exception:  # the DaemonSet must never die of one bad cycle
                log.exception("cycle_failed", node=self.settings.node_name)
            done += 1
            if cycles is not None and done >= cycles:
                break
            stop.wait(max(self.settings.interval_s - (self.clock() - started), 0.0))

    def close(self) -> None:
        """Stop serving, flush what can be sent, release NVML."""
        if self.reporter is not None:
            self.reporter.flush()
            self.reporter.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.collector.close()
