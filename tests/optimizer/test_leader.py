"""Leader election on a Lease: two replicas against one fake API server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from kubefake import FakeApiServer, serve
from optimizer.controller.kube import ConflictError, KubeApi
from optimizer.controller.leader import LeaderElector
from tests.optimizer.conftest import WallClock


@pytest.fixture
def cluster() -> Iterator[tuple[FakeApiServer, KubeApi]]:
    with serve() as (server, client):
        yield server, KubeApi(client)


def _elector(api: KubeApi, identity: str, clock: WallClock) -> LeaderElector:
    return LeaderElector(
        api,
        namespace="stowage",
        name="stowage-controller",
        identity=identity,
        lease_duration=timedelta(seconds=15),
        clock=clock,
    )


def test_one_leads_and_the_other_takes_over_within_the_lease(
    cluster: tuple[FakeApiServer, KubeApi],
) -> None:
    server, api = cluster
    clock = WallClock()
    a, b = _elector(api, "a", clock), _elector(api, "b", clock)
    assert a.step()
    assert not b.step()
    for _ in range(5):  # a renews every 5 s; b never gets in
        clock.advance(5)
        assert a.step()
        assert not b.step()
    # a stops renewing (crashed or partitioned)
    clock.advance(10)
    assert not a.is_leader  # past its renew deadline: it stops acting before b may start
    assert not b.step()  # the lease has 5 s left
    clock.advance(5)
    assert b.step()  # within the lease duration of a's last renewal
    lease = server.get("leases", "stowage", "stowage-controller")
    assert lease is not None
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not a.step()  # a comes back as a follower


def test_release_hands_over_at_once(cluster: tuple[FakeApiServer, KubeApi]) -> None:
    _, api = cluster
    clock = WallClock()
    a, b = _elector(api, "a", clock), _elector(api, "b", clock)
    assert a.step()
    a.release()
    assert not a.is_leader
    assert b.step()


def test_a_stale_write_loses_the_race(cluster: tuple[FakeApiServer, KubeApi]) -> None:
    server, api = cluster
    clock = WallClock()
    a = _elector(api, "a", clock)
    assert a.step()
    clock.advance(20)  # expired: both b and c may try
    lease = api.get_lease("stowage", "stowage-controller")
    assert lease is not None
    b, c = _elector(api, "b", clock), _elector(api, "c", clock)
    assert b.step()
    lease["spec"]["holderIdentity"] = "c"  # c's write, based on the version b replaced
    with pytest.raises(ConflictError):
        api.replace_lease("stowage", lease)
    assert not c.step()
    assert server.get("leases", "stowage", "stowage-controller")["spec"]["holderIdentity"] == "b"  # type: ignore[index]
