"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does.

Every replica serves the API; only the leader mutates the cluster. A replica becomes leader by
creating the Lease or by taking one whose holder has not renewed within
``leaseDurationSeconds``; the leader renews it every cycle. Writes carry the Lease's
resourceVersion, so when two replicas race only one write succeeds (the other gets 409 and
stays a follower). A leader that has not renewed within ``renew_deadline`` (shorter than the
lease) stops acting as leader, before anyone else may take over. The clock is injected, so
tests move time.

Why not the official client's ``kubernetes.leaderelection``: it owns the loop (``run()``
sleeps with ``time.sleep`` and calls back on a thread of its own), reads the wall clock, and
its LeaseLock builds client model objects through its own API calls. Stowage needs one
election step per controller cycle, an injected clock for tests without sleeping, and every
API call behind :class:`KubeApi` so each permission is declared and checked against the
chart. The protocol is the same: a Lease with holderIdentity, leaseDurationSeconds,
acquireTime, renewTime and leaseTransitions, written with optimistic concurrency.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog

from optimizer.controller.kube import ConflictError, KubeApi

log = structlog.get_logger(__name__)

#: Lease times use RFC 3339 with microseconds (``MicroTime``).
_MICRO_TIME: Final = "%Y-%m-%dT%H:%M:%S.%fZ"


def _format(at: datetime) -> str:
    return at.astimezone(UTC).strftime(_MICRO_TIME)


def _parse(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class LeaderElector:
    """One replica's view of the election.

    Args:
        api: the Kubernetes adapter.
        namespace: where the Lease lives (the controller's own namespace).
        name: the Lease's name.
        identity: this replica (its pod name).
        lease_duration: how long a holder's claim lasts without renewal.
        renew_deadline: how long this replica keeps acting as leader after its last renewal
            (default two thirds of the lease duration).
        clock: the current time.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: timedelta = timedelta(seconds=15),
        renew_deadline: timedelta | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        deadline = renew_deadline if renew_deadline is not None else lease_duration * 2 / 3
        if deadline >= lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        self._api = api
        self._namespace = namespace
        self._name = name
        self.identity = identity
        self._duration = lease_duration
        self._deadline = deadline
        self._clock = clock
        self._renewed_at: datetime | None = None

    @property
    def is_leader(self) -> bool:
        """Whether this replica holds an unexpired lease by its own last renewal."""
        return self._renewed_at is not None and self._clock() < self._renewed_at + self._deadline

    def step(self) -> bool:
        """Try to acquire or renew the lease once; returns :attr:`is_leader`."""
        now = self._clock()
        try:
            lease = self._api.get_lease(self._namespace, self._name)
            if lease is None:
                self._api.create_lease(self._namespace, self._new_lease(now))
                self._renewed_at = now
            else:
                self._contend(lease, now)
        except ConflictError:
            log.info("lost a lease race", lease=self._name, identity=self.identity)
        except Exception:
            log.exception("lease step failed", lease=self._name, identity=self.identity)
        return self.is_leader

    def release(self) -> None:
        """Give the lease up (on shutdown) so another replica takes over without waiting."""
        if not self.is_leader:
            return
        lease = self._api.get_lease(self._namespace, self._name)
        if lease is not None and lease["spec"].get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            with contextlib.suppress(ConflictError):
                self._api.replace_lease(self._namespace, lease)
        self._renewed_at = None

    def _contend(self, lease: dict[str, Any], now: datetime) -> None:
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        renewed = _parse(spec.get("renewTime"))
        duration = timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0))
        ours = holder == self.identity
        expired = not holder or renewed is None or now >= renewed + duration
        if not ours and not expired:
            self._renewed_at = None  # someone else leads
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if ours else 1)
        spec.update(
            {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._duration.total_seconds()),
                "renewTime": _format(now),
                "leaseTransitions": transitions,
            }
        )
        if not ours:
            spec["acquireTime"] = _format(now)
        self._api.replace_lease(self._namespace, lease)
        if not ours:
            log.info("became leader", lease=self._name, identity=self.identity, previous=holder)
        self._renewed_at = now

    def _new_lease(self, now: datetime) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._duration.total_seconds()),
                "acquireTime": _format(now),
                "renewTime": _format(now),
                "leaseTransitions": 0,
            },
        }
