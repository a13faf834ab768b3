"""Right-sizing on the cluster: which workload owns each GPU pod, and the recommendations
written on the workload itself.

Every few minutes the leader records, for each GPU pod it sees, the workload that owns it
(:func:`optimizer.controller.owners.workload_of`) and its containers' requests, so the API
groups usage by workload too. It then writes the workload's recommendations (idle, fewer
GPUs, a smaller slice) as the annotation ``stowage.io/rightsizing`` (a JSON list) on the
workload object (the Deployment, Job, PyTorchJob, ..., or the bare pod) in namespaces that
opted in, and removes it when none is left. Each write is audited; in dry run it is audited
as ``dry-run`` and nothing is patched. What was written is kept in the ``recommendations``
table, so a new leader neither rewrites nor forgets an annotation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import structlog
from kubernetes.utils import parse_quantity
from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from optimizer.controller.audit import Audit
from optimizer.controller.cache import ClusterView
from optimizer.controller.errors import SpecError
from optimizer.controller.kube import KubeApi, KubeError, NotFoundError
from optimizer.controller.observe import finished
from optimizer.controller.owners import ANNOTATED, workload_of
from optimizer.controller.pods import pod_request
from optimizer.forecast.rightsizing import Recommendation, Workload
from optimizer.store.models import Recommendation as StoredRecommendation
from optimizer.store.usage import recommendations, record_workload_pods
from shared.labels import NAMESPACE_ENABLED, RIGHTSIZING

log = structlog.get_logger(__name__)

#: How often the leader records owners and refreshes the annotations.
INTERVAL: Final = timedelta(minutes=5)
#: The ``recommendations`` rows of annotations written (or, in dry run, meant).
STORED_KIND: Final = "annotation"


def container_requests(pod: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Container name -> its CPU (cores) and memory (bytes) requests, where it has them (a
    resource with only a limit requests its limit); an unreadable quantity is left out."""
    out: dict[str, dict[str, float]] = {}
    for container in (pod.get("spec") or {}).get("containers") or []:
        if not isinstance(container, Mapping) or not container.get("name"):
            continue
        resources = container.get("resources") or {}
        amounts: dict[str, float] = {}
        for source in ("limits", "requests"):  # requests win
            given = resources.get(source) if isinstance(resources, Mapping) else None
            for resource in ("cpu", "memory"):
                value = given.get(resource) if isinstance(given, Mapping) else None
                if value is None:
                    continue
                try:
                    amounts[resource] = float(parse_quantity(value))
                except (ValueError, TypeError, ArithmeticError):
                    continue
        out[str(container["name"])] = amounts
    return out


def _holds_gpus(pod: Mapping[str, Any]) -> bool:
    try:
        return pod_request(pod).num_gpu > 0
    except SpecError:
        return False


def annotation_items(recs: list[Recommendation]) -> list[dict[str, str]]:
    """What the annotation says of a workload: each recommendation (with its container, for
    CPU and memory), without its GPUs."""
    return [
        {
            "kind": r.kind,
            **({"container": r.container} if r.container else {}),
            "current": r.current,
            "recommended": r.recommended,
            "reason": r.reason,
            "signal": r.signal,
        }
        for r in recs
    ]


