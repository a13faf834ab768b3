"""The pod-mutating webhook and the gangs API, over HTTP on both database backends."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from optimizer.store.models import GangStatus
from tests.optimizer.conftest import WallClock, auth

READER = "sre@example.com"


def _review(pod: dict[str, Any], operation: str = "CREATE") -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "7c1e", "operation": operation, "object": pod},
    }


def _pod(labels: dict[str, str], gates: list[dict[str, str]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i"}]}
    if gates is not None:
        spec["schedulingGates"] = gates
    return {"metadata": {"name": "p", "namespace": "ml", "labels": labels}, "spec": spec}


def _mutated(client: TestClient, pod: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    reply = client.post("/webhooks/mutate-pods", json=_review(pod))
    assert reply.status_code == 200
    response = reply.json()["response"]
    assert response["uid"] == "7c1e"
    assert response["allowed"] is True
    if "patch" not in response:
        return pod, response
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(pod, patch), response


GANG = {"stowage.io/gang": "train", "stowage.io/gang-size": "4"}


def test_gang_pods_get_the_gate_and_keep_their_own(client: TestClient) -> None:
    pod, _ = _mutated(client, _pod(GANG))
    assert pod["spec"]["schedulingGates"] == [{"name": "stowage.io/gang"}]
    pod, _ = _mutated(client, _pod(GANG, gates=[{"name": "example.com/quota"}]))
    assert pod["spec"]["schedulingGates"] == [
        {"name": "example.com/quota"},
        {"name": "stowage.io/gang"},
    ]
    already = _pod(GANG, gates=[{"name": "stowage.io/gang"}])
    assert _mutated(client, already)[0] == already


def test_other_pods_pass_untouched_and_malformed_gangs_are_warned(client: TestClient) -> None:
    plain = _pod({"app": "web"})
    assert _mutated(client, plain) == (plain, {"uid": "7c1e", "allowed": True})
    pod, response = _mutated(client, _pod({"stowage.io/gang": "train"}))
    assert pod["spec"]["schedulingGates"] == [{"name": "stowage.io/gang"}]
    assert response["warnings"] == [
        "stowage: stowage.io/gang=train needs stowage.io/gang-size (the number of members)"
    ]


def test_gangs_api_serves_the_controllers_explanations(
    client: TestClient, engine: Engine, clock: WallClock
) -> None:
    with Session(engine) as session, session.begin():
        for name, phase in (("train", "waiting"), ("eval", "admitted")):
            session.add(
                GangStatus(
                    namespace="ml",
                    gang=name,
                    phase=phase,
                    message=f"{name} message",
                    size=4,
                    members=4,
                    queue=None,
                    first_seen=clock(),
                    updated_at=clock(),
                    plan_id=None,
                    placement={"pods": {"eval-0": "b1"}} if name == "eval" else {},
                )
            )
    assert client.get("/v1/gangs").status_code == 401
    listing = client.get("/v1/gangs", headers=auth(READER)).json()["items"]
    assert [(g["name"], g["phase"]) for g in listing] == [
        ("eval", "admitted"),
        ("train", "waiting"),
    ]
    waiting = client.get("/v1/gangs?phase=waiting", headers=auth(READER)).json()["items"]
    assert [g["name"] for g in waiting] == ["train"]
    one = client.get("/v1/gangs/ml/eval", headers=auth(READER)).json()
    assert one["placement"] == {"eval-0": "b1"}
    assert client.get("/v1/gangs/ml/none", headers=auth(READER)).status_code == 404
