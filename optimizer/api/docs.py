"""``/docs`` and ``/redoc`` served from the installed package, so they work offline.

FastAPI's default pages load Swagger UI and ReDoc from a CDN, which a cluster without internet
access (or a strict Content-Security-Policy) never reaches, leaving the pages blank. Here the
assets come from the ``fastapi-offline`` package under ``/docs/assets``; Swagger UI's
Authorize button takes a bearer token (the scheme is declared in the OpenAPI document).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Final

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS: Final = "/docs/assets"


def serve_docs(app: FastAPI) -> None:
    """Mount the assets and the two pages on ``app`` (built with ``docs_url=None`` and
    ``redoc_url=None``)."""
    static = files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")
    spec = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=spec,
            title=f"{app.title} - API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=spec,
            title=f"{app.title} - API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
