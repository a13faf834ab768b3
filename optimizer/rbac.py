"""The Kubernetes permissions the optimizer's code uses, declared where each call is made.

Every function that calls the API server is decorated with :func:`needs`, so importing the
modules that talk to Kubernetes (``optimizer.controller.kube``, ``optimizer.auth``) fills
:data:`PERMISSIONS` with exactly what the code may ask for; a test checks that the Helm chart
grants each and that no other module builds an API client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, order=True)
class Permission:
    """One RBAC rule entry: API group ("" for core), resource (with subresource), verb."""

    group: str
    resource: str
    verb: str


PERMISSIONS: Final[set[Permission]] = set()


def needs(group: str, resource: str, *verbs: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Record that the decorated call uses ``verbs`` on ``group``/``resource``."""

    def register(function: Callable[P, R]) -> Callable[P, R]:
        PERMISSIONS.update(Permission(group, resource, verb) for verb in verbs)
        return function

    return register
