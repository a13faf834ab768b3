"""Observe: API JSON (watch cache, or a ``kubectl get -o yaml`` dump) to the cycle's snapshot.

Tolerant of anything the API returns: each node, pod and PodGroup is read on its own, and
one that cannot be read becomes an :class:`~optimizer.planner.plan.Invalid` with the reason
(explained on the object by the commit step) while everything else is planned. Pure: no
API calls, so ``stowage plan`` runs it on a file.

What holds capacity (every pod kube-scheduler would count, and more):

* pods bound to a node (``spec.nodeName``), terminating ones included, until they finish;
* pods Stowage released and pinned that kube-scheduler has not bound yet;
* slots of an unfinished admission (the intent), even while their pod is being recreated;
* pending pods that carry a ``status.nominatedNodeName`` (kube-scheduler's preemption).

Pending pods that nobody gates are jobs of one, planned (``managed=False``) so their room
is not promised to a gang; pods behind another controller's gate are not yet schedulable
and hold nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from optimizer.controller.errors import SpecError
from optimizer.controller.frameworks import index_owners
from optimizer.controller.pods import (
    GangSpec,
    declared_gang,
    declared_queue,
    gang_spec,
    is_gated,
    is_preemptible,
    last_checkpoint,
    node_allocatable,
    pinned_node,
    pod_request,
    runtime_estimate,
)
from optimizer.controller.queues import read_queues
from optimizer.planner.cluster import PodRequest
from optimizer.planner.objects import (
    AntiAffinityTerm,
    LabelSelector,
    NodeInfo,
    NodeSelectorTerm,
    PodInfo,
    Requirement,
    Taint,
    Toleration,
)
from optimizer.planner.plan import BoundPod, ClusterSnapshot, Invalid, Job
from optimizer.planner.snapshot import (
    DEFAULT_LEVELS,
    NodeFacts,
    RunningPod,
    TopologyLevel,
    build_snapshot,
)
from shared.report import NodeReport

if TYPE_CHECKING:
    from optimizer.controller.durations import Predict

GPU_PRODUCT_LABELS: Final = ("stowage.io/gpu.product", "nvidia.com/gpu.product")
_READ_ERRORS: Final = (KeyError, TypeError, ValueError, AttributeError, ArithmeticError)


@dataclass(frozen=True)
class OpenIntent:
    """An admission a leader recorded and has not finished: its slots hold their room."""

    plan_id: str
    namespace: str
    gang: str
    slots: Sequence[Mapping[str, Any]]


@dataclass
class GangView:
    """A managed gang as observed: its declaration and raw member pods."""

    spec: GangSpec
    members: list[dict[str, Any]] = field(default_factory=list)

    @property
    def gated(self) -> list[dict[str, Any]]:
        return [p for p in self.members if is_gated(p) and not finished(p)]

    @property
    def live(self) -> list[dict[str, Any]]:
        return [p for p in self.members if not finished(p)]


@dataclass
class Observed:
    """The snapshot, and what the commit step needs to act on its plan."""

    snapshot: ClusterSnapshot
    gangs: dict[tuple[str, str], GangView]
    groups: dict[tuple[str, str], dict[str, Any]]
    pods: dict[str, dict[str, Any]]  # uid -> pod
    #: Managed gangs not planned this cycle, with why (short of members, held back).
    skipped: dict[tuple[str, str], str]
    #: The metadata.generation of each Queue used (its status reports which it saw).
    queue_generations: Mapping[str, int] = field(default_factory=dict)


def finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


# -- reading objects ----------------------------------------------------------------------


def _requirements(items: Any) -> tuple[Requirement, ...]:
    return tuple(
        Requirement(str(r["key"]), str(r["operator"]), tuple(str(v) for v in r.get("values") or ()))
        for r in items or ()
    )


def _term(term: Mapping[str, Any]) -> NodeSelectorTerm:
    return NodeSelectorTerm(
        expressions=_requirements(term.get("matchExpressions")),
        fields=_requirements(term.get("matchFields")),
    )


def _selector(selector: Mapping[str, Any] | None) -> LabelSelector:
    selector = selector or {}
    return LabelSelector(
        labels=tuple(
            sorted((str(k), str(v)) for k, v in (selector.get("matchLabels") or {}).items())
        ),
        expressions=_requirements(selector.get("matchExpressions")),
    )


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """The pod's scheduling facts; raises :class:`SpecError` saying what is unreadable."""
    try:
        return _pod_info(pod)
    except SpecError:
        raise
    except _READ_ERRORS as error:
        raise SpecError(f"unreadable pod: {type(error).__name__}: {error}") from None


