"""Which pod and container own each GPU and each GPU process.

Two sources, best first:

1. the kubelet **PodResources** API (gRPC v1 ``List`` on the kubelet's unix socket): which
   container was given which device ids of ``nvidia.com/gpu`` (or ``nvidia.com/mig-*``);
   device ids are GPU UUIDs, ``MIG-`` UUIDs, or time-slicing replicas ``<uuid>::<n>``;
2. ``/proc/<pid>/cgroup`` as a fallback: the pod UID and container id in the cgroup path
   (cgroup v1 and v2; containerd, CRI-O and Docker path formats; cgroupfs and systemd
   drivers).

A process on a GPU that PodResources gives to exactly one container is attributed to that
container; otherwise the cgroup's pod UID is reported, without names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import structlog

from agent.podresources import api_pb2, api_pb2_grpc
from shared.report import GpuProcess

log = structlog.get_logger(__name__)

DEFAULT_SOCKET: Final = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
GPU_RESOURCE_PREFIXES: Final = ("nvidia.com/gpu", "nvidia.com/mig-")
_POD_UID: Final = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
_CONTAINER_ID: Final = re.compile(
    r"(?:cri-containerd-|crio-|docker-|containerd-)?([0-9a-f]{64})(?:\.scope)?$"
)


@dataclass(frozen=True)
class PodRef:
    """A container of a pod."""

    namespace: str | None
    pod: str | None
    container: str | None
    pod_uid: str | None = None
    container_id: str | None = None


def gpu_uuid_of_device_id(device_id: str) -> str:
    """The GPU or MIG UUID behind a device plugin id (drops ``::<n>`` time-slicing replicas)."""
    return device_id.split("::", 1)[0]


def list_gpu_owners(socket_path: Path, *, timeout_s: float = 5.0) -> dict[str, list[PodRef]]:
    """GPU/MIG UUID -> the containers PodResources says were given it.

    Raises:
        grpc.RpcError: the kubelet did not answer (callers fall back to cgroups).
    """
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        stub = api_pb2_grpc.PodResourcesListerStub(channel)
        response = stub.List(api_pb2.ListPodResourcesRequest(), timeout=timeout_s)
    owners: dict[str, list[PodRef]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            ref = PodRef(namespace=pod.namespace, pod=pod.name, container=container.name)
            for devices in container.devices:
                if not devices.resource_name.startswith(GPU_RESOURCE_PREFIXES):
                    continue
                for device_id in devices.device_ids:
                    uuid = gpu_uuid_of_device_id(device_id)
                    if ref not in owners.setdefault(uuid, []):
                        owners[uuid].append(ref)
    return owners


def pod_of_pid(proc_root: Path, pid: int) -> PodRef | None:
    """Pod UID and container id of ``pid`` from its cgroup file; None outside Kubernetes."""
    try:
        text = (proc_root / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    return parse_cgroup(text)


def parse_cgroup(text: str) -> PodRef | None:
    """Pod UID and container id from the text of a ``/proc/<pid>/cgroup`` file.

    Understands cgroup v2 (``0::/...``) and v1 (``N:controller:/...``) lines, the systemd
    driver (``kubepods-burstable-pod<uid_with_underscores>.slice``) and cgroupfs
    (``/kubepods/burstable/pod<uid>/<id>``), with containerd (``cri-containerd-<id>.scope``),
    CRI-O (``crio-<id>.scope``) and Docker (``docker-<id>.scope`` or a bare id).
    """
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        match = _POD_UID.search(path)
        if match is None:
            continue
        uid = match[1].replace("_", "-")
        last = path.rstrip("/").rsplit("/", 1)[-1]
        container = _CONTAINER_ID.search(last)
        return PodRef(
            namespace=None,
            pod=None,
            container=None,
            pod_uid=uid,
            container_id=container[1] if container else None,
        )
    return None


class PodAttributor:
    """Attributes GPU processes to pods, re-reading PodResources at most every ``refresh_s``.

    Args:
        socket_path: the kubelet PodResources socket.
        proc_root: where ``/proc`` is (``/proc`` with hostPID).
        refresh_s: how often :meth:`refresh` really asks the kubelet.
        clock: monotonic seconds, injectable.
    """

    def __init__(
        self,
        *,
        socket_path: Path = DEFAULT_SOCKET,
        proc_root: Path = Path("/proc"),
        refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_path = socket_path
        self.proc_root = proc_root
        self.refresh_s = refresh_s
        self.clock = clock
        self.owners: dict[str, list[PodRef]] = {}
        self._refreshed_at: float | None = None
        self._warned = False

    def refresh(self) -> None:
        """Re-read PodResources if ``refresh_s`` has passed; keep the last answer on failure."""
        now = self.clock()
        if self._refreshed_at is not None and now - self._refreshed_at < self.refresh_s:
            return
        self._refreshed_at = now
        if not self.socket_path.exists():
            return
        try:
            self.owners = list_gpu_owners(self.socket_path)
            self._warned = False
        except grpc.RpcError as error:
            if not self._warned:
                log.warning(
                    "podresources_unavailable", socket=str(self.socket_path), error=str(error)
                )
                self._warned = True

    def attribute(self, *, gpu_uuid: str, process: GpuProcess) -> GpuProcess:
        """``process`` with namespace, pod, container and pod UID filled where known."""
        owners = self.owners.get(gpu_uuid, [])
        cgroup = pod_of_pid(self.proc_root, process.pid)
        update: dict[str, str | None] = {}
        if len(owners) == 1:
            owner = owners[0]
            update = {"namespace": owner.namespace, "pod": owner.pod, "container": owner.container}
        if cgroup is not None:
            update["pod_uid"] = cgroup.pod_uid
        return process.model_copy(update=update) if update else process
