"""``POST /webhooks/mutate-pods``: the mutating admission webhook that gates gang pods.

The API server sends an AdmissionReview (v1) for each pod created in an opted-in namespace
(the MutatingWebhookConfiguration's namespaceSelector, ``stowage.io/enabled=true``). A pod
that declares a gang gets the scheduling gate ``stowage.io/gang`` (a JSON patch), so the
scheduler leaves it alone until the controller releases the whole gang. A malformed gang
declaration is still admitted (failure policy Ignore: Stowage never blocks pod creation), with
a warning ``kubectl`` prints; the controller then reports it as an Event. The endpoint is
unauthenticated like other webhooks: the API server reaches it over TLS (the chart's cert).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from optimizer.controller.errors import MissingObjectError, SpecError
from optimizer.controller.pods import gang_spec, is_gang_member
from shared.labels import SCHEDULING_GATE

router = APIRouter(tags=["webhooks"])


class AdmissionRequest(BaseModel):
    uid: str
    object: dict[str, Any] | None = None
    operation: str | None = None


class AdmissionReview(BaseModel):
    apiVersion: str = "admission.k8s.io/v1"  # noqa: N815 - the wire name
    kind: str = "AdmissionReview"
    request: AdmissionRequest | None = None
    response: dict[str, Any] | None = Field(default=None)


def gate_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON patch adding Stowage's gate to ``pod`` (none if it already has it)."""
    gates = (pod.get("spec") or {}).get("schedulingGates")
    if gates is None:
        return [
            {"op": "add", "path": "/spec/schedulingGates", "value": [{"name": SCHEDULING_GATE}]}
        ]
    if any(g.get("name") == SCHEDULING_GATE for g in gates):
        return []
    return [{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": SCHEDULING_GATE}}]


@router.post("/webhooks/mutate-pods")
def mutate_pods(review: AdmissionReview) -> dict[str, Any]:
    """Admit every pod; gate gang pods."""
    request = review.request
    if request is None:
        return {
            "apiVersion": review.apiVersion,
            "kind": "AdmissionReview",
            "response": {"uid": "", "allowed": True},
        }
    response: dict[str, Any] = {"uid": request.uid, "allowed": True}
    pod = request.object or {}
    if request.operation in (None, "CREATE") and is_gang_member(pod):
        patch = gate_patch(pod)
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        try:
            gang_spec(pod)
        except MissingObjectError:
            pass  # PodGroups and job owners are the controller's to check
        except SpecError as error:
            response["warnings"] = [f"stowage: {error}"]
    return {"apiVersion": review.apiVersion, "kind": "AdmissionReview", "response": response}
