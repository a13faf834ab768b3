"""A kubelet PodResources server for fake-profile runs and tests.

It serves the real v1 proto over a real gRPC server on a unix socket, answering ``List``
(and ``Get``) from a fixed set of pods, so the agent's real client code runs unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from agent.podresources import api_pb2, api_pb2_grpc


@dataclass(frozen=True)
class FakeContainer:
    """One container and the device ids the device plugin gave it."""

    namespace: str
    pod: str
    container: str
    device_ids: tuple[str, ...]
    resource_name: str = "nvidia.com/gpu"


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, containers: Iterable[FakeContainer]) -> None:
        self.containers = list(containers)
        self.list_calls = 0

    def _pods(self) -> list[api_pb2.PodResources]:
        pods: dict[tuple[str, str], api_pb2.PodResources] = {}
        for c in self.containers:
            pod = pods.setdefault(
                (c.namespace, c.pod), api_pb2.PodResources(name=c.pod, namespace=c.namespace)
            )
            pod.containers.append(
                api_pb2.ContainerResources(
                    name=c.container,
                    devices=[
                        api_pb2.ContainerDevices(
                            resource_name=c.resource_name, device_ids=list(c.device_ids)
                        )
                    ],
                )
            )
        return list(pods.values())

    def List(  # noqa: N802 - the gRPC method name
        self, request: api_pb2.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.ListPodResourcesResponse:
        self.list_calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self._pods())

    def Get(  # noqa: N802
        self, request: api_pb2.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> api_pb2.GetPodResourcesResponse:
        for pod in self._pods():
            if (pod.namespace, pod.name) == (request.pod_namespace, request.pod_name):
                return api_pb2.GetPodResourcesResponse(pod_resources=pod)
        context.abort(grpc.StatusCode.NOT_FOUND, "pod not found")
        raise AssertionError("unreachable")


class FakePodResourcesServer:
    """A running gRPC PodResources server on ``socket_path``; stop it with :meth:`stop`."""

    def __init__(self, socket_path: Path, containers: Iterable[FakeContainer]) -> None:
        self.socket_path = socket_path
        self.lister = _Lister(containers)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self.lister, self._server)
        self._server.add_insecure_port(f"unix://{socket_path}")
        self._server.start()

    def stop(self) -> None:
        """Stop serving and remove the socket."""
        self._server.stop(grace=None)
        self.socket_path.unlink(missing_ok=True)
