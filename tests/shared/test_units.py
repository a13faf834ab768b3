"""Unit conversions at the NVML boundary."""

from __future__ import annotations

import pytest

from shared.units import (
    megahertz_to_hertz,
    millijoules_to_joules,
    milliwatts_to_watts,
    nvlink_bandwidth_bytes_per_s,
    percent_to_ratio,
)


@pytest.mark.parametrize(("percent", "ratio"), [(0, 0.0), (55, 0.55), (100, 1.0), (101, 1.0)])
def test_percent_to_ratio_is_clamped(percent: float, ratio: float) -> None:
    assert percent_to_ratio(percent) == pytest.approx(ratio)


def test_nvml_units_to_si() -> None:
    assert milliwatts_to_watts(312_500) == 312.5
    assert millijoules_to_joules(5_000) == 5.0
    assert megahertz_to_hertz(1_980) == 1.98e9


def test_nvlink_bandwidth_by_generation() -> None:
    assert nvlink_bandwidth_bytes_per_s(link_count=18, version=4) == 900e9
    assert nvlink_bandwidth_bytes_per_s(link_count=12, version=3) == 600e9
    assert nvlink_bandwidth_bytes_per_s(link_count=2, version=None) is None
    assert nvlink_bandwidth_bytes_per_s(link_count=2, version=99) is None
