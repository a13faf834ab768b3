"""The images' build stages run outside Docker, and what each final image copies, measured.

Run: ``.venv/bin/python -m bench.images [--write]`` (needs PyPI; ``make bench`` runs it).

There is no Docker engine on the machines this project is built on, so this runs each
Dockerfile's build stage as written: its ``COPY`` lines copy from the repository and its
``RUN`` lines run in a shell, with the stage's absolute paths (``/opt/...``, ``/wheels``)
moved under a scratch directory and ``python`` being this interpreter (3.11.7, the base
image's). Then it measures the tree the final stage copies (``/opt/stowage``: every
dependency from the lock, by hash, and Stowage) and checks that the image's entry point
starts from it. The base image itself is not measured (its registry is not reachable here).
``--write`` puts the table into docs/operations.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.docs import replace_section

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ("agent", "optimizer")
#: The final stage copies this tree out of the build stage.
SHIPPED = "/opt/stowage"


@dataclass(frozen=True)
class Measured:
    image: str
    packages: int
    mib: float
    largest: list[tuple[str, float]]


def build_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The (instruction, argument) pairs of the first stage, continuation lines joined."""
    steps: list[tuple[str, str]] = []
    pending = ""
    stages = 0
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        instruction, _, argument = line.partition(" ")
        if instruction.upper() == "FROM":
            stages += 1
            if stages > 1:
                break
            continue
        steps.append((instruction.upper(), argument.strip()))
    return steps


def run_stage(dockerfile: Path, scratch: Path) -> Path:
    """Run the build stage under ``scratch``; return where its ``/opt/stowage`` landed."""

    def moved(text: str) -> str:
        return text.replace("/opt/", f"{scratch}/opt/").replace("/wheels", f"{scratch}/wheels")

    workdir = scratch
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    shim = scratch / "shim"
    shim.mkdir(parents=True)
    (shim / "python").symlink_to(sys.executable)  # `python` in RUN lines is the base image's
    env["PATH"] = f"{shim}{os.pathsep}{env['PATH']}"
    for instruction, argument in build_stage(dockerfile):
        if instruction == "WORKDIR":
            workdir = scratch / argument.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, target = shlex.split(argument)
            for source in sources:
                origin = ROOT / source
                destination = workdir / target
                if origin.is_dir():
                    shutil.copytree(
                        origin,
                        destination if target != "./" else workdir / source,
                        dirs_exist_ok=True,
                    )
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(origin, destination / origin.name)
        elif instruction == "RUN":
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", moved(argument)],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise SystemExit(f"{dockerfile.name}: RUN failed:\n{done.stderr[-4000:]}")
        elif instruction not in {"ARG", "ENV", "LABEL"}:
            raise SystemExit(f"{dockerfile.name}: {instruction} is not handled by this runner")
    return scratch / SHIPPED.lstrip("/")


def _mib(path: Path) -> float:
    total = sum(f.lstat().st_size for f in path.rglob("*") if not f.is_symlink() and f.is_file())
    return total / 2**20


def measure(image: str, shipped: Path) -> Measured:
    site = next(shipped.glob("lib/python*/site-packages"))
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        sizes[entry.name] = _mib(entry) if entry.is_dir() else entry.stat().st_size / 2**20
    dists = list(site.glob("*.dist-info"))
    largest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    return Measured(image, len(dists), _mib(shipped), [(n, round(m, 1)) for n, m in largest])


def smoke(image: str, shipped: Path) -> None:
    """The image's entry point starts from the shipped tree alone."""
    command = {"agent": "stowage-agent", "optimizer": "stowage-optimizer"}[image]
    subprocess.run(
        [str(shipped / "bin" / command), "--help"], check=True, stdout=subprocess.DEVNULL
    )


def table(rows: list[Measured]) -> str:
    lines = [
        "| image | packages | `/opt/stowage` MiB | largest (MiB) |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        largest = ", ".join(f"{name} {mib}" for name, mib in row.largest)
        lines.append(f"| {row.image} | {row.packages} | {row.mib:.0f} | {largest} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/operations.md")
    args = parser.parse_args()
    rows = []
    for image in IMAGES:
        with tempfile.TemporaryDirectory(prefix=f"stowage-{image}-") as tmp:
            shipped = run_stage(ROOT / f"Dockerfile.{image}", Path(tmp))
            smoke(image, shipped)
            rows.append(measure(image, shipped))
        print(f"{image}: {rows[-1].mib:.0f} MiB in {SHIPPED}, {rows[-1].packages} packages")
    text = table(rows)
    print(text)
    if args.write:
        replace_section(
            "<!-- image-sizes:begin -->",
            "<!-- image-sizes:end -->",
            text,
            heading="Image sizes",
            path=ROOT / "docs" / "operations.md",
        )


if __name__ == "__main__":
    main()
