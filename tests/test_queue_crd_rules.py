"""The Queue CRD's CEL validation rules (``x-kubernetes-validations``), run by a CEL
interpreter (cel-python) with Kubernetes' ``quantity()`` library, as a table test in the
style of kube-scheduler's: each rule refuses what its message says, at its field path, and
lets everything else through; and the controller, which reads Queues that reached the
cluster some other way (a dump, an older CRD), refuses the same objects naming the same
field. As the API server does, schema defaults are applied before the rules run."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import celpy
import jsonschema
import pytest
from celpy import celtypes
from kubernetes.utils.quantity import parse_quantity

from optimizer.controller.queues import read_queues
from tests.test_chart import _as_json_schema, _crd

CRD = _crd("queues.stowage.io.yaml")
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


class _Quantity:
    """What Kubernetes' CEL ``quantity()`` returns: compared by value, not by text."""

    def __init__(self, text: object) -> None:
        self.value = parse_quantity(str(text))


def _compare_to(a: _Quantity, b: _Quantity) -> celtypes.IntType:
    return celtypes.IntType((a.value > b.value) - (a.value < b.value))


FUNCTIONS: dict[str, Any] = {"quantity": _Quantity, "compareTo": _compare_to}
ENVIRONMENT = celpy.Environment()


def _defaulted(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in (the API server does this first)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = _defaulted(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [_defaulted(schema["items"], v) for v in value]
    return value


def _violations(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    """(field path, message) of every rule that ``value`` breaks, at every level."""
    out = []
    for rule in schema.get("x-kubernetes-validations") or []:
        program = ENVIRONMENT.program(ENVIRONMENT.compile(rule["rule"]), functions=FUNCTIONS)
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            out.append((path + rule.get("fieldPath", ""), rule["message"]))
    if isinstance(value, dict):
        for name, sub in (schema.get("properties") or {}).items():
            if name in value:
                out += _violations(sub, value[name], f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _violations(schema["items"], item, f"{path}[{i}]")
    return out


def _queue(spec: dict[str, Any], name: str = "team-a") -> dict[str, Any]:
    return {
        "apiVersion": "stowage.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": spec,
    }


def _gpus(**item: Any) -> dict[str, Any]:
    return {"resources": [{"name": "nvidia.com/gpu", **item}]}


@dataclass(frozen=True)
class Case:
    name: str
    queue: dict[str, Any]
    #: (field path, message) the rules refuse it with; () = admitted.
    refused: tuple[tuple[str, str], ...]
    #: The start of the controller's reason (None: the controller reads it).
    controller: str | None


CASES = [
    Case("a plain queue", _queue({"weight": 2}), (), None),
    Case(
        "GPUs of a model, lending part of them",
        _queue(_gpus(model="H100", nominalQuota=8, lendingLimit=4)),
        (),
        None,
    ),
    Case(
        "its own parent",
        _queue({"parent": "team-a"}),
        ((".spec.parent", "a queue cannot be its own parent"),),
        "spec.parent:",
    ),
    Case(
        "a parent that does not exist: no rule sees other objects, the controller does",
        _queue({"parent": "org"}),
        (),
        "spec.parent: org is not a usable queue",
    ),
    Case(
        "lending more than its nominal quota",
        _queue(_gpus(nominalQuota=8, lendingLimit=10)),
        ((".spec.resources[0].lendingLimit", "lendingLimit must not exceed nominalQuota"),),
        "spec.resources[0]:",
    ),
    Case(
        "lending 1 CPU of 500m: compared as quantities",
        _queue({"resources": [{"name": "cpu", "nominalQuota": "500m", "lendingLimit": 1}]}),
        ((".spec.resources[0].lendingLimit", "lendingLimit must not exceed nominalQuota"),),
        "spec.resources[0]:",
    ),
    Case(
        "lending 1000Mi of 1Gi: less, though the text is longer",
        _queue(
            {"resources": [{"name": "memory", "nominalQuota": "1Gi", "lendingLimit": "1000Mi"}]}
        ),
        (),
        None,
    ),
    Case(
        "a model on CPU",
        _queue({"resources": [{"name": "cpu", "model": "H100", "nominalQuota": 4}]}),
        ((".spec.resources[0].model", "only nvidia.com/gpu has models"),),
        "spec.resources[0].model:",
    ),
    Case(
        "no model on CPU (the default, empty)",
        _queue({"resources": [{"name": "cpu", "nominalQuota": 4}]}),
        (),
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_queue_crd_rules(case: Case) -> None:
    jsonschema.validate(case.queue, _as_json_schema(SCHEMA))  # the structural schema passes
    queue = _defaulted(SCHEMA, case.queue)
    assert tuple(_violations(SCHEMA, queue, "")) == case.refused
    read = read_queues([queue])
    reasons = [i.reason for i in read.invalid]
    if case.controller is None:
        assert reasons == []
    else:
        [reason] = reasons
        assert reason.startswith(case.controller)


def test_every_rule_compiles_and_is_in_the_table() -> None:
    """A rule added to the CRD without a case here fails this test."""

    def rules(schema: Any) -> list[dict[str, str]]:
        if isinstance(schema, list):
            return [r for s in schema for r in rules(s)]
        if not isinstance(schema, dict):
            return []
        found = list(schema.get("x-kubernetes-validations") or [])
        for key, value in schema.items():
            if key != "x-kubernetes-validations":
                found += rules(value)
        return found

    found = rules(SCHEMA)
    assert found, "the CRD has CEL rules"
    for rule in found:
        ENVIRONMENT.compile(rule["rule"])  # raises on a rule CEL cannot parse
    tested = {message for case in CASES for _, message in case.refused}
    assert {r["message"] for r in found} == tested
