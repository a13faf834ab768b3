"""``stowage-optimizer``: the central optimizer process (service commands land here)."""

import typer

from shared.version import __version__

app = typer.Typer(
    name="stowage-optimizer",
    help="The Stowage optimizer: report ingest, history, forecasts and placement.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Keep subcommands explicit even while there is only one."""


@app.command()
def version() -> None:
    """Print the optimizer version."""
    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()
