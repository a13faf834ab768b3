"""``stowage-agent``: the node agent (NVML discovery, telemetry, reporting land here)."""

import typer

from shared.version import __version__

app = typer.Typer(
    name="stowage-agent",
    help="The Stowage node agent: GPU topology and telemetry from NVML.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Keep subcommands explicit even while there is only one."""


@app.command()
def version() -> None:
    """Print the agent version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
