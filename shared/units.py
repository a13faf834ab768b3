"""Units of the wire contract, and the few conversions both sides need.

Every quantity on the wire is SI and says its unit in its name: bytes, watts (``_w``),
joules (``_j``), hertz (``_hz``), seconds (``_s``), degrees Celsius (``_c``) and ratios in
[0, 1] (``_ratio``). NVML reports milliwatts, millijoules, MHz and percent; the agent converts
at its boundary with the helpers below so nothing downstream ever guesses.
"""

from __future__ import annotations

import math
from typing import Final

KIB: Final = 1024
MIB: Final = 1024**2
GIB: Final = 1024**3

#: One whole GPU in the planner's GPU-sharing unit (as in the FGD simulator and Alibaba traces).
MILLI_GPU_PER_GPU: Final = 1000

#: Bidirectional bandwidth of one NVLink, bytes per second, by NVLink generation
#: (NVML's ``nvmlDeviceGetNvLinkVersion``). NVLink 1 (P100): 40 GB/s; 2 and 3 (V100, A100):
#: 50 GB/s; 4 (H100/H200): 50 GB/s; 5 (B200/GB200): 100 GB/s.
NVLINK_BYTES_PER_S_BY_VERSION: Final[dict[int, float]] = {
    1: 40e9,
    2: 50e9,
    3: 50e9,
    4: 50e9,
    5: 100e9,
}


def nvlink_bandwidth_bytes_per_s(*, link_count: int, version: int | None) -> float | None:
    """Aggregate bidirectional bandwidth of ``link_count`` NVLinks of one generation.

    Returns ``None`` when the generation is unknown (the count is still meaningful).
    """
    if version is None or version not in NVLINK_BYTES_PER_S_BY_VERSION:
        return None
    return link_count * NVLINK_BYTES_PER_S_BY_VERSION[version]


def percent_to_ratio(percent: float) -> float:
    """NVML percentages (0-100) to contract ratios (0-1), clamped against driver overshoot."""
    return min(max(percent / 100.0, 0.0), 1.0)


def milliwatts_to_watts(milliwatts: float) -> float:
    """NVML power (mW) to watts."""
    return milliwatts / 1000.0


def millijoules_to_joules(millijoules: float) -> float:
    """NVML energy (mJ since driver load) to joules."""
    return millijoules / 1000.0


def megahertz_to_hertz(megahertz: float) -> float:
    """NVML clocks (MHz) to hertz."""
    return megahertz * 1e6


_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def duration_s(text: str, *, default_unit: str = "s") -> int:
    """Seconds from ``90s``, ``5m``, ``1h``, ``7d``, ``1w`` (a bare number is in
    ``default_unit``); raises ValueError for anything else, zero included."""
    value = text.strip()
    unit = value[-1:] if value[-1:] in _DURATION_UNITS else default_unit
    number = value[:-1] if value[-1:] in _DURATION_UNITS else value
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30m, 1h, 7d") from None
    if not math.isfinite(amount) or amount <= 0:
        raise ValueError(f"{text!r} must be a positive duration")
    return round(amount * _DURATION_UNITS[unit])
