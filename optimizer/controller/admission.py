"""Gang admission through scheduling gates: plan on a snapshot, then commit in crash-safe steps.

Pods of a gang are created behind the scheduling gate ``stowage.io/gang`` (the webhook adds
it). Each cycle, the leader

1. finishes every admission a previous leader recorded but did not complete (the intent);
2. reads nodes, pods and PodGroups into one immutable :class:`Snapshot` (pods bound or
   committed to a node use its capacity; pods of unfinished intents too);
3. plans the waiting gangs in order (queue, then age) with the planner, pure;
4. commits each admitted gang: **intent** written to the database, then a required
   ``kubernetes.io/hostname`` affinity added to **every** pod, then **every** gate removed,
   then the intent marked done. A crash between any two steps leaves an intent the next
   leader completes, so no gang is ever partly released and no pod is placed twice; a pod
   deleted mid-admission is replaced, in the intent, by its recreated twin, pinned to the
   same node as the slot it takes over.

Gangs that cannot be placed stay gated; the planner's reason becomes an Event on each pod
(only when it changes) and the gang's status, served by ``GET /v1/gangs``. After its timeout a
gang gets a ``GangTimeout`` event (and a condition on its PodGroup) and is retried with
exponential backoff. In dry-run mode it plans, writes events, status and audit entries, and
mutates nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import numpy as np
import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from optimizer.controller.audit import Audit
from optimizer.controller.cache import ClusterView, LiveView
from optimizer.controller.kube import (
    POD_GROUP_GROUP,
    POD_GROUP_VERSION,
    ConflictError,
    KubeApi,
    NotFoundError,
    RefusedError,
)
from optimizer.controller.pods import (
    GangSpec,
    SpecError,
    declared_gang,
    gang_spec,
    is_gang_member,
    is_gated,
    is_preemptible,
    node_allocatable,
    pin_patch,
    pinned_node,
    pod_request,
    ungate_patch,
)
from optimizer.planner.cluster import PodRequest
from optimizer.planner.gangs import GangRequest, place_gang
from optimizer.planner.policies import DEFAULT_POLICY, PlanContext, policy_or_raise
from optimizer.planner.snapshot import (
    DEFAULT_LEVELS,
    NodeFacts,
    RunningPod,
    Snapshot,
    TopologyLevel,
    build_snapshot,
)
from optimizer.store.models import GangIntent, GangStatus
from shared.labels import NAMESPACE_ENABLED
from shared.report import NodeReport

log = structlog.get_logger(__name__)

ADMITTING: Final = "admitting"
ADMITTED: Final = "admitted"
WAITING: Final = "waiting"
TIMED_OUT: Final = "timed-out"
INVALID: Final = "invalid"
WOULD_ADMIT: Final = "would-admit"  # dry-run
GPU_PRODUCT_LABELS: Final = ("stowage.io/gpu.product", "nvidia.com/gpu.product")
MAX_BACKOFF: Final = timedelta(minutes=10)


@dataclass
class GangView:
    """A gang as this cycle sees it."""

    spec: GangSpec
    members: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gated(self) -> list[dict[str, Any]]:
        return [p for p in self.members if is_gated(p)]


@dataclass(frozen=True)
class Outcome:
    """What a cycle decided for one gang."""

    namespace: str
    gang: str
    phase: str
    message: str
    placement: Mapping[str, str] = field(default_factory=dict)  # pod -> node


class GangAdmitter:
    """The admission loop's body; call :meth:`cycle` while leader.

    Args:
        api: the Kubernetes adapter.
        engine: the optimizer's database (intents, gang status).
        audit: the audit log.
        reports: node name -> latest fresh agent report (for GPU topology), read each cycle.
        dry_run: plan, explain and audit without mutating the cluster.
        policy: the per-pod placement policy inside a domain.
        levels: the topology levels, outermost first.
        clock: the current time.
        view: where nodes and pods are read (default: listed from the API every cycle).
    """

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        audit: Audit,
        *,
        reports: Callable[[], Mapping[str, NodeReport]] = dict,
        dry_run: bool = True,
        policy: str = DEFAULT_POLICY,
        levels: Sequence[TopologyLevel] = DEFAULT_LEVELS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        view: ClusterView | None = None,
    ) -> None:
        self._api = api
        self._view = view or LiveView(api)
        self._engine = engine
        self._audit = audit
        self._reports = reports
        self._dry_run = dry_run
        self._policy = policy_or_raise(policy)
        self._levels = tuple(levels)
        self._clock = clock
        self._retry_at: dict[tuple[str, str], datetime] = {}
        self._backoff: dict[tuple[str, str], timedelta] = {}
        self._told: set[tuple[Any, str]] = set()  # (pod uid or gang key, message) reported
        # this cycle's inputs, kept for preemption trials
        self._enabled: set[str] = set()
        self._pods: list[dict[str, Any]] = []
        self._facts: list[NodeFacts] = []
        self._running: list[tuple[str | None, RunningPod]] = []
        self._placed: list[RunningPod] = []
        self._groups: dict[tuple[str, str], dict[str, Any]] = {}

    # -- the cycle -----------------------------------------------------------------------

    def cycle(self) -> list[Outcome]:
        """Recover, snapshot, plan, commit; returns one outcome per gang seen."""
        enabled = self._api.opted_in_namespaces(f"{NAMESPACE_ENABLED}=true")
        if not self._dry_run:
            self._recover()
        pods = self._view.pods()
        groups = {
            (g["metadata"].get("namespace"), g["metadata"]["name"]): g
            for g in self._api.list_pod_groups()
        }
        self._groups = groups
        gangs, outcomes = self._gangs(pods, enabled, groups)
        intents = self._open_intents()
        self._enabled = enabled
        self._pods = pods
        self._placed = []
        snapshot = self._snapshot(self._view.nodes(), pods, intents)
        for problem in snapshot.unaccounted:
            log.warning("running pod not accounted", problem=problem)
        ctx = PlanContext.for_workload(
            [pod_request(p) for p in pods if p.get("spec")], rng=np.random.default_rng(0)
        )
        now = self._clock()
        for gang in sorted(gangs, key=lambda g: self._order(g)):
            if any(
                i.namespace == gang.spec.namespace and i.gang == gang.spec.name for i in intents
            ):
                continue  # an unfinished admission owns it
            outcomes.append(self._decide(gang, snapshot, ctx, now))
        return outcomes

    def _order(self, gang: GangView) -> tuple[str, str, str]:
        oldest = min((p["metadata"].get("creationTimestamp") or "") for p in gang.members)
        return (gang.spec.queue or "", oldest, gang.spec.name)

    # -- reading the cluster -------------------------------------------------------------

    def _gangs(
        self,
        pods: Iterable[dict[str, Any]],
        enabled: set[str],
        groups: Mapping[tuple[str, str], Mapping[str, Any]],
    ) -> tuple[list[GangView], list[Outcome]]:
        gangs: dict[tuple[str, str], GangView] = {}
        invalid: list[Outcome] = []
        level_names = [level.name for level in self._levels]
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("namespace") not in enabled or not is_gang_member(pod):
                continue
            if _finished(pod) or meta.get("deletionTimestamp"):
                continue
            try:
                spec = gang_spec(pod, pod_groups=groups, levels=level_names)
                pod_request(pod)
            except SpecError as error:
                invalid.append(self._invalid(pod, str(error)))
                continue
            view = gangs.setdefault(spec.key, GangView(spec))
            view.members.append(pod)
        return list(gangs.values()), invalid

    def _snapshot(
        self,
        nodes: Sequence[dict[str, Any]],
        pods: Sequence[dict[str, Any]],
        intents: Sequence[GangIntent],
    ) -> Snapshot:
        reports = self._reports()
        facts: list[NodeFacts] = []
        for node in nodes:
            meta = node["metadata"]
            labels = meta.get("labels") or {}
            cpu, memory, gpus = node_allocatable(node)
            model = next((labels[k] for k in GPU_PRODUCT_LABELS if k in labels), "gpu")
            facts.append(
                NodeFacts(
                    name=meta["name"],
                    labels=labels,
                    cpu_milli=cpu,
                    memory_mib=memory,
                    report=reports.get(meta["name"]),
                    gpu_model=model,
                    gpu_count=gpus,
                )
            )
        committed: dict[str, tuple[str, tuple[int, ...]]] = {}
        for intent in intents:
            for slot in intent.placements["pods"]:
                committed[slot["uid"]] = (slot["node"], tuple(slot["gpus"]))
        running: list[tuple[str | None, RunningPod]] = []
        present = set()
        for pod in pods:
            if _finished(pod) or not pod.get("spec"):
                continue
            uid = pod["metadata"].get("uid")
            present.add(uid)
            host: str | None = pod["spec"].get("nodeName")
            held: tuple[int, ...] = ()
            if not host and uid in committed:
                host, held = committed[uid]
            elif not host and not is_gated(pod):
                host = pinned_node(pod)  # released by us, not bound yet
            if host:
                running.append((uid, RunningPod(host, pod_request(pod), held)))
        for intent in intents:  # slots whose pod is gone: keep their room for the twin
            for slot in intent.placements["pods"]:
                if slot["uid"] not in present:
                    request = PodRequest(slot["name"], *slot["request"])
                    running.append((None, RunningPod(slot["node"], request, tuple(slot["gpus"]))))
        self._facts, self._running = facts, running
        return build_snapshot(facts, [pod for _, pod in running], levels=self._levels, lenient=True)

    # -- deciding ------------------------------------------------------------------------

    def _decide(
        self,
        gang: GangView,
        snapshot: Snapshot,
        ctx: PlanContext,
        now: datetime,
    ) -> Outcome:
        spec = gang.spec
        gated = sorted(gang.gated, key=lambda p: p["metadata"]["name"])
        released = len(gang.members) - len(gated)
        status = self._status(spec)
        if not gated:
            return Outcome(spec.namespace, spec.name, status.phase if status else ADMITTED, "")
        if released:
            self._event_once(
                gang,
                reason="GangMemberUngated",
                message=(
                    f"{released} pod(s) of gang {spec.name} run without the stowage.io/gang "
                    "gate (created before the webhook, or it was bypassed); they are "
                    "scheduled by the default scheduler and planned around"
                ),
                kind="Warning",
            )
        need = max(spec.size - released, 1)
        if len(gated) < need:
            message = f"waiting for members: {len(gated)} of {spec.size} pods exist" + (
                f" ({released} already running)" if released else ""
            )
            return self._wait(gang, message, now, status)
        key = spec.key
        if key in self._retry_at and now < self._retry_at[key]:
            return Outcome(spec.namespace, spec.name, TIMED_OUT, status.message if status else "")
        request = _largest([pod_request(p) for p in gated])
        wanted = GangRequest(
            spec.name,
            request,
            size=need,
            topology_level=spec.topology_level,
            required=spec.required,
            max_size=min(len(gated), spec.max_size or len(gated)),
        )
        decision = place_gang(
            snapshot.state, wanted, policy=self._policy, ctx=ctx, domains=snapshot.domains
        )
        if not decision.admitted:
            reason = decision.reason or "no room"
            reason += self._preempt(gang, wanted, ctx, now)
            return self._wait(gang, reason, now, status)
        placements = list(zip(gated, decision.placements, strict=False))
        names = snapshot.state.names
        for _, placement in placements:
            snapshot.state.allocate(placement.node, placement.gpus, request)
            ctx.note_placed(snapshot.state, placement.node)
            self._placed.append(RunningPod(names[placement.node], request, placement.gpus))
        where = {pod["metadata"]["name"]: names[p.node] for pod, p in placements}
        domain = f" in {spec.topology_level} {decision.domain}" if decision.domain else ""
        message = f"admitted {len(placements)} pods{domain}: " + ", ".join(
            f"{pod} -> {node}" for pod, node in sorted(where.items())
        )
        plan_id = uuid.uuid4().hex
        if self._dry_run:
            self._audit_admission(spec, message, outcome="dry-run", plan_id=plan_id)
            self._set_status(gang, WOULD_ADMIT, f"dry-run: would have {message}", now, plan_id)
            return Outcome(spec.namespace, spec.name, WOULD_ADMIT, message, where)
        slots = [
            {
                "name": pod["metadata"]["name"],
                "uid": pod["metadata"]["uid"],
                "node": names[p.node],
                "gpus": list(p.gpus),
                "request": [
                    request.cpu_milli,
                    request.memory_mib,
                    request.num_gpu,
                    request.gpu_milli,
                ],
            }
            for pod, p in placements
        ]
        self._write_intent(spec, plan_id, slots, decision.domain, now)
        self._audit_admission(spec, message, outcome="intent", plan_id=plan_id)
        self._complete(plan_id, {p["metadata"]["uid"]: p for p in gang.members})
        self._set_status(gang, ADMITTED, message, now, plan_id, where)
        for pod, node in ((p, where[p["metadata"]["name"]]) for p, _ in placements):
            self._event(pod, "GangAdmitted", f"gang {spec.name} {message}; this pod -> {node}")
        self._group_event(spec, "GangAdmitted", f"gang {spec.name} {message}")
        self._retry_at.pop(key, None)
        self._backoff.pop(key, None)
        return Outcome(spec.namespace, spec.name, ADMITTED, message, where)

    def _audit_admission(self, spec: GangSpec, message: str, *, outcome: str, plan_id: str) -> None:
        obj = f"gang/{spec.namespace}/{spec.name}"
        self._audit(verb="admit-gang", obj=obj, reason=message, outcome=outcome, plan_id=plan_id)

    # -- preemption ----------------------------------------------------------------------

    def _preempt(self, gang: GangView, wanted: GangRequest, ctx: PlanContext, now: datetime) -> str:
        """Evict the fewest lower-priority gangs whose room lets ``wanted`` fit (lowest
        priority, then newest, first); returns a clause for the waiting message. Whole gangs
        only, never a non-preemptible one; a PodDisruptionBudget's 429 stops it (the plan is
        redone next cycle, nothing is forced)."""
        priority = _priority(gang.members)
        candidates = self._victims(below=priority, exclude=gang.spec.key)
        if not candidates:
            return ""
        chosen: list[GangView] = []
        for victim in candidates:
            chosen.append(victim)
            freed = {p["metadata"].get("uid") for v in chosen for p in v.members}
            running = [pod for uid, pod in self._running if uid not in freed] + self._placed
            trial = build_snapshot(self._facts, running, levels=self._levels, lenient=True)
            local = PlanContext(
                rng=np.random.default_rng(0),
                shapes=ctx.shapes,
                rollout_shapes=ctx.rollout_shapes,
            )
            if place_gang(
                trial.state, wanted, policy=self._policy, ctx=local, domains=trial.domains
            ).admitted:
                break
        else:
            return f"; preempting every lower-priority gang ({len(candidates)}) would not make room"
        names = ", ".join(f"{v.spec.namespace}/{v.spec.name}" for v in chosen)
        clause = f"; {len(chosen)} lower-priority gang(s) could be preempted: {names}"
        if self._dry_run:
            for victim in chosen:
                self._audit(
                    verb="preempt-gang",
                    obj=f"gang/{victim.spec.namespace}/{victim.spec.name}",
                    reason=f"for gang {gang.spec.namespace}/{gang.spec.name} (priority {priority})",
                    outcome="dry-run",
                )
            return clause
        plan_id = uuid.uuid4().hex
        for victim in chosen:
            why = (
                f"preempted by gang {gang.spec.namespace}/{gang.spec.name} (priority "
                f"{priority}), which needs {wanted.size} pods and cannot fit otherwise"
            )
            for pod in sorted(victim.members, key=lambda p: p["metadata"]["name"]):
                meta = pod["metadata"]
                try:
                    self._api.evict_pod(meta.get("namespace") or "default", meta["name"])
                except RefusedError as refused:
                    if refused.status != 429:
                        raise
                    self._audit(
                        verb="evict-pod",
                        obj=f"pod/{meta.get('namespace')}/{meta['name']}",
                        reason=f"{why}; refused by a PodDisruptionBudget",
                        outcome="refused:429",
                        plan_id=plan_id,
                    )
                    return (
                        f"; preempting {victim.spec.namespace}/{victim.spec.name} was refused "
                        "by a PodDisruptionBudget; the plan is redone next cycle"
                    )
                self._audit(
                    verb="evict-pod",
                    obj=f"pod/{meta.get('namespace')}/{meta['name']}",
                    reason=why,
                    outcome="applied",
                    plan_id=plan_id,
                )
                self._event(pod, "Preempted", why, kind="Warning")
        return f"; preempting {len(chosen)} lower-priority gang(s): {names}"

    def _victims(self, *, below: int, exclude: tuple[str, str]) -> list[GangView]:
        """Running gangs (every member released) of lower priority whose members are all
        preemptible, lowest priority first, then newest first."""
        running: dict[tuple[str, str], GangView] = {}
        for pod in self._pods:
            meta = pod["metadata"]
            if meta.get("namespace") not in self._enabled or not is_gang_member(pod):
                continue
            if _finished(pod) or meta.get("deletionTimestamp"):
                continue
            name = declared_gang(pod)
            key = (meta.get("namespace") or "default", name or "")
            view = running.setdefault(key, GangView(GangSpec(key[0], key[1], size=1)))
            view.members.append(pod)
        eligible = [
            v
            for key, v in running.items()
            if key != exclude
            and not v.gated
            and all(is_preemptible(p) for p in v.members)
            and _priority(v.members) < below
        ]
        newest = {
            v.spec.key: max(p["metadata"].get("creationTimestamp") or "" for p in v.members)
            for v in eligible
        }
        eligible.sort(key=lambda v: newest[v.spec.key], reverse=True)
        eligible.sort(key=lambda v: _priority(v.members))
        return eligible

    def _wait(
        self,
        gang: GangView,
        message: str,
        now: datetime,
        status: GangStatus | None,
    ) -> Outcome:
        spec = gang.spec
        phase = WAITING
        first_seen = status.first_seen if status else now
        if now - first_seen >= timedelta(seconds=spec.timeout_s):
            phase = TIMED_OUT
            backoff = min(self._backoff.get(spec.key, timedelta(seconds=30)) * 2, MAX_BACKOFF)
            self._backoff[spec.key] = backoff
            self._retry_at[spec.key] = now + backoff
            if status is None or status.phase != TIMED_OUT:
                text = f"gang {spec.name} not placed within {spec.timeout_s}s: {message}"
                for pod in gang.members:
                    self._event(pod, "GangTimeout", text, kind="Warning")
                self._group_event(spec, "GangTimeout", text, kind="Warning")
                self._pod_group_condition(spec, text, now)
        changed = status is None or status.message != message or status.phase != phase
        self._set_status(gang, phase, message, now, None)
        if changed and phase == WAITING:
            for pod in gang.gated:
                self._event(pod, "GangWaiting", f"gang {spec.name} waits: {message}")
            self._group_event(spec, "GangWaiting", f"gang {spec.name} waits: {message}")
        return Outcome(spec.namespace, spec.name, phase, message)

    def _invalid(self, pod: dict[str, Any], message: str) -> Outcome:
        meta = pod["metadata"]
        if (meta.get("uid"), message) not in self._told:
            self._told.add((meta.get("uid"), message))
            self._event(pod, "InvalidGang", message, kind="Warning")
        return Outcome(meta.get("namespace") or "", meta["name"], INVALID, message)

    # -- committing (crash-safe) ---------------------------------------------------------

    def _recover(self) -> None:
        intents = self._open_intents()
        if not intents:
            return
        pods = {p["metadata"]["uid"]: p for p in self._view.pods()}
        for intent in intents:
            log.info("finishing an earlier admission", plan_id=intent.plan_id, gang=intent.gang)
            self._complete(intent.plan_id, pods)

    def _complete(self, plan_id: str, pods_by_uid: Mapping[str, dict[str, Any]]) -> None:
        """Pin every slot's pod, then release every gate, then close the intent. Idempotent:
        each step skips what is already done, so it resumes after a crash anywhere."""
        with Session(self._engine) as session:
            intent = session.get(GangIntent, plan_id)
            if intent is None or intent.state != ADMITTING:
                return
            slots = [dict(s) for s in intent.placements["pods"]]
            namespace, gang = intent.namespace, intent.gang
        pods = dict(pods_by_uid)
        twins = [
            p
            for p in pods.values()
            if p["metadata"].get("namespace") == namespace
            and declared_gang(p) == gang
            and is_gated(p)
            and pinned_node(p) is None
            and p["metadata"]["uid"] not in {s["uid"] for s in slots}
            and not _finished(p)
        ]
        changed = False
        for slot in slots:
            if slot["uid"] in pods:
                continue
            if not twins:
                log.info("intent waits for a recreated pod", plan_id=plan_id, slot=slot["name"])
                continue
            twin = twins.pop(0)
            log.info("recreated pod takes a slot", plan_id=plan_id, pod=twin["metadata"]["name"])
            slot.update(name=twin["metadata"]["name"], uid=twin["metadata"]["uid"])
            changed = True
        if changed:
            self._update_intent(plan_id, slots)
        members = [pods[s["uid"]] for s in slots if s["uid"] in pods]
        for slot in slots:  # step 1: pin all
            pod = pods.get(slot["uid"])
            if pod is None or not is_gated(pod) or pinned_node(pod) == slot["node"]:
                continue
            pods[slot["uid"]] = self._patch(pod, plan_id, node=slot["node"])
        if len(members) < len(slots):
            return  # a slot still waits for its pod: release nothing yet
        for slot in slots:  # step 2: release all
            pods[slot["uid"]] = self._patch(pods[slot["uid"]], plan_id, node=None)
        with Session(self._engine) as session, session.begin():
            row = session.get(GangIntent, plan_id)
            if row is not None:
                row.state = ADMITTED

    def _patch(self, pod: dict[str, Any], plan_id: str, *, node: str | None) -> dict[str, Any]:
        """Pin ``pod`` to ``node`` or, with no node, remove its gate. A stale read (409) is
        re-read once and the step redone, unless the fresh pod shows it done already."""
        meta = pod["metadata"]
        namespace, name = meta.get("namespace") or "default", meta["name"]
        where = f"pod/{namespace}/{name}"
        for attempt in (1, 2):
            if (pinned_node(pod) is not None) if node else not is_gated(pod):
                return pod
            patch = pin_patch(pod, node) if node else ungate_patch(pod)
            try:
                updated = self._api.patch_pod(namespace, name, patch)
                break
            except ConflictError:
                fresh = self._api.get_pod(namespace, name)
                if attempt == 2 or fresh is None or fresh["metadata"].get("uid") != meta.get("uid"):
                    raise NotFoundError(where) from None
                pod = fresh
        self._audit(
            verb="pin-pod" if node else "release-pod",
            obj=where,
            reason=f"gang admission pins the pod to {node}"
            if node
            else "gang admission removes the stowage.io/gang gate",
            outcome="applied",
            plan_id=plan_id,
        )
        return updated

    # -- the database --------------------------------------------------------------------

    def _open_intents(self) -> list[GangIntent]:
        with Session(self._engine, expire_on_commit=False) as session:
            return list(session.scalars(select(GangIntent).where(GangIntent.state == ADMITTING)))

    def _write_intent(
        self,
        spec: GangSpec,
        plan_id: str,
        slots: list[dict[str, Any]],
        domain: str | None,
        now: datetime,
    ) -> None:
        with Session(self._engine) as session, session.begin():
            session.add(
                GangIntent(
                    plan_id=plan_id,
                    namespace=spec.namespace,
                    gang=spec.name,
                    created_at=now,
                    state=ADMITTING,
                    placements={"pods": slots, "domain": domain},
                )
            )

    def _update_intent(self, plan_id: str, slots: list[dict[str, Any]]) -> None:
        with Session(self._engine) as session, session.begin():
            row = session.get(GangIntent, plan_id)
            if row is not None:
                row.placements = {**row.placements, "pods": slots}

    def _status(self, spec: GangSpec) -> GangStatus | None:
        with Session(self._engine, expire_on_commit=False) as session:
            return session.get(GangStatus, (spec.namespace, spec.name))

    def _set_status(
        self,
        gang: GangView,
        phase: str,
        message: str,
        now: datetime,
        plan_id: str | None,
        placement: Mapping[str, str] | None = None,
    ) -> None:
        spec = gang.spec
        with Session(self._engine) as session, session.begin():
            row = session.get(GangStatus, (spec.namespace, spec.name))
            if row is None:
                row = GangStatus(
                    namespace=spec.namespace, gang=spec.name, first_seen=now, placement={}
                )
                session.add(row)
            row.phase = phase
            row.message = message
            row.size = spec.size
            row.members = len(gang.members)
            row.queue = spec.queue
            row.updated_at = now
            row.plan_id = plan_id or row.plan_id
            if placement is not None:
                row.placement = {"pods": dict(placement)}

    # -- events --------------------------------------------------------------------------

    def _event(
        self,
        obj: Mapping[str, Any],
        reason: str,
        message: str,
        *,
        kind: str = "Normal",
        api_version: str = "v1",
        object_kind: str = "Pod",
    ) -> None:
        involved = {**obj, "apiVersion": api_version, "kind": object_kind}
        try:
            self._api.create_event(
                involved=involved, reason=reason, message=message, kind=kind, at=self._clock()
            )
        except Exception:  # an event is advice; never let it stop an admission
            log.exception("event not recorded", reason=reason)

    def _group_event(
        self, spec: GangSpec, reason: str, message: str, *, kind: str = "Normal"
    ) -> None:
        """The same explanation on the gang's PodGroup, when it has one."""
        group = self._groups.get(spec.key)
        if group is not None:
            self._event(
                group,
                reason,
                message,
                kind=kind,
                api_version=f"{POD_GROUP_GROUP}/{POD_GROUP_VERSION}",
                object_kind="PodGroup",
            )

    def _event_once(self, gang: GangView, *, reason: str, message: str, kind: str) -> None:
        if (gang.spec.key, message) in self._told:
            return
        self._told.add((gang.spec.key, message))
        for pod in gang.members:
            self._event(pod, reason, message, kind=kind)

    def _pod_group_condition(
        self,
        spec: GangSpec,
        message: str,
        now: datetime,
    ) -> None:
        if spec.key not in self._groups or self._dry_run:
            return
        condition = {
            "type": "Scheduled",
            "status": "False",
            "reason": "GangTimeout",
            "message": message[:1024],
            "lastTransitionTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        try:
            self._api.patch_pod_group_status(spec.namespace, spec.name, {"conditions": [condition]})
        except Exception:
            log.exception("PodGroup condition not written", gang=spec.name)


def _priority(pods: Iterable[Mapping[str, Any]]) -> int:
    """A gang's priority: its members' highest ``spec.priority`` (from their PriorityClass)."""
    return max((int((p.get("spec") or {}).get("priority") or 0) for p in pods), default=0)


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _largest(requests: Sequence[PodRequest]) -> PodRequest:
    """One request that covers every member (the gang's pods are meant to be alike)."""
    first = requests[0]
    return replace(
        first,
        cpu_milli=max(r.cpu_milli for r in requests),
        memory_mib=max(r.memory_mib for r in requests),
        num_gpu=max(r.num_gpu for r in requests),
        gpu_milli=max(r.gpu_milli for r in requests),
    )
