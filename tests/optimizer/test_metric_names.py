"""One module declares every metric the optimizer serves (optimizer/metrics.py): no other
module spells a metric name, and a served /metrics page names nothing undeclared."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from optimizer.metrics import NAMES

ROOT = Path(__file__).resolve().parents[2]


def test_no_other_module_spells_a_metric_name() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "optimizer").rglob("*.py")
        if path.name != "metrics.py"
        for name in re.findall(r'"(stowage_[a-z0-9_]+)"', path.read_text())
    ]
    assert offenders == []


def test_the_served_page_names_only_declared_metrics(client: TestClient) -> None:
    page = client.get("/metrics").text
    served = {
        re.sub(r"_(total|created)$", "", m)  # a counter's family, and prometheus_client's extra
        for m in re.findall(r"^# TYPE (stowage_[a-z0-9_]+) ", page, re.M)
    }
    assert served  # the page is not empty
    assert served <= NAMES, sorted(served - NAMES)
