"""Right-sizing: the rules on hand-built usage, and fake-profile agents whose pods leave
GPUs idle reporting through the real optimizer (SQLite and PostgreSQL) to its API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from agent.cgroups import CGROUP_ROOT, ContainerMeter
from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.pods import PodAttributor
from agent.profile import load_profile
from optimizer.forecast.resources import quantity
from optimizer.forecast.rightsizing import (
    GIB,
    GpuUsage,
    PodUsage,
    Workload,
    mig_profile_for,
    recommend,
)
from optimizer.store.usage import record_workload_pods
from tests.agent.helpers import ManualClock
from tests.optimizer.conftest import WallClock, auth

HOUR = 3600.0


def _gpu(
    uuid: str,
    activity: float,
    *,
    memory_gib: float = 10,
    product: str = "NVIDIA H100 80GB HBM3",
    signal: str = "gpm",
    hours: float = 2,
) -> GpuUsage:
    return GpuUsage(
        gpu_uuid=uuid,
        product=product,
        memory_bytes=80 * GIB,
        samples=100,
        first_s=0.0,
        last_s=hours * HOUR,
        activity_mean=activity,
        activity_max=activity,
        signal=signal,
        memory_peak_bytes=int(memory_gib * GIB),
    )


@pytest.mark.parametrize(
    ("gpus", "kind", "recommended"),
    [
        pytest.param([_gpu("a", 0.01), _gpu("b", 0.02)], "idle", "release the GPUs", id="idle"),
        pytest.param(
            [_gpu(str(i), 0.6 if i < 4 else 0.0) for i in range(8)],
            "gpu-count",
            "4 GPU(s)",
            id="eight-held-four-used",
        ),
        pytest.param([_gpu("a", 0.5, memory_gib=22)], "gpu-memory", "MIG 3g.40gb", id="mig"),
        pytest.param(
            [_gpu("a", 0.5, memory_gib=9, product="NVIDIA L40S")],
            "gpu-memory",
            "a 20% GPU share (stowage.io/gpu-milli=200)",
            id="share-without-mig",
        ),
        pytest.param([_gpu("a", 0.5, memory_gib=60)], None, None, id="needs-the-whole-gpu"),
        pytest.param([_gpu("a", 0.6), _gpu("b", 0.5)], None, None, id="busy-gang"),
        pytest.param([_gpu("a", 0.0, hours=0.5)], None, None, id="not-observed-long-enough"),
    ],
)
def test_recommend(gpus: list[GpuUsage], kind: str | None, recommended: str | None) -> None:
    found = recommend([PodUsage("ml", "p", tuple(gpus))], min_window_s=HOUR)
    assert [(r.kind, r.recommended) for r in found] == ([(kind, recommended)] if kind else [])


def test_a_recommendation_names_its_weakest_signal() -> None:
    pod = PodUsage("ml", "p", (_gpu("a", 0.0, signal="gpm"), _gpu("b", 0.0, signal="nvml-util")))
    [found] = recommend([pod], min_window_s=HOUR)
    assert found.signal == "nvml-util"


def test_a_gang_is_judged_across_its_pods() -> None:
    """Two pods of one PyTorchJob, four GPUs each; the second computes nothing: the job asks
    for four GPUs fewer (per pod, neither pod alone would say so of the other)."""
    busy = PodUsage("ml", "bert-0", tuple(_gpu(f"a{i}", 0.6) for i in range(4)))
    stray = PodUsage("ml", "bert-1", tuple(_gpu(f"b{i}", 0.0) for i in range(4)))
    job = Workload("PyTorchJob", "bert", "kubeflow.org/v1")
    owners = {("ml", "bert-0"): job, ("ml", "bert-1"): job}
    [found] = recommend([stray, busy], min_window_s=HOUR, owners=owners)
    assert (found.kind, found.workload, found.pods) == (
        "gpu-count",
        "PyTorchJob/bert",
        ("bert-0", "bert-1"),
    )
    assert (found.current, found.recommended) == ("8 GPUs", "4 GPU(s)")
    assert found.gpus == ("b0", "b1", "b2", "b3")
    assert "across 2 pods" in found.reason
    # without owners each pod is its own workload: one idle pod, one busy
    alone = recommend([stray, busy], min_window_s=HOUR)
    assert [(r.kind, r.workload) for r in alone] == [("idle", "Pod/bert-1")]


def test_replicas_of_a_deployment_fit_the_slice_the_hungriest_needs() -> None:
    web = Workload("Deployment", "web", "apps/v1")
    pods = [
        PodUsage("srv", f"web-{i}", (_gpu(f"g{i}", 0.4, memory_gib=4 + 8 * i),)) for i in range(3)
    ]
    [found] = recommend(pods, min_window_s=HOUR, owners={("srv", p.pod): web for p in pods})
    assert (found.kind, found.recommended) == ("gpu-memory", "MIG 3g.40gb")  # 20 GiB x 1.1
    assert found.current.endswith("per pod")


@pytest.mark.parametrize(
    ("product", "need_gib", "want"),
    [
        ("NVIDIA A100-SXM4-40GB", 4.5, "1g.5gb"),
        ("NVIDIA A100-SXM4-40GB", 12, "3g.20gb"),
        ("NVIDIA H100 80GB HBM3", 15, "1g.20gb"),
        ("NVIDIA H200", 100, "7g.141gb"),
        ("NVIDIA H200", 200, None),
        ("Tesla V100-SXM2-16GB", 2, None),
    ],
)
def test_mig_profile_for(product: str, need_gib: float, want: str | None) -> None:
    assert mig_profile_for(product, need_gib * GIB) == want


def test_fake_agents_with_idle_gpus_get_recommendations_from_the_api(
    client: TestClient, clock: WallClock, engine: Engine
) -> None:
    """dgx-a100's serving/embedder-3 barely runs; hgx-h200's llm/llama-70b-sft-0 holds 8 GPUs
    and runs on 4, with 12 cores and 96 GiB of host memory busy. Two hours of reports every
    five minutes through POST /v1/reports."""
    fake_clock = ManualClock(200.0)  # past dgx-a100's scripted XID and lost GPU
    nodes = {"gpu-node-1": "dgx-a100", "gpu-node-2": "hgx-h200"}
    machines = {
        n: FakeMachine(load_profile(p), clock=fake_clock, node_name=n) for n, p in nodes.items()
    }
    try:
        collectors = {}
        for name, machine in machines.items():
            attributor = PodAttributor(
                socket_path=machine.podresources_socket, proc_root=machine.root / "proc"
            )
            attributor.refresh()
            collector = Collector(
                nvml=Nvml(machine.binding),
                root=machine.root,
                node_name=name,
                attributor=attributor,
                meter=ContainerMeter(
                    proc_root=machine.root / "proc",
                    cgroup_root=machine.root / CGROUP_ROOT,
                    clock=fake_clock,
                ),
                wall_clock=clock,
            )
            collector.start()
            collectors[name] = collector
        for _ in range(25):
            for name, collector in collectors.items():
                machines[name].refresh_host()
                report = collector.collect().report
                answer = client.post(
                    "/v1/reports", content=report.model_dump_json(), headers=auth(name)
                )
                assert answer.status_code == 202, answer.text
            clock.advance(300)
            fake_clock.advance(300)
    finally:
        for machine in machines.values():
            machine.close()
    clock.advance(1)
    response = client.get("/v1/recommendations", headers=auth("sre@example.com"))
    assert response.status_code == 200, response.text
    # without the leader's view each pod is its own workload, and CPU and memory are not
    # judged (the requests are unknown)
    found = {(r["namespace"], r["workload"]): r for r in response.json()["items"]}
    assert set(found) == {("serving", "Pod/embedder-3"), ("llm", "Pod/llama-70b-sft-0")}
    idle = found["serving", "Pod/embedder-3"]
    assert idle["pods"] == ["embedder-3"]
    assert idle["kind"] == "idle"
    assert idle["signal"] == "process-sm"  # an A100: no GPM
    oversized = found["llm", "Pod/llama-70b-sft-0"]
    assert oversized["kind"] == "gpu-count"
    assert oversized["recommended"] == "4 GPU(s)"
    assert oversized["signal"] == "gpm"  # a Hopper GPU
    assert len(oversized["gpus"]) == 4
    only_idle = client.get(
        "/v1/recommendations", params={"kind": "idle"}, headers=auth("sre@example.com")
    ).json()["items"]
    assert [r["workload"] for r in only_idle] == ["Pod/embedder-3"]
    not_yet = client.get(
        "/v1/recommendations", params={"min_window": "3h"}, headers=auth("sre@example.com")
    ).json()["items"]
    assert not_yet == []
    metrics = client.get("/metrics").text
    assert 'stowage_idle_gpus{namespace="llm"} 4.0' in metrics
    assert 'stowage_recommendations{kind="idle"} 1.0' in metrics
    # the leader records the trainer as a PyTorchJob's, asking for 64 cores and 1 TiB
    job = Workload("PyTorchJob", "llama-70b-sft", "kubeflow.org/v1")
    with Session(engine) as session, session.begin():
        record_workload_pods(
            session,
            {("llm", "llama-70b-sft-0"): (job, {"trainer": {"cpu": 64.0, "memory": 2.0**40}})},
            now=clock(),
        )
    items = client.get(
        "/v1/recommendations", params={"namespace": "llm"}, headers=auth("sre@example.com")
    ).json()["items"]
    by_kind = {r["kind"]: r for r in items}
    assert set(by_kind) == {"gpu-count", "cpu", "memory"}
    assert {r["workload"] for r in items} == {"PyTorchJob/llama-70b-sft"}
    assert (by_kind["cpu"]["current"], by_kind["cpu"]["recommended"]) == ("64", "13800m")
    assert by_kind["cpu"]["container"] == "trainer"
    assert by_kind["memory"]["current"] == "1024Gi"
    assert by_kind["memory"]["recommended"] == quantity("memory", 96 * GIB * 1.15)
    assert by_kind["memory"]["reason"].startswith("oversized: decayed p90")


def test_durations_beyond_a_year_are_refused_not_crashed_on(client: TestClient) -> None:
    for name in ("window", "min_window"):
        answer = client.get(
            "/v1/recommendations", params={name: "200000000w"}, headers=auth("sre@example.com")
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["detail"].startswith(f"{name}: at most")