class RightSizer:
    """Records pod owners and keeps the workloads' recommendation annotations current."""

    def __init__(
        self,
        api: KubeApi,
        engine: Engine,
        audit: Audit,
        *,
        clock: Callable[[], datetime],
        window: timedelta,
        min_window: timedelta,
        dry_run: bool,
        view: ClusterView,
    ) -> None:
        self._api = api
        self._engine = engine
        self._audit = audit
        self._clock = clock
        self.window = window
        self.min_window = min_window
        self._dry_run = dry_run
        self._view = view
        self._last: datetime | None = None

    def maybe_run(self) -> list[tuple[str, str]]:
        """Refresh now if due; returns (workload subject, outcome) of each annotation
        written or removed."""
        now = self._clock()
        if self._last is not None and now - self._last < INTERVAL:
            return []
        self._last = now
        owners: dict[tuple[str, str], tuple[Workload, dict[str, dict[str, float]]]] = {}
        for pod in self._view.pods():
            metadata = pod.get("metadata") or {}
            namespace, name = metadata.get("namespace"), metadata.get("name")
            if not namespace or not name or finished(pod) or not _holds_gpus(pod):
                continue
            owners[str(namespace), str(name)] = (workload_of(pod), container_requests(pod))
        with Session(self._engine) as session, session.begin():
            record_workload_pods(session, owners, now=now)
            recs = recommendations(
                session, now=now, window=self.window, min_window=self.min_window, pods=owners
            )
            written = {
                subject: (row_id, status, dict(payload))
                for row_id, subject, status, payload in session.execute(
                    select(
                        StoredRecommendation.id,
                        StoredRecommendation.subject,
                        StoredRecommendation.status,
                        StoredRecommendation.payload,
                    ).where(StoredRecommendation.kind == STORED_KIND)
                )
            }
        enabled = self._api.opted_in_namespaces(f"{NAMESPACE_ENABLED}=true")
        wanted: dict[str, tuple[str, Workload, list[dict[str, str]]]] = {}
        by_workload = {(str(workload), ns): workload for (ns, _), (workload, _) in owners.items()}
        for rec in recs:
            workload = by_workload.get((rec.workload, rec.namespace))
            if workload is None or rec.namespace not in enabled or workload.kind not in ANNOTATED:
                continue
            subject = f"{workload.kind}/{rec.namespace}/{workload.name}"
            wanted.setdefault(subject, (rec.namespace, workload, []))[2].extend(
                annotation_items([rec])
            )
        done = []
        for subject, (namespace, workload, items) in sorted(wanted.items()):
            before = written.get(subject)
            status = "dry-run" if self._dry_run else "applied"
            if before is not None and before[2].get("items") == items and before[1] == status:
                continue
            outcome = self._write(namespace, workload, json.dumps(items), subject, items)
            done.append((subject, outcome))
            self._remember(subject, workload, items, outcome, now)
        for subject, (row_id, was, payload) in sorted(written.items()):
            if subject in wanted:
                continue
            workload = Workload(
                str(payload.get("kind")), str(payload.get("name")), str(payload.get("api_version"))
            )
            outcome = "dry-run"
            if was == "applied":
                namespace = str(payload.get("namespace"))
                outcome = self._write(namespace, workload, None, subject, [])
            done.append((subject, outcome))
            if outcome != "failed":
                with Session(self._engine) as session, session.begin():
                    session.execute(
                        delete(StoredRecommendation).where(StoredRecommendation.id == row_id)
                    )
        return done

    def _write(
        self,
        namespace: str,
        workload: Workload,
        value: str | None,
        subject: str,
        items: list[dict[str, str]],
    ) -> str:
        """Patch (or, with ``value`` None, remove) the annotation; audited; the outcome."""
        what = "; ".join(f"{i['kind']}: {i['recommended']}" for i in items) or "none left"
        reason = f"right-sizing: {what}"
        outcome = "dry-run"
        resource = ANNOTATED.get(workload.kind)
        if not self._dry_run and resource is not None:
            try:
                self._api.annotate(
                    resource.group,
                    resource.version,
                    resource.plural,
                    namespace,
                    workload.name,
                    {RIGHTSIZING: value},
                )
                outcome = "applied"
            except NotFoundError:
                outcome = "gone"
            except KubeError as error:
                log.warning("recommendation not annotated", workload=subject, error=str(error))
                outcome = "failed"
        verb = "annotate-rightsizing" if value is not None else "remove-rightsizing"
        self._audit(verb=verb, obj=subject.lower(), reason=reason, outcome=outcome)
        return outcome

    def _remember(
        self,
        subject: str,
        workload: Workload,
        items: list[dict[str, str]],
        outcome: str,
        now: datetime,
    ) -> None:
        namespace = subject.split("/", 2)[1]
        with Session(self._engine) as session, session.begin():
            session.execute(
                delete(StoredRecommendation).where(
                    StoredRecommendation.kind == STORED_KIND,
                    StoredRecommendation.subject == subject,
                )
            )
            if outcome in ("applied", "dry-run"):
                session.add(
                    StoredRecommendation(
                        created_at=now,
                        kind=STORED_KIND,
                        subject=subject,
                        status=outcome,
                        payload={
                            "kind": workload.kind,
                            "name": workload.name,
                            "api_version": workload.api_version,
                            "namespace": namespace,
                            "items": items,
                        },
                    )
                )
