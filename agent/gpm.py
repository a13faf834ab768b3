"""Real GPU activity: GPM metrics (Hopper and newer) and per-process SM utilisation.

NVML's "GPU utilisation" only says whether any kernel ran in the sample window: it reads
100% for a barely busy GPU. GPM (GPU Performance Monitoring) measures what the SMs did
between two samples: SM activity, SM occupancy, tensor-core activity, DRAM bandwidth. Each
read takes a new GPM sample and computes the metrics against the previous one, so the
first read of a GPU has nothing to report. ``nvmlDeviceGetProcessUtilization`` gives each
process's SM share since a timestamp. Where a GPU or driver cannot answer (pre-Hopper,
MIG-enabled, old driver), the values are None, never made up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import pynvml

from agent.nvml import Nvml
from shared.units import percent_to_ratio

#: GPM metric ids and the sample fields they fill.
GPM_METRICS: Final = {
    "sm_active_ratio": pynvml.NVML_GPM_METRIC_SM_UTIL,
    "sm_occupancy_ratio": pynvml.NVML_GPM_METRIC_SM_OCCUPANCY,
    "tensor_active_ratio": pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL,
    "dram_active_ratio": pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
}


@dataclass(frozen=True)
class Activity:
    """One read's GPM ratios (None: not measured) and each process's SM share."""

    gpm: dict[str, float | None]
    process_sm: dict[int, float]


class ActivityReader:
    """Reads GPM metrics and per-process SM utilisation of one GPU, keeping the previous
    GPM sample and the newest process-sample timestamp between reads."""

    def __init__(self, nvml: Nvml, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._previous: Any | None = None
        self._supported: bool | None = None
        self._process_ts = 0

    def read(self, *, gpm: bool = True) -> Activity:
        """GPM ratios (unless ``gpm`` is False: all None, GPM left alone) and process shares."""
        return Activity(
            gpm=self._gpm() if gpm else dict.fromkeys(GPM_METRICS), process_sm=self._processes()
        )

    def close(self) -> None:
        """Free the kept GPM sample (idempotent)."""
        if self._previous is not None:
            self._nvml.optional("nvmlGpmSampleFree", self._previous)
            self._previous = None

    def _gpm(self) -> dict[str, float | None]:
        empty: dict[str, float | None] = dict.fromkeys(GPM_METRICS)
        if self._supported is None:
            support = self._nvml.optional("nvmlGpmQueryDeviceSupport", self._handle)
            self._supported = bool(support is not None and support.isSupportedDevice)
        if not self._supported:
            return empty
        sample = self._nvml.optional("nvmlGpmSampleAlloc")
        if sample is None:
            return empty
        if self._nvml.optional("nvmlGpmSampleGet", self._handle, sample) is None:
            self._nvml.optional("nvmlGpmSampleFree", sample)
            return empty
        previous, self._previous = self._previous, sample
        if previous is None:
            return empty
        try:
            return self._metrics(previous, sample)
        finally:
            self._nvml.optional("nvmlGpmSampleFree", previous)

    def _metrics(self, first: Any, second: Any) -> dict[str, float | None]:
        binding = self._nvml.binding
        request = getattr(binding, "c_nvmlGpmMetricsGet_t", pynvml.c_nvmlGpmMetricsGet_t)()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(GPM_METRICS)
        request.sample1 = first
        request.sample2 = second
        for slot, metric in enumerate(GPM_METRICS.values()):
            request.metrics[slot].metricId = metric
        answer = self._nvml.optional("nvmlGpmMetricsGet", request)
        result: dict[str, float | None] = dict.fromkeys(GPM_METRICS)
        if answer is None:
            return result
        for slot, field in enumerate(GPM_METRICS):
            metric = answer.metrics[slot]
            if metric.nvmlReturn == pynvml.NVML_SUCCESS:
                result[field] = percent_to_ratio(min(max(float(metric.value), 0.0), 100.0))
        return result

    def _processes(self) -> dict[int, float]:
        samples = self._nvml.optional(
            "nvmlDeviceGetProcessUtilization", self._handle, self._process_ts
        )
        shares: dict[int, list[float]] = {}
        for sample in samples or ():
            if sample.pid <= 0:
                continue
            shares.setdefault(int(sample.pid), []).append(min(float(sample.smUtil), 100.0))
            self._process_ts = max(self._process_ts, int(sample.timeStamp))
        return {pid: percent_to_ratio(sum(v) / len(v)) for pid, v in shares.items()}
