"""The planner's plugin framework, after kube-scheduler's: typed statuses and registries.

A **filter** says whether a pod may go to a node and, when not, why, in words a person can
act on (:class:`Status`, with the plugin's name). A **score** plugin is a placement policy
(:mod:`.policies`, registered by name there). An **action** (:mod:`.actions`) runs on a
:class:`~optimizer.planner.session.Session` and returns decisions; the cycle
(:mod:`.cycle`) runs the configured actions in order. Registries refuse duplicate names, so
a plugin is found by the name a setting gives, as in kube-scheduler's framework registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final, Generic, TypeVar


class Code(Enum):
    """A filter's verdict (kube-scheduler's status codes, those the planner needs)."""

    SUCCESS = "Success"
    #: The pod does not fit now; something can change that (pods ending, preemption).
    UNSCHEDULABLE = "Unschedulable"
    #: Only a change of the node or the pod helps (a taint, a selector); preempting does not.
    UNRESOLVABLE = "UnschedulableAndUnresolvable"


@dataclass(frozen=True)
class Status:
    """What a plugin decided; ``reason`` is for a person (kube-scheduler's wording)."""

    code: Code
    reason: str = ""
    plugin: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS


SUCCESS: Final = Status(Code.SUCCESS)

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> plugin; a name is registered once."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> None:
        if name in self._items:
            raise ValueError(f"{self._kind} {name!r} is already registered")
        self._items[name] = item

    def get_or_raise(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items))
            raise ValueError(f"unknown {self._kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
