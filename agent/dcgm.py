"""Live GPU readings from a dcgm-exporter already running on the node.

Where NVIDIA's dcgm-exporter runs (the GPU Operator installs it), DCGM is already polling
every GPU and holds its profiling counters; NVML's GPM would compete with DCGM's profiling
module for them. With ``STOWAGE_AGENT_DCGM_EXPORTER_URL`` set, the agent reads each cycle's
utilisation, framebuffer, power, energy, temperature, SM clock and DCGM's profiling ratios
from that exporter's ``/metrics`` instead of asking NVML again, and keeps NVML only for what
dcgm-exporter does not export per GPU (identity, topology, ECC totals, XID events, processes
and their SM share). A GPU the scrape does not list, a value out of the contract's bounds, or
an exporter that cannot be read falls back to NVML for that cycle: nothing is lost.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families
from pydantic import TypeAdapter, ValidationError

from shared.report import GpuSample

log = structlog.get_logger(__name__)

MIB: Final = 2**20
#: dcgm-exporter's field -> (our sample field, factor from its unit to ours).
FIELDS: Final[Mapping[str, tuple[str, float]]] = {
    "DCGM_FI_DEV_GPU_UTIL": ("util_ratio", 0.01),  # %
    "DCGM_FI_DEV_MEM_COPY_UTIL": ("memory_bandwidth_util_ratio", 0.01),  # %
    "DCGM_FI_DEV_FB_USED": ("memory_used_bytes", MIB),  # MiB
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", 1.0),  # W
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": ("energy_j", 0.001),  # mJ
    "DCGM_FI_DEV_GPU_TEMP": ("temperature_c", 1.0),  # C
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_hz", 1e6),  # MHz
    "DCGM_FI_PROF_SM_ACTIVE": ("sm_active_ratio", 1.0),  # ratio
    "DCGM_FI_PROF_SM_OCCUPANCY": ("sm_occupancy_ratio", 1.0),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": ("tensor_active_ratio", 1.0),
    "DCGM_FI_PROF_DRAM_ACTIVE": ("dram_active_ratio", 1.0),
}
#: Fields dcgm-exporter gives as integers; the contract wants an int there.
INTEGER_FIELDS: Final = frozenset({"memory_used_bytes"})
DEFAULT_TIMEOUT_S: Final = 2.0

Readings = dict[str, float | int]


#: Each field's contract type with its bounds (a reading outside them is not used).
VALIDATORS: Final[Mapping[str, TypeAdapter[Any]]] = {
    field: TypeAdapter(GpuSample.model_fields[field].rebuild_annotation())
    for field, _ in FIELDS.values()
}


def parse(text: str) -> tuple[dict[str, Readings], list[tuple[str, float]]]:
    """(GPU UUID -> our sample fields, refused (metric, value) pairs) from dcgm-exporter's
    exposition ``text``.

    Series of a MIG instance (``GPU_I_ID`` set) are skipped: the sample is the whole GPU's.
    A value that is not finite or breaks the contract's bounds is refused (the agent then
    reads that field through NVML). Raises ValueError when ``text`` is not exposition text.
    """
    readings: dict[str, Readings] = {}
    refused: list[tuple[str, float]] = []
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except ValueError as error:  # the parser's own words, e.g. a value it cannot read
        raise ValueError(f"not Prometheus exposition text: {error}") from error
    for sample in samples:
        if sample.name not in FIELDS:
            continue
        uuid = sample.labels.get("UUID", "")
        if not uuid.startswith("GPU-") or sample.labels.get("GPU_I_ID"):
            continue
        field, factor = FIELDS[sample.name]
        value: float | int = float(sample.value) * factor
        if field in INTEGER_FIELDS and math.isfinite(value):
            value = round(value)
        try:
            if not math.isfinite(value):
                raise ValueError("not finite")
            VALIDATORS[field].validate_python(value)
        except (ValidationError, ValueError):
            refused.append((sample.name, float(sample.value)))
            continue
        readings.setdefault(uuid, {}).setdefault(field, value)
    return readings, refused


class DcgmExporter:
    """Scrapes one dcgm-exporter, at most once per collection cycle.

    Args:
        url: its metrics URL (``http://<host>:9400/metrics``).
        timeout_s: the whole scrape's deadline; the cycle goes on without it after that.
        client: an httpx client (tests pass one with their own transport).
    """

    def __init__(
        self, url: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, client: httpx.Client | None = None
    ) -> None:
        self.url = url
        self._client = client or httpx.Client(timeout=timeout_s)
        self._failing = False
        self._refused: set[str] = set()  # metrics whose bad value was logged

    def read(self) -> dict[str, Readings]:
        """UUID -> readings now; empty when the exporter cannot be read (logged once per
        outage, and once when it answers again)."""
        try:
            response = self._client.get(self.url)
            response.raise_for_status()
            readings, refused = parse(response.text)
        except (httpx.HTTPError, ValueError) as error:
            if not self._failing:
                log.warning("dcgm_exporter_unreadable", url=self.url, error=str(error))
            self._failing = True
            return {}
        if self._failing:
            log.info("dcgm_exporter_readable", url=self.url, gpus=len(readings))
        self._failing = False
        for metric, value in refused:
            if metric not in self._refused:
                self._refused.add(metric)
                log.warning("dcgm_value_refused", metric=metric, value=value)
        return readings

    def close(self) -> None:
        self._client.close()
