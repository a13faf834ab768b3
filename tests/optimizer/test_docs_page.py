"""``/docs`` works offline: the page loads Swagger UI from the optimizer itself, and headless
Chromium, with every host but loopback unreachable, renders the routes and the Authorize
button from it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from optimizer.api.app import create_app
from optimizer.settings import OptimizerSettings
from tests.conftest import free_port


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_pages_name_only_their_own_assets(client: TestClient, page: str) -> None:
    html = client.get(page).text
    assert re.findall(r"https?://", html) == []  # no CDN
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)
    assert assets
    for asset in assets:
        answer = client.get(asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 1000, asset


@pytest.fixture
def live(tmp_path: Path) -> Iterator[str]:
    settings = OptimizerSettings(database_url=f"sqlite:///{tmp_path / 'docs.db'}", auth="none")
    app = create_app(settings, authenticator=None, prune_in_background=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True


def _chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium not installed (Debian package 'chromium'; .ci/run installs it)")
    return found


def test_headless_chromium_renders_the_routes_offline(live: str, tmp_path: Path) -> None:
    assert httpx.get(f"{live}/readyz").status_code in (200, 503)
    offline = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--virtual-time-budget=15000",
    ]
    dom = subprocess.run(
        [*offline, "--dump-dom", f"{live}/docs"], capture_output=True, text=True, timeout=120
    ).stdout
    assert "/v1/reports" in dom  # Swagger UI rendered the operations
    assert "/v1/forecasts" in dom
    assert "Authorize" in dom  # the bearer scheme
    shot = tmp_path / "docs.png"
    subprocess.run(
        [*offline, "--window-size=1280,1600", f"--screenshot={shot}", f"{live}/docs"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
