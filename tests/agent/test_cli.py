"""``stowage-agent``: discover, run, profile commands, and their errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from agent.cli import app
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml
from agent.profile import ProfileError, load_profile, parse_profile
from agent.runner import AgentRunner
from agent.settings import AgentSettings
from tests.agent.fake_optimizer import FakeOptimizer
from tests.conftest import free_port, shared_data_path

runner = CliRunner()


def test_discover_dgx_h100_json() -> None:
    result = runner.invoke(app, ["discover", "--fake-profile", "dgx-h100", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["gpus"]) == 8
    assert {lk["nvlink_count"] for lk in report["links"]} == {18}
    assert len(report["links"]) == 28
    assert [g["numa_node"] for g in report["gpus"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert "node_discovered" in result.stderr  # logs on stderr, never in the JSON


def test_discover_table_draws_the_matrix() -> None:
    result = runner.invoke(app, ["discover", "--fake-profile", "dgx1-v100", "--format", "table"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].split()[:9] == ["GPU0", "X", "NV1", "NV1", "NV2", "NV2", "SYS", "SYS", "SYS"]
    assert "Best-connected 4 GPUs: [0, 1, 2, 3]" in result.stdout
    assert "NVLink islands: {0,1,2,3,4,5,6,7}" in result.stdout


def test_no_driver_is_one_line_and_exit_2() -> None:
    try:
        Nvml().init()
    except Exception:
        pass
    else:
        pytest.skip("this machine has a working NVIDIA driver")
    result = runner.invoke(app, ["discover"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "no NVIDIA driver found" in result.stderr
    assert "--fake-profile" in result.stderr


def test_unknown_profile_lists_the_shipped_ones() -> None:
    result = runner.invoke(app, ["discover", "--fake-profile", "dgx-9000"])
    assert result.exit_code == 1
    assert "unknown profile 'dgx-9000'" in result.stderr
    assert "dgx-h100" in result.stderr


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda d: d["gpu"].pop("product"), "gpu.product: Field required"),
        (lambda d: d["gpus"][2].update(numa_node=7), "gpus.2.numa_node: 7 is not in numa_nodes"),
        (lambda d: d.update(topology=d["topology"][:-1]), "topology: 7 rows for 8 GPUs"),
        (lambda d: d["behaviour"]["pods"][0].update(gpus=[9]), "behaviour.pods.0.gpus: no GPU 9"),
        (lambda d: d["gpu"].update(memory_gib=-1), "gpu.memory_gib"),
    ],
)
def test_malformed_profile_names_file_and_field(change, fragment: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = yaml.safe_load((Path("agent/profiles/dgx-h100.yaml")).read_text())
    change(data)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError) as caught:
        load_profile(str(path))
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)
    result = runner.invoke(app, ["discover", "--fake-profile", str(path)])
    assert result.exit_code == 1
    assert fragment in result.stderr


def test_unparseable_yaml_is_named() -> None:
    with pytest.raises(ProfileError, match=r"mine\.yaml: not valid YAML"):
        parse_profile("gpus: [", origin="mine.yaml")


def test_profile_from_topo_round_trips(tmp_path: Path) -> None:
    source = shared_data_path("fixtures", "topo", "a10-4gpu-pcie-sys-2nic.txt")
    result = runner.invoke(
        app, ["profile", "from-topo", str(source), "--product", "NVIDIA A10", "--memory-gib", "24"]
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "a10.yaml"
    path.write_text(result.stdout)
    profile = load_profile(str(path))
    assert profile.gpu.product == "NVIDIA A10"
    assert profile.topology[0].split() == ["X", "SYS", "SYS", "SYS"]
    discovered = runner.invoke(app, ["discover", "--fake-profile", str(path)])
    assert discovered.exit_code == 0, discovered.output
    assert {lk["pcie_level"] for lk in json.loads(discovered.stdout)["links"]} == {"system"}


def test_profile_from_topo_refuses_other_text(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    result = runner.invoke(app, ["profile", "from-topo", str(path)])
    assert result.exit_code == 1
    assert "no header line with GPU0" in result.stderr


def test_profile_list_names_every_shipped_profile() -> None:
    result = runner.invoke(app, ["profile", "list"])
    assert result.exit_code == 0
    names = [line.split(":")[0] for line in result.stdout.splitlines()]
    assert set(names) >= {
        "dgx-a100",
        "dgx-h100",
        "hgx-h200",
        "dgx1-v100",
        "l40s-pcie",
        "a100-pcie-bridge",
        "gb200-nvl72-tray",
    }


def test_invalid_setting_is_refused_by_name() -> None:
    result = runner.invoke(app, ["run", "--fake-profile", "dgx-h100", "--interval", "-1"])
    assert result.exit_code == 1
    assert "interval_s" in result.stderr


def test_runner_serves_metrics_and_reports_while_running() -> None:
    optimizer = FakeOptimizer()
    port = free_port()
    settings = AgentSettings(
        node_name="gpu-7",
        optimizer_url=optimizer.url,
        metrics_port=port,
        metrics_host="127.0.0.1",
        interval_s=0.05,
    )
    with FakeMachine(load_profile("dgx-h100")) as machine:
        agent = AgentRunner(
            settings=settings,
            nvml=Nvml(machine.binding),
            root=machine.root,
            podresources_socket=machine.podresources_socket,
        )
        agent.start()
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, kwargs={"stop": stop, "cycles": 3})
        thread.start()
        thread.join(timeout=30)
        scrape = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        agent.close()
    optimizer.stop()
    assert [r["sequence"] for r in optimizer.received] == [1, 2, 3]
    assert optimizer.received[0]["node_name"] == "gpu-7"
    assert 'stowage_pod_gpu_memory_used_bytes{container="trainer"' in scrape
    assert "stowage_agent_reports_sent_total 3.0" in scrape
