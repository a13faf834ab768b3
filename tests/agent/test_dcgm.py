"""Live readings from a dcgm-exporter on the node instead of a second NVML poll: the values
come from the exporter's /metrics (a real HTTP server here), NVML is not asked for them, and
whatever the exporter lacks, refuses or cannot serve is read through NVML."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.dcgm import DcgmExporter, parse
from agent.fake.nvml import FakeNvml
from agent.profile import load_profile
from agent.settings import AgentSettings
from shared.report import GpuSample, NodeReport
from tests.agent.helpers import ManualClock, fake_collector

LIVE_CALLS = {
    "nvmlDeviceGetUtilizationRates",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetTemperatureV",
    "nvmlDeviceGetClockInfo",
    "nvmlGpmSampleGet",
}


class Counting:
    """The fake binding, counting the calls made per function and GPU handle."""

    def __init__(self, fake: FakeNvml) -> None:
        self._fake = fake
        self.calls: Counter[tuple[str, int | None]] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._fake, name)
        if not callable(target) or not name.startswith("nvml"):
            return target

        def counted(*args: Any) -> Any:
            handle = args[0] if args else None
            index = getattr(handle, "index", None)
            self.calls[(name, index if isinstance(index, int) else None)] += 1
            return target(*args)

        return counted


class Exporter:
    """A stand-in dcgm-exporter: serves ``body`` on /metrics, or ``status``."""

    def __init__(self) -> None:
        self.body = ""
        self.status = 200
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                payload = exporter.body.encode()
                self.send_response(exporter.status)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    served = Exporter()
    yield served
    served.close()


def exposition(uuids: list[str], *, util: float = 37.0, extra: str = "") -> str:
    """dcgm-exporter's text, as version 3.x writes it with its Kubernetes mapping on."""
    lines = []
    fields = {
        "DCGM_FI_DEV_GPU_UTIL": ("GPU utilization (in %).", util),
        "DCGM_FI_DEV_MEM_COPY_UTIL": ("Memory utilization (in %).", 12),
        "DCGM_FI_DEV_FB_USED": ("Framebuffer memory used (in MiB).", 2048),
        "DCGM_FI_DEV_POWER_USAGE": ("Power draw (in W).", 321.5),
        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": (
            "Total energy consumption since boot (in mJ).",
            7.5e9,
        ),
        "DCGM_FI_DEV_GPU_TEMP": ("GPU temperature (in C).", 61),
        "DCGM_FI_DEV_SM_CLOCK": ("SM clock frequency (in MHz).", 1755),
        "DCGM_FI_PROF_SM_ACTIVE": ("The ratio of cycles an SM has at least 1 warp assigned.", 0.25),
        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("Ratio of cycles the tensor pipe is active.", 0.125),
        "DCGM_FI_DEV_XID_ERRORS": ("Value of the last XID error encountered.", 0),
    }
    for name, (help_text, value) in fields.items():
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        for gpu, uuid in enumerate(uuids):
            labels = (
                f'gpu="{gpu}",UUID="{uuid}",pci_bus_id="00000000:1{gpu}:00.0",'
                f'device="nvidia{gpu}",modelName="NVIDIA H100 80GB HBM3",Hostname="node-a",'
                'DCGM_FI_DRIVER_VERSION="550.54.15",container="train",namespace="ml",pod="p-0"'
            )
            lines.append(f"{name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n" + extra


def _by_index(report: NodeReport) -> dict[int, GpuSample]:
    index = {g.uuid: g.index for g in report.gpus}
    return {index[s.gpu_uuid]: s for s in report.samples}


def _collector(tmp_path: Path, exporter: Exporter) -> tuple[Any, Counting, list[str]]:
    profile = load_profile("dgx-h100")
    fake = FakeNvml(profile, clock=ManualClock(100.0))
    counting = Counting(fake)
    collector, _ = fake_collector(
        profile, tmp_path, fake=fake, binding=counting, dcgm=DcgmExporter(exporter.url)
    )
    uuids = [fake.uuid_of(i) for i in range(len(collector.devices))]
    return collector, counting, uuids


def test_live_readings_come_from_the_exporter_and_nvml_is_not_polled_for_them(
    tmp_path: Path, exporter: Exporter
) -> None:
    collector, counting, uuids = _collector(tmp_path, exporter)
    exporter.body = exposition(uuids[:6])  # GPUs 6 and 7 are not in the scrape
    counting.calls.clear()
    samples = _by_index(collector.collect().report)

    gpu0 = samples[0]
    assert gpu0.util_ratio == pytest.approx(0.37)
    assert gpu0.memory_bandwidth_util_ratio == pytest.approx(0.12)
    assert gpu0.memory_used_bytes == 2048 * 2**20
    assert gpu0.power_w == pytest.approx(321.5)
    assert gpu0.energy_j == pytest.approx(7.5e6)
    assert gpu0.temperature_c == 61
    assert gpu0.sm_clock_hz == pytest.approx(1755e6)
    assert gpu0.sm_active_ratio == pytest.approx(0.25)
    assert gpu0.tensor_active_ratio == pytest.approx(0.125)
    # DCGM's profiling is on: NVML's GPM is left alone, also for the ratio DCGM lacks here
    assert gpu0.sm_occupancy_ratio is None
    # ECC, processes and their pods still come from NVML
    assert gpu0.ecc is not None
    assert gpu0.processes
    for index in range(6):
        for call in LIVE_CALLS:
            assert counting.calls[(call, index)] == 0, f"{call} asked again on GPU {index}"
    # the GPUs the exporter does not list are read through NVML as before
    for index in (6, 7):
        assert counting.calls[("nvmlDeviceGetUtilizationRates", index)] == 1
        assert samples[index].util_ratio is not None
        assert samples[index].util_ratio != pytest.approx(0.37)


def test_an_unreadable_exporter_falls_back_to_nvml_and_is_logged_once(
    tmp_path: Path, exporter: Exporter
) -> None:
    collector, counting, uuids = _collector(tmp_path, exporter)
    exporter.status = 503
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            samples = _by_index(collector.collect().report)
            assert all(s.power_w is not None for s in samples.values())
        exporter.status, exporter.body = 200, "this is { not exposition text"
        collector.collect()
        exporter.body = exposition(uuids)
        samples = _by_index(collector.collect().report)
    events = [e["event"] for e in logs]
    assert events.count("dcgm_exporter_unreadable") == 1
    assert events.count("dcgm_exporter_readable") == 1
    assert samples[3].util_ratio == pytest.approx(0.37)
    assert counting.calls[("nvmlDeviceGetPowerUsage", 0)] == 4  # the four cycles without it


def test_a_refused_value_is_read_through_nvml_and_the_rest_still_used(
    tmp_path: Path, exporter: Exporter
) -> None:
    collector, counting, uuids = _collector(tmp_path, exporter)
    exporter.body = exposition(uuids, util=250.0)  # 250 %: outside the contract
    counting.calls.clear()
    with structlog.testing.capture_logs() as logs:
        samples = _by_index(collector.collect().report)
        collector.collect()
    assert [e["metric"] for e in logs if e["event"] == "dcgm_value_refused"] == [
        "DCGM_FI_DEV_GPU_UTIL"
    ]
    gpu0 = samples[0]
    assert gpu0.util_ratio is not None
    assert gpu0.util_ratio <= 1.0
    assert counting.calls[("nvmlDeviceGetUtilizationRates", 0)] == 2  # once per cycle
    assert gpu0.power_w == pytest.approx(321.5)
    assert counting.calls[("nvmlDeviceGetPowerUsage", 0)] == 0


@pytest.mark.parametrize(
    ("line", "kept"),
    [
        # a MIG instance's series: the sample is the whole GPU's
        ('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a",GPU_I_ID="3",GPU_I_PROFILE="1g.10gb"} 90', {}),
        ('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a"} NaN', {}),
        ('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a"} -3', {}),
        ('DCGM_FI_DEV_POWER_USAGE{UUID="GPU-a"} +Inf', {}),
        ('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 50', {}),  # no UUID: cannot be matched
        ('DCGM_FI_DEV_GPU_UTIL{UUID="MIG-a"} 50', {}),
        ('DCGM_FI_DEV_FB_USED{UUID="GPU-a"} 1.5', {"GPU-a": {"memory_used_bytes": 1572864}}),
        ('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a"} 100', {"GPU-a": {"util_ratio": 1.0}}),
        ('DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL{UUID="GPU-a"} 100', {}),  # not one we read
    ],
)
def test_parse_table(line: str, kept: dict[str, dict[str, float]]) -> None:
    readings, _ = parse(line + "\n")
    assert readings == kept


def test_parse_refuses_text_that_is_not_exposition() -> None:
    with pytest.raises(ValueError, match="not Prometheus exposition text"):
        parse('DCGM_FI_DEV_GPU_UTIL{UUID="GPU-a" 5\n')


def test_the_setting_names_the_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STOWAGE_AGENT_DCGM_EXPORTER_URL", "http://10.0.0.7:9400/metrics")
    assert str(AgentSettings().dcgm_exporter_url) == "http://10.0.0.7:9400/metrics"
    monkeypatch.setenv("STOWAGE_AGENT_DCGM_EXPORTER_URL", "not a url")
    with pytest.raises(ValueError, match="dcgm_exporter_url"):
        AgentSettings()
