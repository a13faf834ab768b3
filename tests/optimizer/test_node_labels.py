"""Node labels from agent reports, through the official client against the fake API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from kubefake import FakeApiServer, serve
from optimizer.controller.audit import StoreAudit
from optimizer.controller.kube import KubeApi
from optimizer.controller.node_labels import NodeLabeller, desired_labels, label_changes
from optimizer.store.queries import audit_entries
from shared.labels import (
    NODE_GPU_COUNT,
    NODE_GPU_HEALTH,
    NODE_GPU_PRODUCT,
    NODE_NUMA_COUNT,
    NODE_NVLINK_ISLAND_SIZE,
    NODE_POOL,
)
from shared.report import GpuHealth, NodeReport
from shared.samples import DGX_H100, L40S_PCIE, build_report

FOREIGN = {"kubernetes.io/hostname": "n", "nvidia.com/gpu.product": "H100", "team": "a"}


@pytest.fixture
def fake() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with serve() as (server, client):
        yield server, KubeApi(client)


def _node(server: FakeApiServer, name: str, labels: dict[str, str]) -> None:
    server.put("v1/nodes", {"metadata": {"name": name, "labels": labels}})


def _labels(server: FakeApiServer, name: str) -> dict[str, Any]:
    node = server.get("nodes", None, name)
    assert node is not None
    return dict(node["metadata"].get("labels") or {})


def test_labels_of_a_dgx_h100() -> None:
    labels = desired_labels(build_report(DGX_H100, node_name="n"), pool="train")
    assert labels[NODE_GPU_PRODUCT] == "NVIDIA-H100-80GB-HBM3"
    assert labels[NODE_GPU_COUNT] == "8"
    assert labels[NODE_NVLINK_ISLAND_SIZE] == "8"
    assert labels[NODE_NUMA_COUNT] == "2"
    assert labels[NODE_GPU_HEALTH] == "ok"
    assert labels[NODE_POOL] == "train"


def test_pcie_only_islands_are_single_gpus_and_health_is_the_worst() -> None:
    report = build_report(L40S_PCIE, node_name="n")
    gpus = [
        g.model_copy(update={"health": GpuHealth.DEGRADED}) if g.index == 2 else g
        for g in report.gpus
    ]
    labels = desired_labels(report.model_copy(update={"gpus": gpus}))
    assert labels[NODE_NVLINK_ISLAND_SIZE] == "1"
    assert labels[NODE_GPU_HEALTH] == "degraded"
    gpus[5] = gpus[5].model_copy(update={"health": GpuHealth.LOST})
    assert desired_labels(report.model_copy(update={"gpus": gpus}))[NODE_GPU_HEALTH] == "lost"


def test_changes_touch_owned_keys_only_and_never_carry_an_invalid_label() -> None:
    current = {**FOREIGN, "stowage.io/gpu.count": "4", "stowage.io/old": "x"}
    desired = {
        "stowage.io/gpu.count": "8",
        "stowage.io/pool": "x" * 64,  # too long
        "stowage.io/gpu.product": "bad value!",  # bad characters
        "team": "b",  # not ours
    }
    change = label_changes("n", current, desired)
    assert change.changes == {"stowage.io/gpu.count": "8", "stowage.io/old": None}
    assert len(change.rejected) == 3


def test_labeller_patches_what_changed_and_leaves_foreign_labels_alone(
    fake: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = fake
    _node(server, "fresh", {**FOREIGN, "stowage.io/gpu.count": "4"})
    _node(server, "stale", {**FOREIGN, "stowage.io/gpu.count": "8", "stowage.io/pool": "p"})
    long_name = build_report(DGX_H100, node_name="fresh")
    gpus = [g.model_copy(update={"product": "NVIDIA " + "Z" * 90}) for g in long_name.gpus]
    reports: dict[str, NodeReport] = {"fresh": long_name.model_copy(update={"gpus": gpus})}
    labeller = NodeLabeller(
        api,
        StoreAudit(engine),
        pool_of=lambda n: "bad pool!" if n == "fresh" else None,
        dry_run=False,
    )
    done = labeller.sync(reports)
    assert {c.node for c in done} == {"fresh", "stale"}
    fresh = _labels(server, "fresh")
    assert {k: fresh[k] for k in FOREIGN} == FOREIGN
    assert fresh["stowage.io/gpu.count"] == "8"
    assert len(fresh[NODE_GPU_PRODUCT]) <= 63  # shortened with a digest, accepted (no 422)
    assert NODE_POOL not in fresh  # the invalid pool name was never sent
    assert _labels(server, "stale") == FOREIGN  # stale agent: our labels removed, no others
    version = server.get("nodes", None, "fresh")["metadata"]["resourceVersion"]  # type: ignore[index]
    assert labeller.sync(reports) == []  # nothing changed: no patch
    assert server.get("nodes", None, "fresh")["metadata"]["resourceVersion"] == version  # type: ignore[index]
    with Session(engine) as session:
        entries = audit_entries(session)
    assert {(e["verb"], e["object"], e["outcome"]) for e in entries} == {
        ("label-node", "node/fresh", "applied"),
        ("label-node", "node/stale", "applied"),
    }
    assert any("agent report is missing" in e["reason"] for e in entries)


def test_dry_run_audits_and_sends_nothing(
    fake: tuple[FakeApiServer, KubeApi], engine: Engine
) -> None:
    server, api = fake
    _node(server, "n", dict(FOREIGN))
    labeller = NodeLabeller(api, StoreAudit(engine), dry_run=True)
    done = labeller.sync({"n": build_report(DGX_H100, node_name="n")})
    assert done[0].changes[NODE_GPU_COUNT] == "8"
    assert _labels(server, "n") == FOREIGN
    with Session(engine) as session:
        assert [e["outcome"] for e in audit_entries(session)] == ["dry-run"]


@pytest.mark.parametrize(
    ("lapsed", "present", "defer", "absent", "health"),
    [
        pytest.param(False, {}, True, set(), "ok", id="fresh"),
        pytest.param(True, {}, False, set(), "unknown", id="quiet-past-the-grace"),
        pytest.param(
            False,
            {"nvidia.com/gpu.product": "H100", "nvidia.com/gpu.memory": "81559"},
            True,
            {NODE_GPU_PRODUCT, "stowage.io/gpu.memory-mib"},
            "ok",
            id="gfd-labels-deferred-to",
        ),
        pytest.param(
            False, {"nvidia.com/gpu.product": "H100"}, False, set(), "ok", id="gfd-duplicated"
        ),
    ],
)
def test_desired_labels_through_outages_and_beside_gfd(
    lapsed: bool, present: dict[str, str], defer: bool, absent: set[str], health: str
) -> None:
    labels = desired_labels(
        build_report(DGX_H100, node_name="n"), lapsed=lapsed, present=present, defer_to_gfd=defer
    )
    assert labels[NODE_GPU_HEALTH] == health
    assert absent.isdisjoint(labels)
    assert labels[NODE_GPU_COUNT] == "8"  # GFD's count is not on these nodes
    assert desired_labels(None, lapsed=lapsed) == {}  # never reported: nothing
