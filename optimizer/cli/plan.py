"""``stowage plan``: what one scheduling cycle would do on a cluster dump.

Reads ``kubectl get namespaces,nodes,pods,podgroups,queues -A -o yaml`` (a ``List``, or several
YAML documents, or JSON; PyTorchJobs, MPIJobs, JobSets and LeaderWorkerSets in it size their
pods' gangs, and a PodGroup of ``scheduling.volcano.sh`` is Volcano's), optionally agents'
NodeReports, runs observe and the pure cycle, and prints the Plan. Nothing is written
anywhere: this is how an operator asks "what would you do?", and how tests pin scenarios.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from optimizer.controller.frameworks import FRAMEWORKS
from optimizer.controller.observe import observe
from optimizer.planner.cycle import DEFAULT_ACTIONS, DEFAULT_ORDERING, CycleConfig, run_cycle
from optimizer.planner.plan import Job, Plan, Wait
from optimizer.planner.snapshot import DEFAULT_LEVELS, TopologyLevel
from shared.labels import NAMESPACE_ENABLED
from shared.ranges import format_cpu_list
from shared.report import NodeReport
from shared.schema import ReportError, parse_report

OWNER_KINDS = frozenset(f.kind for f in FRAMEWORKS)
VOLCANO_GROUP_API = "scheduling.volcano.sh/"


class DumpError(ValueError):
    """The dump cannot be read; the message is one line for a person."""


def read_dump(text: str) -> list[Any]:
    """The objects of a dump: a ``List``'s items, every YAML document, or both."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DumpError(f"not YAML or JSON{where}: {getattr(error, 'problem', error)}") from None
    objects: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and isinstance(document.get("items"), list):
            objects.extend(document["items"])
        elif document is not None:
            objects.append(document)
    return objects


def read_reports(directory: Path) -> tuple[dict[str, NodeReport], list[str]]:
    """NodeReports (``*.json``) by node name, and one line per file that was skipped."""
    if not directory.is_dir():
        raise DumpError(f"{directory}: not a directory")
    reports: dict[str, NodeReport] = {}
    skipped: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            report = parse_report(path.read_text())
        except (OSError, ReportError) as error:
            first = error.problems[0] if isinstance(error, ReportError) else str(error)
            skipped.append(f"{path}: skipped: {first}")
            continue
        reports[report.node_name] = report
    return reports, skipped


def plan_dump(
    objects: Iterable[Any],
    *,
    reports: Mapping[str, NodeReport] | None = None,
    policy: str,
    enable: Iterable[str] = (),
    levels: Iterable[TopologyLevel] = DEFAULT_LEVELS,
    actions: Sequence[str] = DEFAULT_ACTIONS,
    ordering: str = DEFAULT_ORDERING,
    now: datetime | None = None,
) -> Plan:
    """One cycle on the dumped objects (sorted by kind; unknown kinds ignored) with the
    given actions and default ordering, at ``now`` (default: the wall clock)."""
    kinds: dict[str, list[Any]] = {
        "Node": [],
        "Pod": [],
        "PodGroup": [],
        "VolcanoPodGroup": [],
        "Namespace": [],
        "Queue": [],
        "Owner": [],
    }
    for obj in objects:
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind == "PodGroup" and str(obj.get("apiVersion", "")).startswith(VOLCANO_GROUP_API):
            kinds["VolcanoPodGroup"].append(obj)
        elif kind in OWNER_KINDS:
            kinds["Owner"].append(obj)
        elif kind in kinds:
            kinds[str(kind)].append(obj)
        elif not isinstance(obj, dict):
            kinds["Pod"].append(obj)  # reported as an invalid object, not lost silently
    enabled = {
        str(n["metadata"]["name"])
        for n in kinds["Namespace"]
        if isinstance(n.get("metadata"), dict)
        and (n["metadata"].get("labels") or {}).get(NAMESPACE_ENABLED) == "true"
    } | set(enable)
    observed = observe(
        nodes=kinds["Node"],
        pods=kinds["Pod"],
        pod_groups=kinds["PodGroup"],
        enabled=enabled,
        reports=reports or {},
        levels=tuple(levels),
        queues=kinds["Queue"],
        now=now,
        volcano_groups=kinds["VolcanoPodGroup"],
        owners=kinds["Owner"],
    )
    config = CycleConfig(policy=policy, actions=tuple(actions), ordering=ordering)
    config.validate()
    plan = run_cycle(observed.snapshot, config=config, number=1)
    # gangs the cycle did not plan (short of members) wait too, with their reason
    short = tuple(
        Wait(Job(ns, name, size=1, pending=()), reason)
        for (ns, name), reason in observed.skipped.items()
    )
    return replace(plan, wait=plan.wait + short)


def render(plan: Plan) -> list[str]:
    """The plan as lines a person reads."""
    lines = [
        f"cycle {plan.cycle_id}: {len(plan.admit)} admitted, {len(plan.wait)} waiting, "
        f"{len(plan.evict)} to evict, {len(plan.invalid)} invalid"
    ]
    for admit in plan.admit:
        where = f" in {admit.job.topology_level} {admit.domain}" if admit.domain else ""
        note = f" ({admit.note})" if admit.note else ""
        lines.append(f"ADMIT   {admit.job.label}{where}{note}")
        for pod in sorted(admit.pods, key=lambda p: p.name):
            gpus = f" GPUs {format_cpu_list(pod.gpus)}" if pod.gpus else ""
            lines.append(f"          {pod.name} -> {pod.node}{gpus}")
    lines.extend(f"WAIT    {w.job.label}: {w.reason}" for w in plan.wait)
    lines.extend(
        f"EVICT   {e.namespace}/{e.pod} for {e.for_gang[0]}/{e.for_gang[1]}: {e.reason}"
        for e in plan.evict
    )
    lines.extend(
        f"INVALID {i.kind} {i.namespace + '/' if i.namespace else ''}{i.name}: {i.reason}"
        for i in plan.invalid
    )
    return lines
