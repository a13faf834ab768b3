"""Pod attribution: PodResources over real gRPC on a unix socket, cgroup fallback."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from agent.fake.podresources import FakeContainer, FakePodResourcesServer
from agent.pods import PodAttributor, list_gpu_owners, parse_cgroup, pod_of_pid
from agent.profile import load_profile
from shared.report import GpuProcess
from tests.agent.helpers import ManualClock, fake_collector

UID = "7d0c7f5e-1c1a-4a8b-9a51-1f0e6b7c2a10"
CID = "a" * 64
GPU_A = "GPU-11111111-2222-3333-4444-555555555555"
GPU_B = "GPU-66666666-7777-8888-9999-000000000000"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="pr"))  # unix socket paths must stay short
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize(
    ("text", "uid", "container_id"),
    [
        pytest.param(
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"
            f"{UID.replace('-', '_')}.slice/cri-containerd-{CID}.scope\n",
            UID,
            CID,
            id="v2-systemd-containerd",
        ),
        pytest.param(
            f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/crio-{CID}.scope\n",
            UID,
            CID,
            id="v2-systemd-crio-guaranteed",
        ),
        pytest.param(
            f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n11:cpu:/kubepods/besteffort/pod{UID}/{CID}\n",
            UID,
            CID,
            id="v1-cgroupfs-containerd",
        ),
        pytest.param(
            f"4:devices:/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/"
            f"docker-{CID}.scope\n",
            UID,
            CID,
            id="v1-systemd-docker",
        ),
        pytest.param(f"0::/kubepods/burstable/pod{UID}\n", UID, None, id="pod-level-only"),
    ],
)
def test_cgroup_paths_name_the_pod(text: str, uid: str, container_id: str | None) -> None:
    ref = parse_cgroup(text)
    assert ref is not None
    assert ref.pod_uid == uid
    assert ref.container_id == container_id


@pytest.mark.parametrize(
    "text", ["0::/user.slice/user-1000.slice/session-2.scope\n", "", "garbage"]
)
def test_processes_outside_kubernetes_have_no_pod(text: str) -> None:
    assert parse_cgroup(text) is None


def test_missing_proc_entry_is_none(tmp_path: Path) -> None:
    assert pod_of_pid(tmp_path, 12345) is None


def test_podresources_list_over_a_real_grpc_socket(socket_dir: Path) -> None:
    server = FakePodResourcesServer(
        socket_dir / "kubelet.sock",
        [
            FakeContainer(
                "ml", "trainer-0", "pytorch", (GPU_A, "GPU-ffffffff-ffff-ffff-ffff-ffffffffffff")
            ),
            FakeContainer(
                "ml", "trainer-0", "sidecar", ("cpu-thing",), resource_name="example.com/nic"
            ),
            FakeContainer("infer", "vllm-1", "server", (f"{GPU_B}::0",)),
            FakeContainer("infer", "vllm-2", "server", (f"{GPU_B}::1",)),
            FakeContainer(
                "mig",
                "tiny",
                "main",
                ("MIG-0a1b2c3d-0000-4000-8000-000000000001",),
                resource_name="nvidia.com/mig-1g.10gb",
            ),
        ],
    )
    try:
        owners = list_gpu_owners(socket_dir / "kubelet.sock")
    finally:
        server.stop()
    assert [(r.namespace, r.pod, r.container) for r in owners[GPU_A]] == [
        ("ml", "trainer-0", "pytorch")
    ]
    assert [r.pod for r in owners[GPU_B]] == ["vllm-1", "vllm-2"]  # time-sliced replicas
    assert "cpu-thing" not in owners
    assert owners["MIG-0a1b2c3d-0000-4000-8000-000000000001"][0].pod == "tiny"


def test_unreachable_kubelet_raises_rpc_error(socket_dir: Path) -> None:
    (socket_dir / "dead.sock").touch()
    with pytest.raises(grpc.RpcError):
        list_gpu_owners(socket_dir / "dead.sock", timeout_s=0.5)


def test_attributor_prefers_podresources_then_cgroup(socket_dir: Path, tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "500").mkdir(parents=True)
    (proc / "500" / "cgroup").write_text(f"0::/kubepods/burstable/pod{UID}/{CID}\n")
    server = FakePodResourcesServer(
        socket_dir / "kubelet.sock",
        [
            FakeContainer("ml", "trainer-0", "pytorch", (GPU_A,)),
            FakeContainer("a", "p1", "c", (f"{GPU_B}::0",)),
            FakeContainer("b", "p2", "c", (f"{GPU_B}::1",)),
        ],
    )
    clock = ManualClock()
    attributor = PodAttributor(
        socket_path=socket_dir / "kubelet.sock", proc_root=proc, refresh_s=30, clock=clock
    )
    try:
        attributor.refresh()
        attributor.refresh()  # within refresh_s: no second call
        assert server.lister.list_calls == 1
        clock.advance(31)
        attributor.refresh()
        assert server.lister.list_calls == 2
    finally:
        server.stop()
    sole = attributor.attribute(gpu_uuid=GPU_A, process=GpuProcess(pid=500))
    assert (sole.namespace, sole.pod, sole.container, sole.pod_uid) == (
        "ml",
        "trainer-0",
        "pytorch",
        UID,
    )
    shared = attributor.attribute(gpu_uuid=GPU_B, process=GpuProcess(pid=500))
    assert (shared.pod, shared.pod_uid) == (None, UID)
    # The kubelet going away keeps the last answer.
    clock.advance(31)
    attributor.refresh()
    assert attributor.attribute(gpu_uuid=GPU_A, process=GpuProcess(pid=9)).pod == "trainer-0"


def test_collector_attributes_profile_pods(socket_dir: Path, tmp_path: Path) -> None:
    """The whole path: fake NVML processes, fake kubelet, fake /proc -> attributed samples."""
    profile = load_profile("dgx-h100")
    collector, _fake = fake_collector(profile, tmp_path)
    report = collector.collect().report
    uuid_of = {g.index: g.uuid for g in report.gpus}
    containers = [
        FakeContainer(p.namespace, p.pod, p.container, tuple(uuid_of[g] for g in p.gpus))
        for p in profile.behaviour.pods
    ]
    server = FakePodResourcesServer(socket_dir / "kubelet.sock", containers)
    try:
        collector.attributor = PodAttributor(
            socket_path=socket_dir / "kubelet.sock", proc_root=collector.root / "proc"
        )
        collector.attributor.refresh()
        report = collector.collect().report
    finally:
        server.stop()
    by_gpu = {s.gpu_uuid: s for s in report.samples}
    trainer = by_gpu[uuid_of[2]].processes[0]
    assert (trainer.namespace, trainer.pod, trainer.container) == (
        "ml",
        "llama-pretrain-0",
        "trainer",
    )
    assert trainer.pod_uid == profile.behaviour.pods[0].uid
    assert by_gpu[uuid_of[4]].processes[0].pod == "eval-sweep-7"
    assert by_gpu[uuid_of[6]].processes == []
