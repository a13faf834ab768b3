"""The finer activity signal: GPM metrics (Hopper and newer) and per-process SM
utilisation, over the fake NVML; None wherever the GPU or driver cannot answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.fake.nvml import FakeNvml
from agent.profile import load_profile
from shared.report import GpuSample, NodeReport
from tests.agent.helpers import ManualClock, fake_collector


def _by_index(report: NodeReport) -> dict[int, GpuSample]:
    index = {g.uuid: g.index for g in report.gpus}
    return {index[s.gpu_uuid]: s for s in report.samples}


def test_hopper_reports_gpm_activity_from_the_second_read(tmp_path: Path) -> None:
    clock = ManualClock(100.0)
    collector, fake = fake_collector(load_profile("dgx-h100"), tmp_path, clock=clock)
    first = _by_index(collector.collect().report)
    assert first[0].sm_active_ratio is None  # GPM needs two samples
    clock.advance(10)
    second = _by_index(collector.collect().report)
    pod = fake.profile.behaviour.pods[0]  # ml/llama-pretrain-0 on GPUs 0-3
    activity = pod.activity_at(clock.now)
    gpu0 = second[0]
    assert gpu0.sm_active_ratio == pytest.approx(activity, abs=0.01)
    assert gpu0.sm_occupancy_ratio == pytest.approx(0.6 * activity, abs=0.01)
    assert gpu0.tensor_active_ratio == pytest.approx(0.5 * activity, abs=0.01)
    assert gpu0.dram_active_ratio == pytest.approx(0.4 * activity, abs=0.01)
    # real activity is below the coarse "a kernel ran" ratio
    assert gpu0.util_ratio is not None
    assert gpu0.sm_active_ratio < gpu0.util_ratio
    [process] = gpu0.processes
    assert process.pid == pod.pid
    assert process.sm_util_ratio == pytest.approx(activity, abs=0.01)


def test_ampere_has_per_process_utilisation_but_no_gpm(tmp_path: Path) -> None:
    clock = ManualClock(5.0)
    collector, _ = fake_collector(load_profile("dgx-a100"), tmp_path, clock=clock)
    collector.collect()
    clock.advance(10)
    samples = _by_index(collector.collect().report)
    assert all(s.sm_active_ratio is None and s.dram_active_ratio is None for s in samples.values())
    busy = [p for s in samples.values() for p in s.processes]
    assert busy
    assert all(p.sm_util_ratio is not None for p in busy)


def test_a_pod_holding_gpus_it_does_not_use_leaves_them_idle(tmp_path: Path) -> None:
    """hgx-h200 scripts llm/llama-70b-sft-0 on 8 GPUs, running on 4 of them."""
    clock = ManualClock(50.0)
    collector, _ = fake_collector(load_profile("hgx-h200"), tmp_path, clock=clock)
    collector.collect()
    clock.advance(10)
    samples = _by_index(collector.collect().report)
    for index in range(4):
        assert samples[index].sm_active_ratio is not None
        assert samples[index].sm_active_ratio > 0.4
    for index in range(4, 8):
        idle = samples[index]
        assert idle.util_ratio == 0.0
        assert idle.sm_active_ratio == 0.0
        [process] = idle.processes  # the pod still holds a context there
        assert process.sm_util_ratio == 0.0
        assert process.memory_used_bytes == 500 * 1024**2


class _BrokenGpm(FakeNvml):
    """GPM answers an unexpected error (a driver bug); everything else works."""

    def nvmlGpmMetricsGet(self, request: Any) -> Any:  # noqa: N802
        raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)


def test_a_failing_gpm_call_nulls_only_gpm_and_is_logged_once(tmp_path: Path) -> None:
    clock = ManualClock(1.0)
    profile = load_profile("dgx-h100")
    fake = _BrokenGpm(profile, clock=clock)
    collector, _ = fake_collector(profile, tmp_path, fake=fake)
    for _ in range(3):
        clock.advance(10)
        report = collector.collect().report
    assert all(s.sm_active_ratio is None for s in report.samples)
    assert all(s.power_w is not None for s in report.samples)
    assert all(p.sm_util_ratio is not None for s in report.samples for p in s.processes)
    assert collector.nvml._logged == {"nvmlGpmMetricsGet"}


def test_gpm_samples_are_freed_and_reused_correctly(tmp_path: Path) -> None:
    """Each read frees the sample before last: freeing one twice would be refused."""
    clock = ManualClock(1.0)
    collector, _ = fake_collector(load_profile("dgx-h100"), tmp_path, clock=clock)
    for _ in range(4):
        clock.advance(5)
        collector.collect()
    assert collector.nvml._logged == set()


def test_the_real_gpm_struct_has_the_fields_the_reader_sets() -> None:
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = 4
    request.sample1 = pynvml.c_nvmlGpmSample_t()
    request.sample2 = pynvml.c_nvmlGpmSample_t()
    request.metrics[3].metricId = pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL
    assert request.metrics[3].metricId == 10
    assert {"pid", "timeStamp", "smUtil"} <= {
        name for name, _ in pynvml.c_nvmlProcessUtilizationSample_t._fields_
    }
