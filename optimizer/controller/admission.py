"""Gang admission: observe, cycle, commit.

Pods of a gang are created behind the scheduling gate ``stowage.io/gang`` (the webhook adds
it). Each cycle, the leader

0. finishes every admission a previous leader recorded but did not complete;
1. **observes** nodes, pods, PodGroups, agent reports and the database into one immutable
   snapshot (:mod:`.observe`), leaving out, with a reason, any object it cannot read;
2. runs the pure **cycle** on it (:func:`optimizer.planner.cycle.run_cycle`): filters,
   ``allocate``, ``preempt``, a Plan;
3. **commits** the plan (:mod:`.commit`): intents, pins, gates, evictions, events, status,
   audit; dry-run explains and audits only.

Pinned pods that kube-scheduler does not bind (the pin names a node it refuses, or nothing
binds them before the deadline) are rolled back: the whole gang is evicted, audited, and
its pods, recreated by their job controller behind the gate, are planned again. A pod's
gates cannot be added back once removed, nor its affinity changed, so a new pod is the only
way back (Kubernetes' pod update validation).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from optimizer.controller.audit import Audit
from optimizer.controller.cache import ClusterView, LiveView
from optimizer.controller.commit import (
    ADMITTED,
    INVALID,
    TIMED_OUT,
    WAITING,
    WOULD_ADMIT,
    Committer,
    Outcome,
)
from optimizer.controller.durations import DurationModel
from optimizer.controller.frameworks import frameworks_of
from optimizer.controller.kube import KubeApi, KubeError, NotFoundError, TooManyRequestsError
from optimizer.controller.observe import (
    GangView,
    Observed,
    OpenIntent,
    api_seconds,
    observe,
    pod_info,
)
from optimizer.controller.pods import is_gated, pinned_node
from optimizer.controller.queues import queue_status
from optimizer.metrics import ControllerMetrics
from optimizer.planner.cycle import CycleConfig, run_cycle
from optimizer.planner.filters import FILTERS, Filter, static_mask
from optimizer.planner.objects import NodeInfo
from optimizer.planner.plan import ClusterSnapshot, Plan
from optimizer.planner.queues import UsageHistory
from optimizer.planner.session import bound_usage
from optimizer.planner.snapshot import DEFAULT_LEVELS, TopologyLevel
from optimizer.store.models import GangStatus
from shared.labels import NAMESPACE_ENABLED
from shared.report import NodeReport

__all__ = [
    "ADMITTED",
    "INVALID",
    "TIMED_OUT",
    "WAITING",
    "WOULD_ADMIT",
    "GangAdmitter",
    "Outcome",
]

log = structlog.get_logger(__name__)

#: How long a released, pinned pod may stay unbound before its gang is rolled back.
BIND_DEADLINE: Final = timedelta(minutes=5)
#: How long closed intents and the status of gangs gone from the cluster are kept.
RETENTION: Final = timedelta(days=1)


class GangAdmitter:
    """The admission loop's body; call :meth:`cycle` while leader.

    Args:
        api: the Kubernetes adapter.
        engine: the optimizer's database (intents, gang status).
        audit: the audit log.
        reports: node name -> latest fresh agent report (GPU topology), read each cycle.
        stale: names of the nodes whose agent has gone stale, read each cycle.
        dry_run: plan, explain and audit without mutating the cluster.
        config: the cycle's plugins (policy, actions, filters).
        levels: the topology levels, outermost first.
        clock: the current time.
        view: where nodes and pods are read (default: listed from the API every cycle).
        bind_deadline: how long a released pod may stay unbound before a rollback.
        retention: how long finished intents and statuses are kept.
        fair_share_half_life: with a positive value, fair share counts each queue's past
            borrowing, decayed with this half-life (kept in memory: a new leader starts
            from none).
    """

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        audit: Audit,
        *,
        reports: Callable[[], Mapping[str, NodeReport]] = dict,
        stale: Callable[[], set[str]] = set,
        dry_run: bool = True,
        config: CycleConfig | None = None,
        policy: str | None = None,
        levels: Sequence[TopologyLevel] = DEFAULT_LEVELS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        view: ClusterView | None = None,
        bind_deadline: timedelta = BIND_DEADLINE,
        retention: timedelta = RETENTION,
        fair_share_half_life: timedelta = timedelta(0),
        metrics: ControllerMetrics | None = None,
    ) -> None:
        config = config or CycleConfig()
        if policy is not None:
            config = dataclasses.replace(config, policy=policy)
        config.validate()
        self._api = api
        self._view = view or LiveView(api)
        self._audit = audit
        self._reports = reports
        self._stale = stale
        self._dry_run = dry_run
        self._config = config
        self._levels = tuple(levels)
        self._clock = clock
        self._bind_deadline = bind_deadline
        self._retention = retention
        self._numbers = itertools.count(1)
        self.metrics = metrics or ControllerMetrics(CollectorRegistry())
        self.committer = Committer(api, engine, audit, dry_run=dry_run, clock=clock)
        self.last_plan: Plan | None = None
        #: The snapshot the last cycle planned on (demand samples are taken from it).
        self.last_snapshot: ClusterSnapshot | None = None
        self._statuses: dict[tuple[str, str], GangStatus] = {}
        self._queue_written: dict[str, dict[str, Any]] = {}
        self._history = UsageHistory(fair_share_half_life.total_seconds())
        self._durations = DurationModel(engine, clock=clock)

    def cycle(self) -> list[Outcome]:
        """Recover, observe, plan, commit; returns one outcome per managed gang seen."""
        number = next(self._numbers)
        cycle_id = uuid.uuid4().hex[:12]
        started = time.perf_counter()
        enabled = self._api.opted_in_namespaces(f"{NAMESPACE_ENABLED}=true")
        if not self._dry_run:
            self.committer.recover({p["metadata"]["uid"]: p for p in self._view.pods()})
        observed = self._observe(enabled)
        if not self._dry_run and self._roll_back_unbound(observed):
            observed = self._observe(enabled)
        observed_at = time.perf_counter()
        plan = run_cycle(observed.snapshot, config=self._config, number=number, cycle_id=cycle_id)
        self.last_plan = plan
        self.last_snapshot = observed.snapshot
        planned_at = time.perf_counter()
        ungated = 0
        for view in observed.gangs.values():
            released = len(view.live) - len(view.gated)
            if released and view.gated:
                ungated += released
                self.committer.event_once(
                    view,
                    reason="GangMemberUngated",
                    message=(
                        f"{released} pod(s) of gang {view.spec.name} run without the "
                        "stowage.io/gang gate (created before the webhook, or it was "
                        "bypassed, or already admitted); they are planned around"
                    ),
                    kind="Warning",
                )
        outcomes = self.committer.apply(plan, observed, self._statuses)
        self._write_queue_statuses(observed, plan)
        self.committer.collect(retention=self._retention, present=set(observed.gangs))
        committed_at = time.perf_counter()
        for step, seconds in (
            ("observe", observed_at - started),
            ("plan", planned_at - observed_at),
            ("commit", committed_at - planned_at),
        ):
            self.metrics.cycle_seconds.labels(step).observe(seconds)
        self.metrics.record_plan(
            plan,
            now_s=self._clock().timestamp(),
            created_s={
                f"{ns}/{name}": created
                for (ns, name), view in observed.gangs.items()
                if (created := _created_s(view)) is not None
            },
            timeouts_s={
                f"{ns}/{name}": v.spec.timeout_s for (ns, name), v in observed.gangs.items()
            },
            ungated=ungated,
        )
        log.info(
            "cycle committed",
            cycle=number,
            cycle_id=cycle_id,
            observe_ms=round((observed_at - started) * 1e3, 2),
            plan_ms=round((planned_at - observed_at) * 1e3, 2),
            commit_ms=round((time.perf_counter() - planned_at) * 1e3, 2),
            outcomes=len(outcomes),
        )
        return outcomes

    def _write_queue_statuses(self, observed: Observed, plan: Plan) -> None:
        """Patch each Queue's status where it changed (not in dry run); a queue that
        cannot be written is logged and skipped."""
        statuses = queue_status(observed.snapshot, plan, observed.queue_generations)
        for name, status in statuses.items():
            if self._queue_written.get(name) == status:
                continue
            if self._dry_run:
                log.info("queue status (dry run, not written)", queue=name, **status)
                self._queue_written[name] = status
                continue
            try:
                self._api.patch_queue_status(name, status)
            except KubeError as error:
                log.warning("queue status not written", queue=name, error=str(error))
                continue
            self._queue_written[name] = status

    def _observe(self, enabled: set[str]) -> Observed:
        intents = self.committer.open_intents()
        now = self._clock()
        self._statuses = self.committer.statuses()
        held_back = {
            key: status.message
            for key, status in self._statuses.items()
            if status.phase == TIMED_OUT and status.retry_at is not None and now < status.retry_at
        }
        pods = self._view.pods()
        frameworks = frameworks_of(p for p in pods if _namespace(p) in enabled)
        observed = observe(
            nodes=self._view.nodes(),
            pods=pods,
            pod_groups=self._api.list_pod_groups(),
            enabled=enabled,
            reports=self._reports(),
            stale=self._stale(),
            intents=[
                OpenIntent(i.plan_id, i.namespace, i.gang, i.placements["pods"]) for i in intents
            ],
            held_back=held_back,
            levels=self._levels,
            queues=self._api.list_queues(),
            now=now,
            volcano_groups=self._api.list_volcano_pod_groups(),
            owners=self._api.list_job_owners(frameworks) if frameworks else (),
            durations=self._durations.current(),
        )
        if self._history.half_life_s > 0 and observed.snapshot.queues:
            history = self._history.update(bound_usage(observed.snapshot), now.timestamp())
            observed.snapshot = dataclasses.replace(observed.snapshot, usage_history=history)
        for problem in observed.snapshot.base.unaccounted:
            log.warning("running pod not accounted", problem=problem)
        return observed

    # -- pins kube-scheduler does not honour ------------------------------------------------

    def _roll_back_unbound(self, observed: Observed) -> bool:
        """Evict every gang with a released, pinned pod that kube-scheduler has not bound
        within the deadline, or whose pin names a node the filters now refuse (cordoned,
        tainted, gone). Returns whether anything was rolled back."""
        now = self._clock()
        nodes = {n.name: n for n in observed.snapshot.nodes}
        filters = _filters(self._config)
        rolled = False
        refusals: dict[str, list[dict[str, Any]]] | None = None
        for key, view in observed.gangs.items():
            status = self._statuses.get(key)
            if status is None or status.phase not in (ADMITTED,):
                continue
            stuck: list[tuple[dict[str, Any], str, str]] = []
            for pod in view.live:
                spec = pod.get("spec") or {}
                node = pinned_node(pod)
                if spec.get("nodeName") or is_gated(pod) or node is None:
                    continue
                if refusals is None:  # listed once a cycle, and only when a pin is unbound
                    refusals = self._refusals()
                why, cause = self._unbindable(pod, node, nodes, filters), "node-refused"
                if why is None:
                    why, cause = (
                        _refused(pod, refusals, since=status.updated_at),
                        "failed-scheduling",
                    )
                if why is None and now - status.updated_at >= self._bind_deadline:
                    why = f"not bound to {node} within {int(self._bind_deadline.total_seconds())}s"
                    cause = "bind-deadline"
                if why is not None:
                    stuck.append((pod, why, cause))
            if not stuck:
                continue
            rolled = True
            self.metrics.rollbacks.labels(stuck[0][2]).inc()
            reason = (
                f"gang {view.spec.name} rolled back: {stuck[0][0]['metadata']['name']} "
                f"{stuck[0][1]}; its pods are evicted so their job controller recreates them "
                "behind the gate and the gang is planned again"
            )
            for pod in view.live:
                meta = pod["metadata"]
                where = f"pod/{meta.get('namespace')}/{meta['name']}"
                try:
                    self._api.evict_pod(meta.get("namespace") or "default", meta["name"])
                    outcome = "applied"
                except NotFoundError:
                    outcome = "gone"
                except TooManyRequestsError:
                    outcome = "refused:429"
                self._audit(
                    verb="roll-back-pod", obj=where, reason=reason, outcome=outcome, plan_id=None
                )
            self.committer.event_once(view, reason="GangRolledBack", message=reason, kind="Warning")
            self.committer.forget(key, now, reason)
        return rolled

    def _refusals(self) -> dict[str, list[dict[str, Any]]]:
        """FailedScheduling events by the uid of the pod they are about."""
        try:
            events = self._api.failed_scheduling_events()
        except KubeError:
            log.exception("FailedScheduling events not read; the bind deadline still applies")
            return {}
        by_uid: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            uid = (event.get("involvedObject") or {}).get("uid")
            if uid:
                by_uid.setdefault(str(uid), []).append(event)
        return by_uid

    def _unbindable(
        self,
        pod: dict[str, Any],
        node: str,
        nodes: Mapping[str, NodeInfo],
        filters: Sequence[Filter],
    ) -> str | None:
        if node not in nodes:
            return f"is pinned to node {node}, which no longer exists"
        try:
            info = pod_info(pod)
        except ValueError:
            return None
        mask, reasons = static_mask(info, [nodes[node]], filters, managed=False)
        if not mask[0]:
            return f"is pinned to {node}, which kube-scheduler refuses: {next(iter(reasons))}"
        return None


def _created_s(view: GangView) -> float | None:
    """When the gang's first member was created (seconds), if the API said."""
    times = [api_seconds(p["metadata"].get("creationTimestamp")) for p in view.members]
    return min((t for t in times if t is not None), default=None)


def _refused(
    pod: Mapping[str, Any], refusals: Mapping[str, list[dict[str, Any]]], *, since: datetime
) -> str | None:
    """kube-scheduler's FailedScheduling message about ``pod`` since its admission, if any."""
    for event in refusals.get(str(pod["metadata"].get("uid")), []):
        stamp = event.get("lastTimestamp") or event.get("eventTime") or ""
        try:
            at = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            continue
        if at >= since:
            return f"was refused by kube-scheduler: {event.get('message') or 'FailedScheduling'}"
    return None


def _filters(config: CycleConfig) -> list[Filter]:
    """The configured filters (static_mask keeps Kubernetes' own for a pod it places)."""
    return [FILTERS.get_or_raise(name) for name in config.filters]


def _namespace(pod: Any) -> str | None:
    meta = pod.get("metadata") if isinstance(pod, Mapping) else None
    return str(meta.get("namespace") or "default") if isinstance(meta, Mapping) else None
