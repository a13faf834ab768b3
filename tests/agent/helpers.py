"""Running the real agent code over a fake NVML and a materialised fake host."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.collector import Attributor, Collector
from agent.dcgm import DcgmExporter
from agent.fake.host import materialize
from agent.fake.nvml import FakeNvml
from agent.nvml import Nvml
from agent.profile import Profile


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fake_collector(
    profile: Profile,
    tmp_path: Path,
    *,
    clock: Callable[[], float] | None = None,
    attributor: Attributor | None = None,
    fake: FakeNvml | None = None,
    binding: object | None = None,
    dcgm: DcgmExporter | None = None,
) -> tuple[Collector, FakeNvml]:
    """A started :class:`Collector` over ``profile``'s fake NVML and fake host (``binding``
    wraps the fake, e.g. to count calls; ``dcgm`` is passed on)."""
    fake = fake or FakeNvml(profile, clock=clock or ManualClock())
    root = materialize(profile, tmp_path / "host")
    collector = Collector(
        nvml=Nvml(binding or fake),
        root=root,
        node_name="node-under-test",
        attributor=attributor,
        dcgm=dcgm,
    )
    collector.start()
    return collector, fake
