"""``stowage-agent``: run the node agent, print one discovery, import ``nvidia-smi topo -m``."""

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from agent.collector import Collector
from agent.fake.machine import FakeMachine
from agent.nvml import Nvml, NvmlUnavailableError
from agent.profile import ProfileError, dump_profile, load_profile, shipped_profile_names
from agent.runner import AgentRunner
from agent.settings import AgentSettings
from agent.topo_import import TopoParseError, profile_from_topo
from agent.topology_table import render_table
from shared.logs import configure_logging
from shared.version import __version__

app = typer.Typer(
    name="stowage-agent",
    help="The Stowage node agent: GPU topology and telemetry from NVML.",
    no_args_is_help=True,
    add_completion=False,
)
profile_app = typer.Typer(help="Device profiles for the fake NVML.", no_args_is_help=True)
app.add_typer(profile_app, name="profile")

EXIT_NO_DRIVER = 2


class Format(StrEnum):
    json = "json"
    table = "table"


FakeProfileOption = Annotated[
    str | None,
    typer.Option(
        "--fake-profile",
        help="Use a fake NVML: a shipped profile name (see `profile list`) or a YAML path.",
    ),
]


@app.callback()
def _group(
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
) -> None:
    """Logs go to stderr as key=value lines (JSON with --log-json)."""
    configure_logging(json=log_json)


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


def _fail(message: str, code: int = EXIT_NO_DRIVER) -> typer.Exit:
    typer.echo(f"stowage-agent: {message}", err=True)
    return typer.Exit(code)


def _settings(**overrides: Any) -> AgentSettings:
    try:
        return AgentSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _fail(f"invalid setting {where}: {first['msg']}", 1) from None


@contextmanager
def _node(settings: AgentSettings) -> Iterator[tuple[Nvml, Path, Path, Callable[[], None]]]:
    """NVML, host root, PodResources socket and what to call before each cycle: the real
    ones or a fake machine's (its GPUs named after the settings' node)."""
    if settings.fake_profile is None:
        yield Nvml(), settings.host_root, settings.podresources_socket, lambda: None
        return
    try:
        profile = load_profile(settings.fake_profile)
    except ProfileError as error:
        raise _fail(str(error), 1) from None
    with FakeMachine(profile, node_name=settings.node_name) as machine:
        yield Nvml(machine.binding), machine.root, machine.podresources_socket, machine.refresh_host


@app.command()
def discover(
    fake_profile: FakeProfileOption = None,
    output: Annotated[Format, typer.Option("--format", help="json or table")] = Format.json,
    node_name: Annotated[str | None, typer.Option(help="Node name to report as.")] = None,
) -> None:
    """Print one NodeReport of this node (topology and one sample per GPU)."""
    settings = _settings(node_name=node_name, fake_profile=fake_profile)
    with _node(settings) as (nvml, root, _socket, _refresh):
        collector = Collector(nvml=nvml, root=root, node_name=settings.node_name)
        try:
            collector.start()
        except NvmlUnavailableError as error:
            raise _fail(f"{error} (use --fake-profile NAME to run without a GPU)") from None
        try:
            report = collector.collect().report
        finally:
            collector.close()
    if output is Format.json:
        typer.echo(report.model_dump_json(indent=2))
    else:
        typer.echo(render_table(report))


@app.command()
def run(
    fake_profile: FakeProfileOption = None,
    node_name: Annotated[str | None, typer.Option(help="Node name to report as.")] = None,
    optimizer_url: Annotated[str | None, typer.Option(help="Optimizer base URL.")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Exporter port (0: off).")] = None,
    interval: Annotated[float | None, typer.Option(help="Seconds between cycles.")] = None,
    token_file: Annotated[Path | None, typer.Option(help="Bearer token file.")] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Export only.")] = False,
    cycles: Annotated[int | None, typer.Option(help="Stop after this many cycles.")] = None,
) -> None:
    """Collect, export and report every interval until interrupted."""
    settings = _settings(
        fake_profile=fake_profile,
        node_name=node_name,
        optimizer_url=optimizer_url,
        metrics_port=metrics_port,
        interval_s=interval,
        token_file=token_file,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with _node(settings) as (nvml, root, socket, refresh):
        runner = AgentRunner(
            settings=settings,
            nvml=nvml,
            root=root,
            podresources_socket=socket,
            report=not no_report,
            before_cycle=refresh,
        )
        try:
            runner.start()
        except NvmlUnavailableError as error:
            raise _fail(f"{error} (use --fake-profile NAME to run without a GPU)") from None
        try:
            runner.run(stop=stop, cycles=cycles)
        finally:
            runner.close()


@profile_app.command("list")
def profile_list() -> None:
    """List the shipped device profiles."""
    for name in shipped_profile_names():
        typer.echo(f"{name}: {load_profile(name).description}")


@profile_app.command("from-topo")
def profile_from_topo_command(
    path: Annotated[Path, typer.Argument(help="`nvidia-smi topo -m` output; '-' for stdin.")],
    name: Annotated[str | None, typer.Option(help="Profile name (default: file stem).")] = None,
    product: Annotated[str, typer.Option(help="GPU product name.")] = "NVIDIA GPU",
    memory_gib: Annotated[float, typer.Option(help="GPU memory, GiB.")] = 80.0,
    nvlink_version: Annotated[int | None, typer.Option(help="NVLink generation.")] = None,
) -> None:
    """Turn `nvidia-smi topo -m` output into a device profile (YAML on stdout)."""
    import sys

    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as error:
        raise _fail(f"{path}: cannot read: {error.strerror}", 1) from None
    try:
        profile = profile_from_topo(
            text,
            name=name or (path.stem if str(path) != "-" else "imported"),
            product=product,
            memory_gib=memory_gib,
            nvlink_version=nvlink_version,
        )
    except (TopoParseError, ValueError) as error:
        raise _fail(f"{path}: {error}", 1) from None
    typer.echo(dump_profile(profile), nl=False)


def main() -> None:
    """Console-script entry point."""
    app()
