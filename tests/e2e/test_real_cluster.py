"""Against a real cluster: runs when KUBECONFIG is set, skipped otherwise.

Read-mostly: it lists nodes and pods, plans one dry-run controller pass (no node or pod is
changed) and takes and releases a Lease in ``STOWAGE_E2E_NAMESPACE`` (default ``default``).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest

from optimizer.controller.admission import GangAdmitter
from optimizer.controller.audit import Audit
from optimizer.controller.kube import KubeApi
from optimizer.controller.leader import LeaderElector
from optimizer.controller.node_labels import NodeLabeller

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("KUBECONFIG"), reason="needs KUBECONFIG (a real cluster)"
    ),
]


class _Recorded:
    def __init__(self) -> None:
        self.entries: list[dict[str, str | None]] = []

    def __call__(
        self, *, verb: str, obj: str, reason: str, outcome: str, plan_id: str | None = None
    ) -> None:
        self.entries.append({"verb": verb, "obj": obj, "outcome": outcome})


@pytest.fixture
def api() -> KubeApi:
    import kubernetes

    kubernetes.config.load_kube_config()
    return KubeApi(kubernetes.client.ApiClient())


def test_dry_run_labels_change_nothing(api: KubeApi) -> None:
    before = {n["metadata"]["name"]: n["metadata"].get("labels") for n in api.list_nodes()}
    audit: Audit = _Recorded()
    NodeLabeller(api, audit, dry_run=True).sync({})
    after = {n["metadata"]["name"]: n["metadata"].get("labels") for n in api.list_nodes()}
    assert after == before


def test_lease_round_trip(api: KubeApi) -> None:
    namespace = os.environ.get("STOWAGE_E2E_NAMESPACE", "default")
    elector = LeaderElector(
        api, namespace=namespace, name=f"stowage-e2e-{datetime.now(UTC):%H%M%S}", identity="e2e"
    )
    assert elector.step()
    elector.release()
    assert not elector.is_leader


def test_dry_run_admission_cycle(api: KubeApi, tmp_path: object) -> None:
    from optimizer.store import migrate
    from optimizer.store.engine import make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/e2e.db")
    migrate.upgrade(engine)
    outcomes = GangAdmitter(api, engine, _Recorded(), dry_run=True).cycle()
    assert all(
        o.phase in ("waiting", "would-admit", "admitted", "invalid", "timed-out") for o in outcomes
    )
