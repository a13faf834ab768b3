"""A report that exercises every model of the contract, for round-trip and rejection tests."""

from __future__ import annotations

from typing import Any

from shared.report import NodeReport
from shared.samples import DGX_H100, build_report
from shared.units import GIB


def full_report_dict() -> dict[str, Any]:
    """A valid topology report as decoded JSON, with MIG, ECC, XID and per-pod processes."""
    data = build_report(DGX_H100, node_name="gpu-node-1").model_dump(mode="json")
    gpu0 = data["gpus"][0]
    gpu0["mig_enabled"] = True
    gpu0["mig_instances"] = [
        {
            "uuid": "MIG-4b1ea7b0-7a4d-5b5e-9a23-1f1e0c7d3a11",
            "profile": "1g.10gb",
            "memory_bytes": 10 * GIB,
            "gpu_instance_id": 7,
            "compute_instance_id": 0,
        }
    ]
    gpu0["cluster_uuid"] = "b7a1c2d3-0000-4000-8000-000000000001"
    gpu0["clique_id"] = 3
    sample = data["samples"][1]
    sample["ecc"] = {"corrected_total": 4, "uncorrected_total": 0}
    sample["xid_total"] = 1
    sample["last_xid"] = 13
    sample["throttle_reasons"] = ["sw_power_cap"]
    sample["processes"] = [
        {
            "pid": 4242,
            "namespace": "ml",
            "pod": "trainer-0",
            "pod_uid": "0b6f8a2e-1111-4222-8333-444455556666",
            "container": "pytorch",
            "memory_used_bytes": 30 * GIB,
        }
    ]
    return data


def full_report() -> NodeReport:
    """:func:`full_report_dict` validated."""
    return NodeReport.model_validate(full_report_dict())
