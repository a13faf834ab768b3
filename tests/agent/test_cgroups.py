"""CPU and memory of the containers running GPU processes, read from cgroup files the way
the kubelet and cAdvisor read them (v2, v1, and hybrid hosts), and a fake machine's pods
measured through the real collector."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroups import CGROUP_ROOT, ContainerMeter, Reading, cgroup_paths, read_cgroup
from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.profile import load_profile
from shared.report import GpuProcess
from shared.units import GIB
from tests.agent.helpers import ManualClock

POD = (
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice/"
    "cri-containerd-1.scope"
)


def _files(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("cgroup", "files", "want"),
    [
        pytest.param(
            f"0::{POD}\n",
            {
                f"{POD}/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
                f"{POD}/memory.current": "1000\n",
                f"{POD}/memory.stat": "anon 700\ninactive_file 300\n",
            },
            Reading(cpu_s=2.5, memory_bytes=700),
            id="v2",
        ),
        pytest.param(
            f"0::{POD}\n",
            {f"{POD}/memory.current": "1000\n"},
            Reading(cpu_s=None, memory_bytes=1000),
            id="v2-without-cpu-controller-or-stat",
        ),
        pytest.param(
            f"12:memory:{POD}\n4:cpu,cpuacct:{POD}\n1:name=systemd:{POD}\n",
            {
                f"cpuacct/{POD}/cpuacct.usage": "3000000000\n",
                f"memory/{POD}/memory.usage_in_bytes": "5000\n",
                f"memory/{POD}/memory.stat": "cache 900\ntotal_inactive_file 1000\n",
            },
            Reading(cpu_s=3.0, memory_bytes=4000),
            id="v1",
        ),
        pytest.param(
            f"12:memory:{POD}\n4:cpu,cpuacct:{POD}\n0::/init.scope\n",
            {
                f"cpuacct/{POD}/cpuacct.usage": "1000000000\n",
                f"memory/{POD}/memory.usage_in_bytes": "5000\n",
            },
            Reading(cpu_s=1.0, memory_bytes=5000),
            id="hybrid-reads-the-v1-controllers",
        ),
        pytest.param(
            "0::/../../kubepods-burstable-podabc.slice/cri-containerd-1.scope\n",
            {f"{POD}/cpu.stat": "usage_usec 1000000\n", f"{POD}/memory.current": "10\n"},
            Reading(cpu_s=1.0, memory_bytes=10),
            id="v2-seen-from-a-private-cgroup-namespace",
        ),
        pytest.param(f"0::{POD}\n", {}, None, id="ended-container"),
        pytest.param(
            f"0::{POD}\n",
            {f"{POD}/cpu.stat": "usage_usec lots\n", f"{POD}/memory.current": "max\n"},
            None,
            id="garbage-in-the-files",
        ),
    ],
)
def test_read_cgroup(
    tmp_path: Path, cgroup: str, files: dict[str, str], want: Reading | None
) -> None:
    assert read_cgroup(_files(tmp_path, files), cgroup_paths(cgroup)) == want


def test_cores_are_the_usage_between_two_reads(tmp_path: Path) -> None:
    _files(
        tmp_path, {"proc/7/cgroup": f"0::{POD}\n", f"sys/fs/cgroup{POD}/cpu.stat": "usage_usec 0\n"}
    )
    clock = ManualClock(100.0)
    meter = ContainerMeter(
        proc_root=tmp_path / "proc", cgroup_root=tmp_path / CGROUP_ROOT, clock=clock
    )
    process = GpuProcess(pid=7, namespace="ml", pod="p", container="c")
    stranger = GpuProcess(pid=8)  # no pod: not measured
    [first] = meter.measure([process, process, stranger])  # one container, read once
    assert first.cpu_cores is None
    (tmp_path / f"sys/fs/cgroup{POD}/cpu.stat").write_text("usage_usec 30000000\n")
    clock.advance(10)
    [second] = meter.measure([process])
    assert second.cpu_cores == pytest.approx(3.0)
    assert (second.namespace, second.pod, second.container) == ("ml", "p", "c")


def test_a_fake_machine_reports_its_pods_cpu_and_memory(tmp_path: Path) -> None:
    clock = ManualClock(0.0)
    with FakeMachine(load_profile("hgx-h200"), clock=clock, node_name="n1") as machine:
        attributor = PodAttributor(
            socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
        )
        attributor.refresh()
        collector = Collector(
            nvml=Nvml(machine.binding),
            root=machine.root,
            node_name="n1",
            attributor=attributor,
            meter=ContainerMeter(
                proc_root=machine.root / "proc", cgroup_root=machine.root / CGROUP_ROOT, clock=clock
            ),
        )
        collector.start()
        try:
            machine.refresh_host()
            first = collector.collect().report.containers
            clock.advance(60)
            machine.refresh_host()
            [container] = collector.collect().report.containers
        finally:
            collector.close()
    [pod] = machine.profile.behaviour.pods
    assert [c.cpu_cores for c in first] == [None]
    assert (container.namespace, container.pod, container.container) == (
        pod.namespace,
        pod.pod,
        pod.container,
    )
    assert container.cpu_cores == pytest.approx(pod.cpu_cores)
    assert container.memory_working_set_bytes == pytest.approx(pod.host_memory_gib * GIB, rel=1e-6)
