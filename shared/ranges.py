"""Linux list syntax for CPU and GPU ids: ``0-3,8,10-11``.

Used for CPU lists (sysfs ``cpulist``, ``nvidia-smi topo -m``'s CPU Affinity) and to print
GPU index sets compactly.
"""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpu_list(text: str) -> list[int]:
    """Linux CPU list syntax (``0-3,8,10-11`` or ``4,6,8``) to sorted CPU ids.

    Raises:
        ValueError: the text is not a CPU list.
    """
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"not a CPU list: {text!r}")
        start, end = int(low), int(high) if dash else int(low)
        if end < start:
            raise ValueError(f"descending CPU range {part!r} in {text!r}")
        cpus.update(range(start, end + 1))
    return sorted(cpus)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """Sorted CPU ids to Linux CPU list syntax (``0-3,8``)."""
    runs: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if runs and cpu == runs[-1][-1] + 1:
            runs[-1].append(cpu)
        else:
            runs.append([cpu])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
