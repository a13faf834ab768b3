"""A whole fake GPU node for ``--fake-profile`` runs: NVML, host files and the kubelet.

Each part replaces the real one at its own boundary: a fake ``pynvml`` binding, a
materialised ``/sys`` and ``/proc`` under a temporary root, and a real gRPC PodResources
server on a unix socket that hands the profile's pods their GPUs.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from agent.fake.host import materialize, write_cgroups
from agent.fake.nvml import FakeNvml
from agent.fake.podresources import FakeContainer, FakePodResourcesServer
from agent.profile import Profile


class FakeMachine:
    """The fake parts of one node; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        profile: Profile,
        *,
        clock: Callable[[], float] | None = None,
        node_name: str = "",
    ) -> None:
        self.profile = profile
        booted = time.monotonic()
        self._clock = clock or (lambda: time.monotonic() - booted)
        self.binding = FakeNvml(profile, clock=self._clock, node_name=node_name)
        self._folder = tempfile.TemporaryDirectory(prefix="stowage-fake-")
        base = Path(self._folder.name)
        self.root = materialize(profile, base / "host")
        self.podresources_socket = base / "kubelet.sock"
        containers = [
            FakeContainer(
                namespace=pod.namespace,
                pod=pod.pod,
                container=pod.container,
                device_ids=tuple(self.binding.uuid_of(g) for g in pod.gpus),
            )
            for pod in profile.behaviour.pods
        ]
        self.kubelet = FakePodResourcesServer(self.podresources_socket, containers)

    def refresh_host(self) -> None:
        """Bring the host files that change with time (the containers' cgroups) to now."""
        write_cgroups(self.profile, self.root, self._clock())

    def close(self) -> None:
        """Stop the fake kubelet and remove the temporary files."""
        self.kubelet.stop()
        self._folder.cleanup()

    def __enter__(self) -> FakeMachine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
