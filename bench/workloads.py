"""Generated resamplings of the openb ``default`` workload: more CPU-only pods, or more
multi-GPU pods, than any trace in ``../shared`` has.

Run: ``.venv/bin/python -m bench.workloads --list`` (or ``--write DIR`` to save the CSVs).

The FGD authors' variants add or remove pods of one kind and keep the rest of ``default``:
``cpu050`` and ``cpu100`` keep every GPU pod and fewer CPU-only pods (their CPU-only CPU
request is about 0.46x and 1x that of ``cpu100``), ``multigpu20`` and ``multigpu30`` add
multi-GPU pods until they hold 20% and 30% of the GPU request. The generator does the same,
further out, drawing the added pods with replacement from ``default``'s own pods of that kind
(seeded, so a name and a seed always give the same CSV):

- ``gen-cpu200``, ``gen-cpu250``: CPU-only pods until their CPU request is 2x and 2.5x
  ``cpu100``'s (``default``'s is 1.36x);
- ``gen-multigpu40``, ``gen-multigpu50``: multi-GPU pods until they hold 40% and 50% of
  the GPU request.

Added pods are named ``<original>-gen<k>``. Nothing here reads the future of a run: the
fill experiment shuffles and tunes the generated list like any other trace.
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from optimizer.planner.cluster import PodRequest
from optimizer.simulate.fill import load_pods

TRACES: Final = Path(__file__).resolve().parents[2] / "shared/traces/alibaba-gpu-2023/csv"
#: The generator's seed: one per variant would change nothing but the names' meaning.
SEED: Final = 2023

Row = dict[str, str]


def _cpu_only(row: Row) -> bool:
    return int(row["num_gpu"]) == 0


def _multi_gpu(row: Row) -> bool:
    return int(row["num_gpu"]) > 1


def _gpu_request(row: Row) -> float:
    return float(int(row["num_gpu"]) * int(row["gpu_milli"]))


@dataclass(frozen=True)
class Variant:
    """Add pods of one kind to ``default`` until a sum over the pods, ``part`` (of each row),
    reaches ``target``; or, with ``whole``, until ``part`` over ``whole`` does."""

    name: str
    kind: Callable[[Row], bool]
    part: Callable[[Row], float]
    target: float
    whole: Callable[[Row], float] | None = None

    def build(self, default: list[Row], *, seed: int = SEED) -> list[Row]:
        pool = [row for row in default if self.kind(row)]
        rows = list(default)
        of_whole = self.whole or (lambda _: 0.0)
        part = sum(self.part(r) for r in rows)
        whole = sum(of_whole(r) for r in rows)
        rng = random.Random(f"{self.name}:{seed}")
        while part < self.target * (whole if self.whole else 1.0):
            copy = dict(rng.choice(pool))
            copy["name"] = f"{copy['name']}-gen{len(rows) - len(default) + 1}"
            rows.append(copy)
            part += self.part(copy)
            whole += of_whole(copy)
        return rows


def _cpu_of_cpu_only(row: Row) -> float:
    return float(row["cpu_milli"]) if _cpu_only(row) else 0.0


def _multi_gpu_request(row: Row) -> float:
    return _gpu_request(row) if _multi_gpu(row) else 0.0


def _cpu_only_cpu(rows: list[Row]) -> float:
    return sum(map(_cpu_of_cpu_only, rows))


def _multi_gpu_share(rows: list[Row]) -> float:
    return sum(map(_multi_gpu_request, rows)) / sum(map(_gpu_request, rows))


def read(trace: str) -> list[Row]:
    with (TRACES / f"openb_pod_list_{trace}.csv").open() as handle:
        return list(csv.DictReader(handle))


#: The generated variants' names (see :func:`variants`).
NAMES: Final = ("gen-cpu200", "gen-cpu250", "gen-multigpu40", "gen-multigpu50")


def variants() -> list[Variant]:
    """The generated variants (needs ``../shared`` for ``cpu100``'s CPU-only request)."""
    cpu100 = _cpu_only_cpu(read("cpu100"))
    built = [
        Variant("gen-cpu200", _cpu_only, _cpu_of_cpu_only, 2.0 * cpu100),
        Variant("gen-cpu250", _cpu_only, _cpu_of_cpu_only, 2.5 * cpu100),
        Variant("gen-multigpu40", _multi_gpu, _multi_gpu_request, 0.40, _gpu_request),
        Variant("gen-multigpu50", _multi_gpu, _multi_gpu_request, 0.50, _gpu_request),
    ]
    assert tuple(v.name for v in built) == NAMES
    return built


def generate(name: str, *, seed: int = SEED) -> list[Row]:
    """The pod rows of generated variant ``name``."""
    for variant in variants():
        if variant.name == name:
            return variant.build(read("default"), seed=seed)
    raise ValueError(f"unknown generated workload {name!r}")


def write(name: str, path: Path, *, seed: int = SEED) -> Path:
    rows = generate(name, seed=seed)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def pods(name: str, *, seed: int = SEED) -> list[PodRequest]:
    """The pods of a trace in ``../shared`` (``default``, ``cpu100``, …) or of a generated
    variant (``gen-…``), as the fill experiment reads them."""
    if not name.startswith("gen-"):
        return load_pods(TRACES / f"openb_pod_list_{name}.csv")
    with tempfile.TemporaryDirectory() as folder:
        return load_pods(write(name, Path(folder) / f"{name}.csv", seed=seed))


def describe(rows: list[Row]) -> str:
    cpu_only = sum(1 for r in rows if _cpu_only(r))
    multi = sum(1 for r in rows if _multi_gpu(r))
    return (
        f"{len(rows)} pods, {cpu_only} CPU-only ({_cpu_only_cpu(rows) / 1000:.0f} cores), "
        f"{multi} multi-GPU ({100 * _multi_gpu_share(rows):.1f}% of the GPU request)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="describe every variant")
    parser.add_argument("--write", type=Path, help="save each variant's CSV in this folder")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    for reference in ("default", "cpu100", "multigpu30"):
        print(f"{reference}: {describe(read(reference))}")
    for variant in variants():
        rows = variant.build(read("default"), seed=args.seed)
        print(f"{variant.name}: {describe(rows)}")
        if args.write:
            args.write.mkdir(parents=True, exist_ok=True)
            write(variant.name, args.write / f"openb_pod_list_{variant.name}.csv", seed=args.seed)


if __name__ == "__main__":
    main()
