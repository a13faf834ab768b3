"""The agent over the fake NVML: discovery, samples, and every fault the issue names."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pynvml
import pytest
import yaml
from structlog.testing import capture_logs

from agent.collector import Collector
from agent.fake.nvml import FakeNvml
from agent.nvml import Nvml, NvmlUnavailableError
from agent.profile import MigSpec, ProfileError, load_profile, parse_profile, shipped_profile_names
from shared.report import GpuHealth, PcieLevel
from shared.topology import LinkMatrix, best_connected_gpus
from tests.agent.helpers import ManualClock, fake_collector


def test_dgx_h100_discovery(tmp_path: Path) -> None:
    collector, _ = fake_collector(load_profile("dgx-h100"), tmp_path)
    report = collector.collect().report
    assert len(report.gpus) == 8
    assert len(report.links) == 28
    assert all(link.nvlink_count == 18 and link.via_nvswitch for link in report.links)
    assert all(link.nvlink_bandwidth_bytes_per_s == 900e9 for link in report.links)
    assert [g.numa_node for g in report.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert report.gpus[0].cpu_affinity == [*range(0, 56), *range(112, 168)]
    assert report.link_between(0, 5) is not None
    assert report.link_between(0, 5).pcie_level is PcieLevel.SYSTEM  # type: ignore[union-attr]
    assert report.host is not None
    assert (report.host.cpu_sockets, report.host.logical_cpus) == (2, 224)
    assert report.cuda_version == "12.4"
    assert report.gpus[0].power_limit_w == 700.0
    assert report.gpus[0].compute_capability == "9.0"


def test_dgx1_hybrid_cube_mesh_and_its_best_quad(tmp_path: Path) -> None:
    collector, _ = fake_collector(load_profile("dgx1-v100"), tmp_path)
    report = collector.collect().report
    matrix = LinkMatrix.from_links(report.links)
    assert matrix.nvlink_count(0, 3) == 2
    assert matrix.nvlink_count(0, 1) == 1
    assert matrix.nvlink_count(0, 5) == 0
    assert sum(lk.nvlink_count for lk in report.links) == 24  # 6 links per V100, 8 GPUs
    quad = best_connected_gpus(k=4, candidates=range(8), links=matrix)
    assert quad is not None
    assert all(matrix.nvlink_count(a, b) > 0 for a, b in itertools.combinations(quad, 2))


def test_gb200_tray_reports_its_clique(tmp_path: Path) -> None:
    collector, _ = fake_collector(load_profile("gb200-nvl72-tray"), tmp_path)
    report = collector.collect().report
    assert {g.clique for g in report.gpus} == {"5c0f1a2b-3c4d-4e5f-8a9b-0c1d2e3f4a5b.32766"}
    assert report.gpus[0].pci_bus_id == "0008:01:00.0"


def test_pcie_only_server_has_no_nvlink(tmp_path: Path) -> None:
    collector, _ = fake_collector(load_profile("l40s-pcie"), tmp_path)
    report = collector.collect().report
    assert all(lk.nvlink_count == 0 for lk in report.links)
    assert report.link_between(0, 1).pcie_level is PcieLevel.SINGLE  # type: ignore[union-attr]


@pytest.mark.parametrize("name", shipped_profile_names())
def test_every_shipped_profile_yields_a_valid_report(name: str, tmp_path: Path) -> None:
    profile = load_profile(name)
    collector, _ = fake_collector(profile, tmp_path)
    report = collector.collect().report
    assert len(report.gpus) == len(profile.gpus)
    assert len(report.samples) == len(profile.gpus)
    for a, b in itertools.combinations(range(len(profile.gpus)), 2):
        assert report.link_between(a, b).nvlink_count == profile.nvlinks(a, b)  # type: ignore[union-attr]


def test_samples_follow_the_scripted_pods(tmp_path: Path) -> None:
    clock = ManualClock()
    collector, _ = fake_collector(load_profile("dgx-h100"), tmp_path, clock=clock)
    first = collector.collect().report
    clock.advance(10)
    second = collector.collect().report
    busy = {s.gpu_uuid: s for s in second.samples}
    gpu0, gpu6 = busy[second.gpus[0].uuid], busy[second.gpus[6].uuid]
    assert gpu0.util_ratio is not None
    assert gpu0.util_ratio > 0.7
    assert gpu6.util_ratio == 0.05
    assert gpu0.memory_used_bytes is not None
    assert gpu0.memory_used_bytes > 70 * 1024**3
    assert [p.pid for p in gpu0.processes] == [41001]
    assert gpu0.energy_j is not None
    assert gpu0.energy_j > first.samples[0].energy_j  # type: ignore[operator]
    assert second.sequence == first.sequence + 1


def test_xid_then_lost_gpu_mid_run(tmp_path: Path) -> None:
    """dgx-a100 scripts XID 13 on GPU 3 at 30 s and GPU 6 falling off the bus at 120 s."""
    clock = ManualClock()
    collector, _ = fake_collector(load_profile("dgx-a100"), tmp_path, clock=clock)
    before = collector.collect().report
    clock.advance(31)
    after_xid = collector.collect().report
    sample3 = next(s for s in after_xid.samples if s.gpu_uuid == after_xid.gpus[3].uuid)
    assert (sample3.xid_total, sample3.last_xid) == (1, 13)
    assert after_xid.gpus[3].health is GpuHealth.OK  # XID 13 is an application error
    clock.advance(100)
    lost = collector.collect().report
    assert lost.gpus[6].health is GpuHealth.LOST
    assert lost.gpus[6].uuid == before.gpus[6].uuid  # last known facts kept
    sample6 = next(s for s in lost.samples if s.gpu_uuid == lost.gpus[6].uuid)
    assert sample6.util_ratio is None
    assert sample6.last_xid == 79
    assert [g.health for g in lost.gpus].count(GpuHealth.OK) == 7
    assert lost.topology_fingerprint() != before.topology_fingerprint()
    clock.advance(10)
    assert collector.collect().report.gpus[6].health is GpuHealth.LOST  # and the agent goes on


OPTIONAL_CALLS = [
    ("nvmlDeviceGetArchitecture", lambda r: r.gpus[0].architecture is None),
    ("nvmlDeviceGetCudaComputeCapability", lambda r: r.gpus[0].compute_capability is None),
    ("nvmlDeviceGetSerial", lambda r: r.gpus[0].serial is None),
    ("nvmlDeviceGetCurrPcieLinkGeneration", lambda r: r.gpus[0].pcie_generation is None),
    ("nvmlDeviceGetCurrPcieLinkWidth", lambda r: r.gpus[0].pcie_width is None),
    ("nvmlDeviceGetCpuAffinity", lambda r: r.gpus[0].cpu_affinity == []),
    ("nvmlDeviceGetEnforcedPowerLimit", lambda r: r.gpus[0].power_limit_w is None),
    ("nvmlDeviceGetMigMode", lambda r: r.gpus[0].mig_enabled is False),
    ("nvmlDeviceGetGpuFabricInfoV", lambda r: r.gpus[0].clique_id is None),
    ("nvmlDeviceGetTopologyCommonAncestor", lambda r: r.links[0].pcie_level is None),
    ("nvmlDeviceGetNvLinkState", lambda r: r.links[0].nvlink_count == 0),
    ("nvmlDeviceGetNvLinkVersion", lambda r: r.links[0].nvlink_bandwidth_bytes_per_s is None),
    ("nvmlDeviceGetNvLinkRemoteDeviceType", lambda r: r.links[0].nvlink_count == 0),
    ("nvmlDeviceGetUtilizationRates", lambda r: r.samples[0].util_ratio is None),
    ("nvmlDeviceGetPowerUsage", lambda r: r.samples[0].power_w is None),
    ("nvmlDeviceGetTotalEnergyConsumption", lambda r: r.samples[0].energy_j is None),
    ("nvmlDeviceGetTemperatureV", lambda r: r.samples[0].temperature_c is None),
    ("nvmlDeviceGetClockInfo", lambda r: r.samples[0].sm_clock_hz is None),
    ("nvmlDeviceGetTotalEccErrors", lambda r: r.samples[0].ecc is None),
    ("nvmlDeviceGetCurrentClocksEventReasons", lambda r: r.samples[0].throttle_reasons == []),
    ("nvmlDeviceGetComputeRunningProcesses", lambda r: r.samples[0].processes == []),
    ("nvmlSystemGetDriverVersion", lambda r: r.driver_version is None),
    ("nvmlEventSetCreate", lambda r: r.samples[0].xid_total == 0),
]


class _Refusing(FakeNvml):
    """The fake, except one function answers NotSupported (as an older GPU would)."""

    def __init__(self, *args: Any, refuse: str, code: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refuse = refuse
        self._code = code

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name == object.__getattribute__(self, "_refuse"):
            code = object.__getattribute__(self, "_code")

            def refuse(*_: Any, **__: Any) -> Any:
                raise pynvml.NVMLError(code)

            return refuse
        return object.__getattribute__(self, name)


@pytest.mark.parametrize(("call", "is_null"), OPTIONAL_CALLS, ids=[c for c, _ in OPTIONAL_CALLS])
def test_not_supported_on_each_optional_call_nulls_only_that_field(
    call: str, is_null: Any, tmp_path: Path
) -> None:
    profile = load_profile("gb200-nvl72-tray")
    fake = _Refusing(
        profile, clock=ManualClock(), refuse=call, code=pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    collector, _ = fake_collector(profile, tmp_path, fake=fake)
    report = collector.collect().report
    assert is_null(report)
    assert len(report.gpus) == 4
    assert len(report.samples) == 4


def test_an_unexpected_nvml_error_is_logged_once_and_nulled(tmp_path: Path) -> None:
    profile = load_profile("dgx-h100")
    fake = _Refusing(
        profile,
        clock=ManualClock(),
        refuse="nvmlDeviceGetPowerUsage",
        code=pynvml.NVML_ERROR_UNKNOWN,
    )
    collector, _ = fake_collector(profile, tmp_path, fake=fake)
    assert all(s.power_w is None for s in collector.collect().report.samples)
    assert collector.nvml._logged == {"nvmlDeviceGetPowerUsage"}


@pytest.mark.parametrize(
    "code",
    [
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_UNKNOWN,
    ],
)
def test_nvml_init_failure_is_one_clear_error(code: int, tmp_path: Path) -> None:
    fake = FakeNvml(load_profile("dgx-h100"), init_error=code)
    collector = Collector(nvml=Nvml(fake), root=tmp_path, node_name="n1")
    with pytest.raises(NvmlUnavailableError, match=f"NVML error {code}"):
        collector.start()


def test_a_gpu_lost_before_discovery_is_left_out(tmp_path: Path) -> None:
    profile = load_profile("dgx-a100")
    clock = ManualClock(start=500.0)  # past the scripted loss of GPU 6
    collector, _ = fake_collector(profile, tmp_path, clock=clock)
    with capture_logs() as logs:
        report = collector.collect().report
        for _ in range(3):
            clock.advance(10)
            collector.collect()
    assert [g.index for g in report.gpus] == [0, 1, 2, 3, 4, 5, 7]
    assert all(lk.gpu_a != 6 and lk.gpu_b != 6 for lk in report.links)
    lost = [e for e in logs if e["event"] == "gpu_lost_before_discovery"]
    assert [e["gpu"] for e in lost] == [6]  # said once, not on every collect


def test_mig_devices_are_reported(tmp_path: Path) -> None:
    profile = load_profile("dgx-a100")
    gpus = list(profile.gpus)
    gpus[1] = gpus[1].model_copy(
        update={
            "mig_devices": [
                MigSpec(profile="3g.20gb", memory_gib=20),
                MigSpec(profile="1g.5gb", memory_gib=5),
            ]
        }
    )
    collector, _ = fake_collector(profile.model_copy(update={"gpus": gpus}), tmp_path)
    report = collector.collect().report
    mig_gpu = report.gpus[1]
    assert mig_gpu.mig_enabled
    assert [m.profile for m in mig_gpu.mig_instances] == ["3g.20gb", "1g.5gb"]
    assert mig_gpu.mig_instances[0].memory_bytes == 20 * 1024**3
    assert mig_gpu.mig_instances[1].gpu_instance_id == 2
    assert all(m.uuid.startswith("MIG-") for m in mig_gpu.mig_instances)
    assert not report.gpus[0].mig_enabled
    sample = next(s for s in report.samples if s.gpu_uuid == mig_gpu.uuid)
    assert sample.util_ratio is None  # NVML reports no utilisation for MIG-enabled GPUs


def test_mig_needs_a_capable_gpu() -> None:
    data = yaml.safe_load(Path("agent/profiles/l40s-pcie.yaml").read_text())
    data["gpus"][0]["mig_devices"] = [{"profile": "1g.6gb", "memory_gib": 6}]
    with pytest.raises(ProfileError, match=r"gpus\.0\.mig_devices: gpu\.mig_capable is false"):
        parse_profile(yaml.safe_dump(data), origin="l40s")


def test_fake_gpus_are_named_after_their_node_so_two_fake_nodes_never_collide() -> None:
    from agent.fake.machine import FakeMachine
    from agent.profile import load_profile

    profile = load_profile("dgx-h100")
    with (
        FakeMachine(profile, node_name="node-a") as a,
        FakeMachine(profile, node_name="node-b") as b,
        FakeMachine(profile, node_name="node-a") as again,
    ):
        uuids_a = {a.binding.uuid_of(i) for i in range(8)}
        assert uuids_a.isdisjoint(b.binding.uuid_of(i) for i in range(8))
        assert uuids_a == {again.binding.uuid_of(i) for i in range(8)}  # stable per node
