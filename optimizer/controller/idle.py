"""Reclaiming GPUs that pods hold idle: optional, after a grace period, audited, dry-run
first.

With ``STOWAGE_IDLE_RECLAIM_AFTER_S`` set, the leader looks (at most once a minute) for
workloads that right-sizing calls ``idle`` over the whole grace period: every GPU their pods
hold under 5% activity (a gang whose other pods work is never broken up). In a namespace
that opted in (``stowage.io/enabled=true``), each of its pods is evicted through the
Eviction API (a PodDisruptionBudget's refusal is respected), with an audit entry naming the
measurement and a Warning Event on the pod; its owner (a Job, a Deployment) decides whether
it comes back. A workload with a pod annotated ``stowage.io/idle-reclaim: "false"`` is never
reclaimed. In dry run the same decisions are audited as ``dry-run`` and
nothing is evicted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optimizer.controller.audit import Audit
from optimizer.controller.cache import ClusterView
from optimizer.controller.kube import KubeApi, KubeError
from optimizer.controller.observe import finished
from optimizer.controller.owners import workload_of
from optimizer.forecast.rightsizing import recommend
from optimizer.store.usage import pod_gpu_usage
from shared.labels import IDLE_RECLAIM, NAMESPACE_ENABLED

log = structlog.get_logger(__name__)

#: How often the leader looks for idle pods.
INTERVAL: Final = timedelta(seconds=60)
#: A pod's samples must span this share of the grace period (the first sample of the window
#: arrives up to one report interval after its start).
COVERAGE: Final = 0.9


class IdleReclaimer:
    """Finds and evicts pods holding idle GPUs past ``grace`` (zero: never)."""

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        audit: Audit,
        *,
        clock: Callable[[], datetime],
        grace: timedelta,
        dry_run: bool,
        view: ClusterView,
    ) -> None:
        self._api = api
        self._engine = engine
        self._audit = audit
        self._clock = clock
        self.grace = grace
        self._dry_run = dry_run
        self._view = view
        self._last: datetime | None = None

    def maybe_run(self) -> list[tuple[str, str, str]]:
        """Reclaim now if due; returns (namespace, pod, outcome) of each pod acted on."""
        now = self._clock()
        if self.grace <= timedelta(0) or (self._last is not None and now - self._last < INTERVAL):
            return []
        self._last = now
        with Session(self._engine) as session:
            usage = pod_gpu_usage(session, since=now - self.grace, until=now)
        pods = {
            (p["metadata"].get("namespace"), p["metadata"].get("name")): p
            for p in self._view.pods()
        }
        owners = {key: workload_of(pod) for key, pod in pods.items() if all(key)}
        idle = [
            r
            for r in recommend(
                usage, min_window_s=self.grace.total_seconds() * COVERAGE, owners=owners
            )
            if r.kind == "idle"
        ]
        if not idle:
            return []
        enabled = self._api.opted_in_namespaces(f"{NAMESPACE_ENABLED}=true")
        done = []
        for rec in idle:
            members = [pods.get((rec.namespace, name)) for name in rec.pods]
            if rec.namespace not in enabled or any(
                pod is None
                or finished(pod)
                or (pod["metadata"].get("annotations") or {}).get(IDLE_RECLAIM) == "false"
                for pod in members
            ):
                continue  # a workload is reclaimed whole or not at all
            for name, pod in zip(rec.pods, members, strict=True):
                assert pod is not None
                outcome = self._evict(
                    rec.namespace, name, pod, reason=rec.reason, signal=rec.signal
                )
                done.append((rec.namespace, name, outcome))
        return done

    def _evict(
        self, namespace: str, name: str, pod: dict[str, object], *, reason: str, signal: str
    ) -> str:
        why = (
            f"idle GPUs reclaimed after {self.grace.total_seconds() / 3600:g} h: {reason} "
            f"(signal: {signal})"
        )
        outcome = "dry-run"
        if not self._dry_run:
            try:
                outcome = self._api.evict_pod_outcome(namespace, name)
            except KubeError as error:
                log.warning("idle pod not evicted", pod=f"{namespace}/{name}", error=str(error))
                outcome = "failed"
        if outcome == "refused:429":
            why += "; refused by a PodDisruptionBudget"
        self._audit(
            verb="evict-idle-pod", obj=f"pod/{namespace}/{name}", reason=why, outcome=outcome
        )
        if outcome == "applied":
            try:
                self._api.create_event(
                    involved={**pod, "apiVersion": "v1", "kind": "Pod"},
                    reason="IdleGpusReclaimed",
                    message=why,
                    kind="Warning",
                    at=self._clock(),
                )
            except KubeError as error:
                log.warning("event not recorded", pod=f"{namespace}/{name}", error=str(error))
        log.info("idle pod", pod=f"{namespace}/{name}", outcome=outcome, reason=why)
        return outcome
