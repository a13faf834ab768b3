"""Two controller replicas against one fake API server and one database: only the leader acts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kubefake import FakeApiServer, serve
from optimizer.controller.kube import KubeApi
from optimizer.controller.loop import Controller
from optimizer.settings import OptimizerSettings
from optimizer.store.queries import audit_entries
from optimizer.store.reports import ingest_report
from shared.labels import NODE_GPU_COUNT, NODE_GPU_HEALTH, NODE_GPU_MEMORY_MIB, NODE_GPU_PRODUCT
from shared.samples import DGX_H100, build_report
from tests.optimizer.conftest import WallClock


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with serve() as (server, client):
        server.put("v1/nodes", {"metadata": {"name": "gpu-1", "labels": {"team": "a"}}})
        yield server, KubeApi(client)


def _settings(tmp_path: Path, identity: str) -> OptimizerSettings:
    return OptimizerSettings(
        database_url=f"sqlite:///{tmp_path / 'unused.db'}",
        auth="none",
        controller="enforce",
        controller_identity=identity,
        lease_duration_s=15,
        stale_after_s=60,
    )


def _agent_reports(engine: Engine, clock: WallClock) -> None:
    """gpu-1's agent reports its DGX H100 topology now."""
    with Session(engine) as session, session.begin():
        ingest_report(
            session,
            build_report(DGX_H100, node_name="gpu-1", collected_at=clock()),
            received_at=clock(),
        )


def test_only_the_leader_mutates_and_the_other_takes_over(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine, tmp_path: Path
) -> None:
    server, api = cluster
    clock = WallClock()
    _agent_reports(engine, clock)
    a = Controller(api, engine, _settings(tmp_path, "replica-a"), clock=clock)
    b = Controller(api, engine, _settings(tmp_path, "replica-b"), clock=clock)
    assert a.step()
    assert not b.step()
    node = server.get("nodes", None, "gpu-1")
    assert node is not None
    assert node["metadata"]["labels"][NODE_GPU_COUNT] == "8"
    # The labels drift (someone removed ours); a keeps leading and repairs them, b stays idle.
    server.objects["v1/nodes", None, "gpu-1"].patch(
        {"metadata": {"labels": {NODE_GPU_COUNT: None}}}
    )
    clock.advance(5)
    _agent_reports(engine, clock)
    assert not b.step()
    assert a.step()
    with Session(engine) as session:
        actors = [e["actor"] for e in audit_entries(session)]
    assert actors == ["replica-a", "replica-a"]
    # a stops; b takes over within the lease and is the only one acting from then on
    clock.advance(16)
    server.objects["v1/nodes", None, "gpu-1"].patch(
        {"metadata": {"labels": {NODE_GPU_COUNT: None}}}
    )
    _agent_reports(engine, clock)
    assert b.step()
    with Session(engine) as session:
        assert audit_entries(session)[0]["actor"] == "replica-b"
    assert server.get("nodes", None, "gpu-1")["metadata"]["labels"][NODE_GPU_COUNT] == "8"  # type: ignore[index]


def test_the_controller_is_off_unless_asked(tmp_path: Path, engine: Engine) -> None:
    settings = _settings(tmp_path, "x").model_copy(update={"controller": "off"})
    with pytest.raises(ValueError, match="off"):
        Controller(None, engine, settings)  # type: ignore[arg-type]


def test_a_node_whose_agent_went_quiet_is_stale_for_the_planner(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine, tmp_path: Path
) -> None:
    _, api = cluster
    clock = WallClock()
    _agent_reports(engine, clock)
    controller = Controller(api, engine, _settings(tmp_path, "replica-a"), clock=clock)
    assert controller.stale() == set()
    assert set(controller.reports()) == {"gpu-1"}
    clock.advance(61)  # past STOWAGE_STALE_AFTER_S
    assert controller.stale() == {"gpu-1"}
    assert controller.reports() == {}


def test_labels_outlive_an_agent_outage_and_say_when_health_is_unknown(
    cluster: tuple[FakeApiServer, KubeApi], engine: Engine, tmp_path: Path
) -> None:
    """The agent reports, then goes quiet: past the stale time (60 s) the labels stay (Kueue
    flavors keep the node); past the grace (300 s more) only the health turns unknown; the
    agent's return puts it back."""
    server, api = cluster
    clock = WallClock()
    _agent_reports(engine, clock)
    controller = Controller(api, engine, _settings(tmp_path, "replica-a"), clock=clock)

    def labels() -> dict[str, str]:
        node = server.get("nodes", None, "gpu-1")
        assert node is not None
        return {k: v for k, v in node["metadata"]["labels"].items() if k.startswith("stowage.io/")}

    assert controller.step()
    reported = labels()
    assert reported[NODE_GPU_HEALTH] == "ok"
    clock.advance(120)  # stale
    assert controller.step()
    assert labels() == reported
    clock.advance(300)  # quiet past the grace
    assert controller.step()
    assert labels() == {**reported, NODE_GPU_HEALTH: "unknown"}
    _agent_reports(engine, clock)
    assert controller.step()
    assert labels() == reported


def test_where_gpu_feature_discovery_labels_the_node_its_labels_are_not_copied(
    engine: Engine, tmp_path: Path
) -> None:
    with serve() as (server, client):
        gfd = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/gpu.count": "8"}
        server.put("v1/nodes", {"metadata": {"name": "gpu-1", "labels": gfd}})
        clock = WallClock()
        _agent_reports(engine, clock)
        for mode, copied in (("defer", False), ("duplicate", True)):
            settings = _settings(tmp_path, "replica-a").model_copy(update={"gfd_labels": mode})
            assert Controller(KubeApi(client), engine, settings, clock=clock).step()
            node = server.get("nodes", None, "gpu-1")
            assert node is not None
            labels = node["metadata"]["labels"]
            assert (NODE_GPU_PRODUCT in labels) == copied
            assert (NODE_GPU_COUNT in labels) == copied
            assert NODE_GPU_MEMORY_MIB in labels  # GFD's nvidia.com/gpu.memory is absent here
            clock.advance(20)  # past the lease: the next controller leads
