"""``stowage-optimizer``: serve the API, and manage the database."""

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Annotated, Any

import typer
import uvicorn
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from optimizer.api.app import create_app, run_prune
from optimizer.api.protocol import BoundedHttp
from optimizer.auth import (
    Authenticator,
    TokenReviewer,
    TokensFile,
    TokensFileError,
    kubernetes_token_review,
)
from optimizer.settings import OptimizerSettings
from optimizer.store import migrate
from optimizer.store.engine import make_engine
from shared.logs import configure_logging
from shared.version import __version__

app = typer.Typer(
    name="stowage-optimizer",
    help="The Stowage optimizer: report ingest, history, forecasts and placement.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema and retention.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.callback()
def _group(
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
) -> None:
    """Logs go to stderr as key=value lines (JSON with --log-json)."""
    configure_logging(json=log_json)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"stowage-optimizer: {message}", err=True)
    return typer.Exit(1)


def load_settings(**overrides: Any) -> OptimizerSettings:
    """Settings from flags, environment and the YAML file; exits naming a bad setting."""
    try:
        return OptimizerSettings(**{k: v for k, v in overrides.items() if v is not None})
    except (ValidationError, ValueError) as error:
        if isinstance(error, ValidationError):
            details = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
                for e in error.errors()
            )
        else:
            details = str(error)
        raise _fail(f"invalid settings: {details}") from None


def build_authenticator(settings: OptimizerSettings) -> Authenticator | None:
    """The authenticator the settings ask for (None for auth=none)."""
    try:
        people = TokensFile.load(settings.tokens_file) if settings.tokens_file else None
    except TokensFileError as error:
        raise _fail(str(error)) from None
    if settings.auth == "none":
        return None
    if settings.auth == "tokens":
        return people
    return TokenReviewer(
        review=kubernetes_token_review(audience=settings.tokenreview_audience),
        agent_username=settings.agent_username,
        fallback=people,
    )


@app.command()
def version() -> None:
    """Print the optimizer version."""
    typer.echo(__version__)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Serve the HTTP API (migrates SQLite databases on start)."""
    settings = load_settings(host=host, port=port)
    authenticator = build_authenticator(settings)
    if authenticator is None:
        logging.getLogger(__name__).warning("authentication disabled (auth=none)")
    application = create_app(settings, authenticator=authenticator)
    with _controller(settings, registry=application.state.stowage.registry):
        uvicorn.Server(server_config(application, settings)).run()


def server_config(application: Any, settings: OptimizerSettings) -> uvicorn.Config:
    """uvicorn's configuration for ``serve``: TLS, the header deadline, the caps on
    connections and on bodies being received, and the bounded shutdown, from the settings."""
    return uvicorn.Config(
        application,
        host=settings.host,
        port=settings.port,
        ssl_certfile=str(settings.tls_cert_file) if settings.tls_cert_file else None,
        ssl_keyfile=str(settings.tls_key_file) if settings.tls_key_file else None,
        log_level="warning",
        access_log=False,
        http=BoundedHttp.configured(
            header_timeout_s=settings.header_timeout_s,
            body_timeout_s=settings.body_timeout_s,
            max_receiving=settings.max_receiving,
            retry_after_s=settings.retry_after_s,
        ),
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


@contextlib.contextmanager
def _controller(settings: OptimizerSettings, *, registry: CollectorRegistry) -> Iterator[None]:
    """Run the Kubernetes controller beside the API when the settings ask for it (in-cluster
    configuration, or the kubeconfig outside a cluster); its metrics go in ``registry``."""
    if settings.controller == "off":
        yield
        return
    import kubernetes

    from optimizer.controller.cache import ClusterCache
    from optimizer.controller.kube import KubeApi
    from optimizer.controller.loop import Controller

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    engine = make_engine(settings.database_url)
    api = KubeApi(kubernetes.client.ApiClient())
    stop = threading.Event()
    cache = ClusterCache(api)
    cache.start(stop)
    if not cache.wait_synced(timeout=60):
        logging.getLogger(__name__).warning("node and pod watches not synced after 60 s")
    controller = Controller(api, engine, settings, view=cache, registry=registry)
    thread = threading.Thread(
        target=controller.run,
        args=(stop,),
        kwargs={"interval_s": settings.controller_interval_s},
        name="controller",
        daemon=True,
    )
    thread.start()
    logging.getLogger(__name__).warning(
        "controller running (%s) as %s", settings.controller, settings.controller_identity
    )
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=settings.controller_interval_s + 5)
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database schema to this version."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    migrate.upgrade(engine)
    typer.echo(f"database at revision {migrate.current_revision(engine)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and whether it is current."""
    settings = load_settings()
    engine = make_engine(settings.database_url)
    revision = migrate.current_revision(engine)
    head = migrate.head_revision()
    typer.echo(f"{revision or 'empty'} (this version needs {head})")
    if revision != head:
        raise typer.Exit(1)


@db_app.command("prune")
def db_prune() -> None:
    """Apply retention now (the server also does it every prune_interval_s)."""
    settings = load_settings()
    application = create_app(settings, authenticator=None, prune_in_background=False)
    run_prune(application.state.stowage)


def main() -> None:
    """Console-script entry point."""
    app()