def _pod_info(pod: Mapping[str, Any]) -> PodInfo:
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    affinity = spec.get("affinity") or {}
    node_affinity = affinity.get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    preferred = node_affinity.get("preferredDuringSchedulingIgnoredDuringExecution") or []
    unsupported: list[str] = []
    if (affinity.get("podAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution"):
        unsupported.append("required pod affinity")
    anti: list[AntiAffinityTerm] = []
    anti_spec = affinity.get("podAntiAffinity") or {}
    for term in anti_spec.get("requiredDuringSchedulingIgnoredDuringExecution") or []:
        namespaces: frozenset[str] | None = frozenset(term.get("namespaces") or [namespace])
        if "namespaceSelector" in term:
            if term["namespaceSelector"]:
                unsupported.append("pod anti-affinity with a namespaceSelector")
            namespaces = None
        anti.append(
            AntiAffinityTerm(
                _selector(term.get("labelSelector")),
                topology_key=str(term["topologyKey"]),
                namespaces=namespaces,
            )
        )
    for constraint in spec.get("topologySpreadConstraints") or []:
        if constraint.get("whenUnsatisfiable", "DoNotSchedule") == "DoNotSchedule":
            unsupported.append("topologySpreadConstraints (DoNotSchedule)")
    tolerations = tuple(
        Toleration(
            key=str(t.get("key") or ""),
            operator=str(t.get("operator") or "Equal"),
            value=str(t.get("value") or ""),
            effect=str(t.get("effect") or ""),
        )
        for t in spec.get("tolerations") or []
    )
    selector = spec.get("nodeSelector") or {}
    return PodInfo(
        namespace=namespace,
        name=str(meta["name"]),
        uid=str(meta.get("uid") or ""),
        request=pod_request(pod),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        node_selector={str(k): str(v) for k, v in selector.items()},
        required_terms=tuple(_term(t) for t in required.get("nodeSelectorTerms") or []),
        preferred_terms=tuple(
            (int(p.get("weight") or 0), _term(p.get("preference") or {})) for p in preferred
        ),
        tolerations=tolerations,
        anti_affinity=tuple(anti),
        unsupported=tuple(unsupported),
        priority=int(spec.get("priority") or 0),
        preemptible=is_preemptible(pod),
        created=str(meta.get("creationTimestamp") or ""),
    )


def node_info(
    node: Mapping[str, Any], *, report: NodeReport | None, stale: bool
) -> tuple[NodeInfo, NodeFacts]:
    """The node for the filters and for the arrays; raises :class:`SpecError`."""
    try:
        meta = node["metadata"]
        spec = node.get("spec") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        taints = tuple(
            Taint(str(t["key"]), str(t.get("value") or ""), str(t.get("effect") or ""))
            for t in spec.get("taints") or []
        )
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = all(c.get("status") == "True" for c in conditions if c.get("type") == "Ready")
        cpu, memory, gpus, extra = node_allocatable(node)
    except _READ_ERRORS as error:
        raise SpecError(f"unreadable node: {type(error).__name__}: {error}") from None
    name = str(meta["name"])
    model = next((labels[k] for k in GPU_PRODUCT_LABELS if k in labels), "gpu")
    info = NodeInfo(
        name=name,
        labels=labels,
        unschedulable=bool(spec.get("unschedulable")),
        taints=taints,
        ready=ready,
        agent_stale=stale,
    )
    facts = NodeFacts(
        name=name,
        labels=labels,
        cpu_milli=cpu,
        memory_mib=memory,
        report=report,
        gpu_model=model,
        gpu_count=gpus,
        extra=extra,
    )
    return info, facts


def _identity(obj: Any, kind: str) -> tuple[str, str, str]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return "", f"<{kind} without metadata>", ""
    return (
        str(meta.get("namespace") or ""),
        str(meta.get("name") or f"<{kind} without a name>"),
        str(meta.get("uid") or ""),
    )


# -- the snapshot -------------------------------------------------------------------------


def observe(
    *,
    nodes: Iterable[Any],
    pods: Iterable[Any],
    pod_groups: Iterable[Any] = (),
    enabled: set[str],
    reports: Mapping[str, NodeReport] | None = None,
    stale: Iterable[str] = (),
    intents: Sequence[OpenIntent] = (),
    held_back: Mapping[tuple[str, str], str] | None = None,
    levels: Sequence[TopologyLevel] = DEFAULT_LEVELS,
    queues: Iterable[Any] = (),
    now: datetime | None = None,
    volcano_groups: Iterable[Any] = (),
    owners: Iterable[Any] = (),
    durations: Predict | None = None,
) -> Observed:
    """Read the cluster into the cycle's snapshot.

    Args:
        nodes, pods, pod_groups: API objects (dicts); anything else is reported invalid.
        enabled: namespaces that opted in (their gang pods are Stowage's to place).
        reports: node name -> latest fresh agent report (GPU topology and health).
        stale: nodes whose agent reported once but not recently.
        intents: unfinished admissions; their gangs are not planned again.
        held_back: gangs not to plan this cycle (timed out, in backoff), with why.
        levels: the topology levels, outermost first.
        queues: ``Queue`` objects (stowage.io/v1alpha1); unreadable ones are invalid.
        now: the cycle's clock (default: the wall clock), for running jobs' expected ends.
        volcano_groups: Volcano PodGroups (scheduling.volcano.sh/v1beta1).
        owners: job framework objects (PyTorchJob, MPIJob, JobSet, LeaderWorkerSet) whose
            pods form gangs (:mod:`optimizer.controller.frameworks`).
        durations: predicts a job's remaining run time from finished ones where it declares
            no ``stowage.io/runtime-estimate`` (:mod:`optimizer.controller.durations`).
    """
    now_s = (now or datetime.now(UTC)).timestamp()
    reports = reports or {}
    stale_set = set(stale)
    read = read_queues(queues)
    invalid: list[Invalid] = list(read.invalid)
    infos: dict[str, NodeInfo] = {}
    facts: list[NodeFacts] = []
    for node_obj in nodes:
        namespace, name, uid = _identity(node_obj, "node")
        try:
            ninfo, fact = node_info(node_obj, report=reports.get(name), stale=name in stale_set)
        except SpecError as error:
            invalid.append(Invalid("Node", namespace, name, str(error), uid))
            continue
        if ninfo.name in infos:
            continue
        infos[ninfo.name] = ninfo
        facts.append(fact)
    groups = _by_key(pod_groups, invalid)
    volcano = _by_key(volcano_groups, invalid)
    owner_index = index_owners(owners)
    level_names = [level.name for level in levels]
    committed: dict[str, tuple[str, tuple[int, ...]]] = {}
    owned: set[tuple[str, str]] = set()
    for intent in intents:
        owned.add((intent.namespace, intent.gang))
        for slot in intent.slots:
            committed[str(slot["uid"])] = (str(slot["node"]), tuple(slot["gpus"]))

    gangs: dict[tuple[str, str], GangView] = {}
    by_uid: dict[str, dict[str, Any]] = {}
    parsed: list[tuple[dict[str, Any], PodInfo, tuple[str, str] | None]] = []
    for pod in pods:
        namespace, name, uid = _identity(pod, "pod")
        try:
            if not isinstance(pod, dict):
                raise SpecError(f"not a pod object: {type(pod).__name__}")
            info = pod_info(pod)
            runtime_estimate(pod)  # a malformed estimate makes the pod invalid here
            last_checkpoint(pod)  # and so does a malformed checkpoint time
            gang_key: tuple[str, str] | None = None
            managed = info.namespace in enabled and (declared_gang(pod) or is_gated(pod))
            if managed and not pod["metadata"].get("deletionTimestamp"):
                try:
                    declared = _gang_of(pod, groups, level_names, volcano, owner_index)
                except SpecError:
                    if not finished(pod):
                        raise
                else:
                    gang_key = declared.key
                    gangs.setdefault(declared.key, GangView(declared)).members.append(pod)
            elif managed and declared_gang(pod):
                gang_key = (info.namespace, str(declared_gang(pod)))
        except SpecError as error:
            managed_pod = (namespace or "default") in enabled and _declares(pod)
            invalid.append(
                Invalid("Pod", namespace or "default", name, str(error), uid, managed_pod)
            )
            continue
        by_uid[info.uid] = pod
        parsed.append((pod, info, gang_key))

    bound: list[BoundPod] = []
    jobs: list[Job] = []
    present: set[str] = set()
    for pod, info, gang_key in parsed:
        if finished(pod):
            continue
        present.add(info.uid)
        spec = pod.get("spec") or {}
        node: str | None = spec.get("nodeName")
        gpus: tuple[int, ...] = ()
        gated = is_gated(pod)
        if not node and info.uid in committed:
            node, gpus = committed[info.uid]
        elif not node and gang_key is not None and not gated:
            node = pinned_node(pod)  # released by Stowage, not bound yet
        if not node and not gated:
            node = (pod.get("status") or {}).get("nominatedNodeName") or None
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        if node:
            view = gangs.get(gang_key) if gang_key else None
            whole = view is not None and not view.gated
            named = view.spec.queue if view is not None else declared_queue(pod)
            queue = read.queues.resolve(named, info.namespace)
            # a pod of no gang is a victim only where its namespace opted in to Stowage
            plain = info.namespace in enabled and gang_key is None and not declared_gang(pod)
            bound.append(
                BoundPod(
                    info,
                    str(node),
                    gpus,
                    gang_key if whole else None,
                    terminating,
                    queue,
                    plain,
                    api_seconds(info.created) if plain else None,
                )
            )
        elif gang_key is None and not spec.get("schedulingGates") and not terminating:
            jobs.append(
                Job(
                    info.namespace,
                    info.name,
                    size=1,
                    pending=(info,),
                    priority=info.priority,
                    created=info.created,
                    managed=False,
                )
            )
    for intent in intents:  # slots whose pod is gone: keep their room for the twin
        for slot in intent.slots:
            if str(slot["uid"]) not in present:
                extra = tuple((str(n), int(a)) for n, a in slot.get("extra") or ())
                cpu, memory, num_gpu, gpu_milli = (int(v) for v in slot["request"])
                request = PodRequest(
                    str(slot["name"]), cpu, memory, num_gpu, gpu_milli, extra=extra
                )
                placeholder = PodInfo(intent.namespace, str(slot["name"]), "", request)
                bound.append(BoundPod(placeholder, str(slot["node"]), tuple(slot["gpus"])))

    skipped: dict[tuple[str, str], str] = {}
    infos_by_uid = {info.uid: info for _, info, _ in parsed}
    for key, view in gangs.items():
        if key in owned:
            continue  # an unfinished admission owns it
        waiting = view.gated
        if not waiting:
            continue
        released = len(view.live) - len(waiting)
        need = max(view.spec.size - released, 1)
        if len(waiting) < need:
            skipped[key] = f"waiting for members: {len(waiting)} of {view.spec.size} pods exist" + (
                f" ({released} already running)" if released else ""
            )
            continue
        if held_back and key in held_back:
            skipped[key] = held_back[key]
            continue
        members = tuple(infos_by_uid[p["metadata"].get("uid") or ""] for p in waiting)
        members = tuple(sorted(members, key=lambda m: m.name))
        created = min(m.created for m in members)
        jobs.append(
            Job(
                key[0],
                key[1],
                size=need,
                pending=members,
                max_size=view.spec.max_size,
                released=released,
                topology_level=view.spec.topology_level,
                required=view.spec.required,
                queue=view.spec.queue,
                priority=max(m.priority for m in members),
                created=created,
                submitted_s=api_seconds(created) or now_s,
                duration_s=_remaining_s(
                    _estimate(waiting), 0.0, durations, view.spec.queue, members[:need]
                ),
            )
        )
    running = [
        _running(view, infos_by_uid, now_s, durations) for view in gangs.values() if not view.gated
    ]

    ordered = sorted(facts, key=lambda f: f.name)
    base = build_snapshot(
        ordered,
        [RunningPod(b.node, b.info.request, b.gpus) for b in bound],
        levels=levels,
        lenient=True,
    )
    snapshot = ClusterSnapshot(
        nodes=tuple(infos[f.name] for f in ordered),
        base=base,
        bound=tuple(bound),
        jobs=tuple(jobs),
        invalid=tuple(invalid),
        queues=read.queues,
        running=tuple(r for r in running if r is not None),
        now_s=now_s,
    )
    return Observed(snapshot, gangs, groups, by_uid, skipped, read.generations)


def _by_key(objects: Iterable[Any], invalid: list[Invalid]) -> dict[tuple[str, str], Any]:
    """PodGroups by (namespace, name); one without a name goes to ``invalid``."""
    out: dict[tuple[str, str], Any] = {}
    for group in objects:
        namespace, name, uid = _identity(group, "PodGroup")
        if not isinstance(group, dict) or not name or name.startswith("<"):
            invalid.append(Invalid("PodGroup", namespace, name, "a PodGroup without a name", uid))
            continue
        out[(namespace or "default", name)] = group
    return out


def api_seconds(timestamp: str | None) -> float | None:
    """An API timestamp (RFC 3339) as epoch seconds; None when absent or unreadable."""
    if not timestamp:
        return None
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _estimate(pods: Iterable[Mapping[str, Any]]) -> float | None:
    """The longest ``stowage.io/runtime-estimate`` among a gang's pods (None: none says)."""
    found = [e for e in (runtime_estimate(p) for p in pods) if e is not None]
    return max(found) if found else None


def _remaining_s(
    estimate: float | None,
    ran_s: float,
    durations: Predict | None,
    queue: str | None,
    members: Iterable[PodInfo],
) -> float | None:
    """How much longer a job runs: its declared estimate less the time it has run, else the
    prediction from finished runs, else unknown (None)."""
    if estimate is not None:
        return max(estimate - ran_s, 0.0)
    if durations is None:
        return None
    return durations(queue, sum(m.request.gpu_request_milli for m in members) / 1000, ran_s)


def _running(
    view: GangView, infos: Mapping[str, PodInfo], now_s: float, durations: Predict | None
) -> Job | None:
    """A released gang as the planner's running job: when it started, how long it is
    expected to go on (from its runtime estimate), its last checkpoint (the latest any
    member reports) and, when elastic, the minimum it may shrink to; for backfill and
    preemption."""
    live = [p for p in view.live if (p.get("spec") or {}).get("nodeName")]
    if not live:
        return None
    estimate = _estimate(live)  # every estimate was read once already
    starts = [api_seconds((p.get("status") or {}).get("startTime")) for p in live]
    started = min((s for s in starts if s is not None), default=now_s)
    members = [
        infos[p["metadata"].get("uid") or ""] for p in live if p["metadata"].get("uid") in infos
    ]
    created = min((m.created for m in members), default="")
    checkpoints = [c for c in (last_checkpoint(p) for p in live) if c is not None]
    return Job(
        view.spec.namespace,
        view.spec.name,
        size=len(live),
        pending=(),
        min_size=view.spec.size if view.spec.max_size is not None else None,
        checkpoint_s=min(max(checkpoints), now_s) if checkpoints else None,
        queue=view.spec.queue,
        priority=max((m.priority for m in members), default=0),
        created=created,
        submitted_s=api_seconds(created) or started,
        duration_s=_remaining_s(estimate, now_s - started, durations, view.spec.queue, members),
        started_s=started,
    )


def _gang_of(
    pod: Mapping[str, Any],
    groups: Mapping[tuple[str, str], Mapping[str, Any]],
    levels: Sequence[str],
    volcano: Mapping[tuple[str, str], Mapping[str, Any]],
    owners: Mapping[tuple[str, str, str], Mapping[str, Any]],
) -> GangSpec:
    """The pod's gang; a gated pod that declares none is a gang of one named after it."""
    if declared_gang(pod) is None:
        meta = pod["metadata"]
        return GangSpec(str(meta.get("namespace") or "default"), str(meta["name"]), size=1)
    try:
        return gang_spec(
            pod, pod_groups=groups, levels=levels, volcano_groups=volcano, owners=owners
        )
    except SpecError:
        raise
    except _READ_ERRORS as error:
        raise SpecError(f"unreadable gang declaration: {error}") from None


def _declares(pod: Any) -> bool:
    """Whether a (possibly malformed) pod declares a gang or carries Stowage's gate."""
    try:
        return bool(declared_gang(pod) or is_gated(pod))
    except _READ_ERRORS:
        return False
