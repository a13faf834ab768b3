"""What validating a node report costs, against plain JSON decoding of the same bytes.

Run: ``make bench`` (or ``.venv/bin/python -m bench.contract``). The optimizer parses every
report it ingests, so this bounds the contract's share of ingest time. Prints a Markdown
table; the figures in docs/benchmarks.md come from it.
"""

from __future__ import annotations

import json
import platform
import statistics
import timeit
from collections.abc import Callable

from shared.samples import DGX_H100, build_report, full_report
from shared.schema import parse_report

REPEAT = 7


def _best_us(func: Callable[[], object], *, number: int) -> float:
    runs = timeit.repeat(func, number=number, repeat=REPEAT)
    return min(runs) / number * 1e6


def main() -> None:
    """Measure and print the table."""
    cases = {
        "topology report, 8 GPUs (28 links, 8 samples)": build_report(
            DGX_H100, node_name="bench-node"
        ).model_dump_json(),
        "topology report with MIG and processes": full_report().model_dump_json(),
    }
    samples_only = json.loads(cases["topology report, 8 GPUs (28 links, 8 samples)"])
    for key in ("host", "gpus", "links"):
        samples_only.pop(key)
    cases["samples report, 8 GPUs"] = json.dumps(samples_only)

    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print()
    print("| payload | bytes | json.loads (µs) | parse_report (µs) | ratio |")
    print("|---|---:|---:|---:|---:|")
    ratios = []
    for name, wire in cases.items():
        baseline = _best_us(lambda w=wire: json.loads(w), number=2000)
        contract = _best_us(lambda w=wire: parse_report(w), number=500)
        ratio = contract / baseline
        ratios.append(ratio)
        print(f"| {name} | {len(wire):,} | {baseline:.1f} | {contract:.1f} | {ratio:.1f}x |")
    print()
    print(f"median ratio parse_report / json.loads: {statistics.median(ratios):.1f}x")


if __name__ == "__main__":
    main()
