"""Parsing reports off the wire and publishing the contract's JSON Schema."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from shared.report import SCHEMA_VERSION, NodeReport

#: Cross-field checks run on the whole report and start their message with the field path.
_ROOT_MESSAGE_RE: Final = re.compile(r"^(?P<path>[A-Za-z_][\w.]*): (?P<message>.+)$", re.DOTALL)

SCHEMA_ID: Final = f"https://stowage.io/schemas/node-report/v{SCHEMA_VERSION}.json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a report: where (dotted field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path or '<report>'}: {self.message}"


class ReportError(ValueError):
    """A report that does not satisfy the contract. ``problems`` lists every violation."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("invalid node report: " + "; ".join(str(p) for p in problems))


def problems_from(error: ValidationError) -> list[Problem]:
    """Flatten pydantic's errors into dotted paths (``gpus.3.uuid``) and messages."""
    problems = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not path and (match := _ROOT_MESSAGE_RE.match(message)):
            path, message = match["path"], match["message"]
        problems.append(Problem(path, message))
    return problems


def parse_report(data: str | bytes | dict[str, Any]) -> NodeReport:
    """Validate a report from JSON text or decoded JSON.

    Raises:
        ReportError: the report breaks the contract; every problem is listed with its path.
    """
    try:
        if isinstance(data, dict):
            return NodeReport.model_validate(data)
        return NodeReport.model_validate_json(data)
    except ValidationError as error:
        raise ReportError(problems_from(error)) from None


def report_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of :class:`~shared.report.NodeReport`."""
    schema = NodeReport.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }
