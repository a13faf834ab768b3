"""The wire contract: round trips, stable field names, and rejections with field paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from shared.report import (
    MAX_PROCESSES_PER_GPU,
    EccCounts,
    GpuInfo,
    GpuLink,
    GpuProcess,
    GpuSample,
    HostInfo,
    MigInstance,
    NodeReport,
    NumaNode,
    PcieLevel,
    normalize_pci_bus_id,
)
from shared.schema import ReportError, parse_report, report_json_schema
from tests.shared.factories import full_report, full_report_dict


def _nested_instances(report: NodeReport) -> dict[type[BaseModel], BaseModel]:
    assert report.host is not None
    gpu0 = report.gpus[0]
    sample = report.samples[1]
    assert sample.ecc is not None
    return {
        NodeReport: report,
        HostInfo: report.host,
        NumaNode: report.host.numa_nodes[0],
        GpuInfo: gpu0,
        MigInstance: gpu0.mig_instances[0],
        GpuLink: report.links[0],
        GpuSample: sample,
        EccCounts: sample.ecc,
        GpuProcess: sample.processes[0],
    }


@pytest.mark.parametrize(
    "model",
    [
        NodeReport,
        HostInfo,
        NumaNode,
        GpuInfo,
        MigInstance,
        GpuLink,
        GpuSample,
        EccCounts,
        GpuProcess,
    ],
    ids=lambda m: m.__name__,
)
def test_every_model_round_trips_through_json(model: type[BaseModel]) -> None:
    instance = _nested_instances(full_report())[model]
    assert model.model_validate_json(instance.model_dump_json()) == instance
    assert model.model_validate(instance.model_dump(mode="json")) == instance


def test_stable_field_names_are_on_the_wire() -> None:
    data = json.loads(full_report().model_dump_json())
    assert {"schema_version", "node_name", "gpus", "links", "samples", "host"} <= data.keys()
    assert {
        "index",
        "uuid",
        "product",
        "memory_bytes",
        "pci_bus_id",
        "numa_node",
        "cpu_affinity",
        "health",
        "clique_id",
    } <= data["gpus"][0].keys()
    assert {"gpu_a", "gpu_b", "nvlink_count", "pcie_level"} <= data["links"][0].keys()
    assert {
        "gpu_uuid",
        "util_ratio",
        "memory_used_bytes",
        "power_w",
        "energy_j",
        "temperature_c",
        "processes",
    } <= data["samples"][0].keys()
    assert {"pid", "namespace", "pod", "container", "memory_used_bytes"} <= data["samples"][1][
        "processes"
    ][0].keys()
    assert {level.value for level in PcieLevel} == {
        "internal",
        "single",
        "multiple",
        "hostbridge",
        "node",
        "system",
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        target: Any = data
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if leaf.isdigit():
            target[int(leaf)] = value
        else:
            target[leaf] = value

    return mutate


def _append_duplicate_gpu(data: dict[str, Any]) -> None:
    clone = dict(data["gpus"][1], index=8)
    data["gpus"].append(clone)


def _too_many_processes(data: dict[str, Any]) -> None:
    process = data["samples"][1]["processes"][0]
    data["samples"][1]["processes"] = [process] * (MAX_PROCESSES_PER_GPU + 1)


def _samples_only_with_gpus(data: dict[str, Any]) -> None:
    data["host"] = None


def _sample_for_unknown_gpu(data: dict[str, Any]) -> None:
    data["samples"][2]["gpu_uuid"] = "GPU-00000000-0000-0000-0000-000000000000"


def _link_reversed(data: dict[str, Any]) -> None:
    data["links"][0]["gpu_a"], data["links"][0]["gpu_b"] = 1, 0


def _link_duplicated(data: dict[str, Any]) -> None:
    data["links"].append(dict(data["links"][0]))


REJECTIONS = [
    ("ratio-above-one", _set("samples.0.util_ratio", 1.5), "samples.0.util_ratio", "less than"),
    ("negative-power", _set("samples.3.power_w", -1.0), "samples.3.power_w", "greater than"),
    ("bad-uuid", _set("gpus.2.uuid", "GPU-nope"), "gpus.2.uuid", "pattern"),
    ("bad-bus-id", _set("gpus.1.pci_bus_id", "3b:00"), "gpus.1.pci_bus_id", "PCI bus id"),
    ("zero-memory", _set("gpus.0.memory_bytes", 0), "gpus.0.memory_bytes", "greater than"),
    ("unknown-field", _set("gpus.0.colour", "green"), "gpus.0.colour", "Extra inputs"),
    ("bad-health", _set("gpus.0.health", "sad"), "gpus.0.health", "'ok', 'degraded'"),
    ("bad-pcie-level", _set("links.0.pcie_level", "PIX"), "links.0.pcie_level", "'internal'"),
    ("naive-time", _set("collected_at", "2026-01-01T00:00:00"), "collected_at", "timezone"),
    ("bad-node-name", _set("node_name", "Node_1"), "node_name", "pattern"),
    ("future-schema", _set("schema_version", 2), "schema_version", "supported: 1"),
    ("link-to-missing-gpu", _set("links.5.gpu_b", 42), "links.5.gpu_b", "not in gpus"),
    ("reversed-pair", _link_reversed, "links.0", "must be less than"),
    ("duplicate-pair", _link_duplicated, "", "duplicate link pair: (0, 1)"),
    ("duplicate-uuid", _append_duplicate_gpu, "", "duplicate GPU uuid"),
    ("too-many-processes", _too_many_processes, "samples.1.processes", "at most 512"),
    ("gpus-without-host", _samples_only_with_gpus, "", "only be sent in a topology report"),
    ("sample-for-unknown-gpu", _sample_for_unknown_gpu, "samples.2.gpu_uuid", "not in gpus"),
    ("numa-not-on-host", _set("gpus.4.numa_node", 9), "gpus.4.numa_node", "not in host"),
    ("mig-without-mode", _set("gpus.0.mig_enabled", False), "gpus.0", "mig_enabled is false"),
    # strict types: nothing is coerced
    ("bool-as-integer", _set("sequence", True), "sequence", "valid integer"),
    ("string-as-integer", _set("schema_version", "1"), "schema_version", "valid integer"),
    ("number-as-time", _set("collected_at", 12), "collected_at", "not a number"),
    ("string-as-bool", _set("gpus.1.mig_enabled", "true"), "gpus.1.mig_enabled", "valid boolean"),
    ("bool-as-number", _set("samples.0.power_w", True), "samples.0.power_w", "valid number"),
    # physical bounds, the limit in the message
    ("absurd-power", _set("samples.3.power_w", 1.7e308), "samples.3.power_w", "5000"),
    ("absurd-clock", _set("samples.3.sm_clock_hz", 1e12), "samples.3.sm_clock_hz", "10000000000"),
    ("absurd-energy", _set("samples.3.energy_j", 1e300), "samples.3.energy_j", "1000000000000000"),
    # Kubernetes' limits, equal to the store's columns
    (
        "namespace-too-long",
        _set("samples.1.processes.0.namespace", "n" * 64),
        "samples.1.processes.0.namespace",
        "at most 63",
    ),
    ("cuda-too-long", _set("cuda_version", "1" * 15 + ".1"), "cuda_version", "at most 16"),
    ("absurd-memory", _set("gpus.3.memory_bytes", 2**60), "gpus.3.memory_bytes", "17592186044416"),
    # the containers' CPU and memory (optional, from cgroups)
    (
        "negative-cores",
        _set("containers", [{"pod": "p", "cpu_cores": -1.0}]),
        "containers.0.cpu_cores",
        "greater than or equal to 0",
    ),
    (
        "string-memory",
        _set("containers", [{"memory_working_set_bytes": "4Gi"}]),
        "containers.0.memory_working_set_bytes",
        "valid integer",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [pytest.param(m, p, f, id=name) for name, m, p, f in REJECTIONS],
)
def test_invalid_reports_are_rejected_with_field_path(
    mutate: Callable[[dict[str, Any]], None], path: str, fragment: str
) -> None:
    data = full_report_dict()
    mutate(data)
    with pytest.raises(ReportError) as caught:
        parse_report(json.dumps(data))
    paths = {p.path: p.message for p in caught.value.problems}
    assert path in paths, f"expected a problem at {path!r}, got {paths}"
    assert fragment in paths[path]
    assert f"{path or '<report>'}: " in str(caught.value)


def test_malformed_json_is_a_report_error() -> None:
    with pytest.raises(ReportError, match="Invalid JSON"):
        parse_report(b'{"node_name": ')


def test_samples_report_needs_no_topology() -> None:
    data = full_report_dict()
    samples_only = {
        key: data[key] for key in ("node_name", "agent_version", "collected_at", "samples")
    }
    report = parse_report(samples_only)
    assert not report.is_topology_report
    assert len(report.samples) == 8


def test_topology_fingerprint_ignores_samples_and_time() -> None:
    data = full_report_dict()
    before = parse_report(data).topology_fingerprint()
    data["samples"][0]["util_ratio"] = 0.77
    data["collected_at"] = "2026-06-01T00:00:00Z"
    data["sequence"] = 99
    assert parse_report(data).topology_fingerprint() == before
    data["gpus"][3]["health"] = "lost"
    assert parse_report(data).topology_fingerprint() != before


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("00000000:3B:00.0", "0000:3b:00.0"),
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("3B:00.0", "0000:3b:00.0"),
        ("00000001:C1:1F.7", "0001:c1:1f.7"),
    ],
)
def test_pci_bus_ids_are_normalised_to_sysfs_form(raw: str, expected: str) -> None:
    assert normalize_pci_bus_id(raw) == expected


@pytest.mark.parametrize("raw", ["", "3b:00", "0000:3b:00.8", "100000000:3b:00.0", "zz:00.0"])
def test_bad_pci_bus_ids_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="PCI"):
        normalize_pci_bus_id(raw)


def test_pcie_levels_map_from_nvml_and_nvidia_smi() -> None:
    assert [PcieLevel.from_nvml(v) for v in (0, 10, 20, 30, 40, 50)] == list(PcieLevel)
    assert PcieLevel.from_topo_code("PIX") is PcieLevel.SINGLE
    assert PcieLevel.from_topo_code("SOC") is PcieLevel.SYSTEM
    assert PcieLevel.NODE.rank < PcieLevel.SYSTEM.rank
    with pytest.raises(ValueError, match="unknown NVML topology level 15"):
        PcieLevel.from_nvml(15)
    with pytest.raises(ValueError, match="NV12"):
        PcieLevel.from_topo_code("NV12")


def test_json_schema_describes_the_report() -> None:
    schema = report_json_schema()
    assert schema["title"] == "NodeReport"
    assert schema["$id"].endswith("/v1.json")
    assert {"node_name", "collected_at", "agent_version"} <= set(schema["required"])
    defs = schema["$defs"]
    assert {"GpuInfo", "GpuLink", "GpuSample", "GpuProcess", "HostInfo"} <= defs.keys()
    assert defs["GpuSample"]["properties"]["util_ratio"]["anyOf"][0]["maximum"] == 1.0


def test_json_schema_accepts_real_reports_and_refuses_bad_ones() -> None:
    validator = jsonschema.Draft202012Validator(report_json_schema())
    data = full_report_dict()
    assert list(validator.iter_errors(data)) == []
    data["samples"][0]["util_ratio"] = 2.0
    errors = list(validator.iter_errors(data))
    assert [list(e.absolute_path) for e in errors] == [["samples", 0, "util_ratio"]]
