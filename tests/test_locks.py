"""The images' locks: they satisfy pyproject.toml, every package is hashed, the agent's holds
only the agent's set, and both Dockerfiles install from them by hash."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The images' interpreter (their base is python:3.11.*-slim) on either CPU.
IMAGE_ENVIRONMENTS = [
    {"python_version": "3.11", "python_full_version": "3.11.7", "platform_machine": machine}
    for machine in ("x86_64", "aarch64")
]
ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


def read_lock(path: Path) -> list[tuple[str, Version, Marker | None, int]]:
    """(name, version, marker, number of hashes) for every package a lock pins."""
    entries: list[tuple[str, Version, Marker | None, int]] = []
    for line in path.read_text().splitlines():
        if line.startswith((" ", "#")) or not line.strip():
            if "--hash=sha256:" in line and entries:
                name, version, marker, hashes = entries[-1]
                entries[-1] = (name, version, marker, hashes + 1)
            continue
        match = ENTRY.match(line)
        assert match, f"{path.name}: not a pinned requirement: {line!r}"
        marker = Marker(match["marker"]) if match["marker"] else None
        entries.append((canonicalize_name(match["name"]), Version(match["version"]), marker, 0))
    return entries


def pinned(path: Path, environment: dict[str, str]) -> dict[str, Version]:
    """What the lock installs in ``environment`` (markers evaluated)."""
    chosen: dict[str, Version] = {}
    for name, version, marker, _ in read_lock(path):
        if marker is None or marker.evaluate(environment):
            assert name not in chosen, f"{path.name}: {name} pinned twice for {environment}"
            chosen[name] = version
    return chosen


def extra_requirements(name: str, extra: str, environment: dict[str, str]) -> list[Requirement]:
    """What the installed distribution ``name`` adds for ``extra`` in ``environment``."""
    found = []
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or "extra" not in str(marker):
            continue
        if marker.evaluate({**environment, "sys_platform": "linux", "extra": extra}):
            found.append(requirement)
    assert found, f"{name}[{extra}] adds nothing: is {name} installed?"
    return found


def wanted(extras: list[str]) -> list[Requirement]:
    project = PYPROJECT["project"]
    names = list(project["dependencies"])
    for extra in extras:
        names += project["optional-dependencies"][extra]
    return [Requirement(text) for text in names]


LOCKS = {
    "agent.txt": wanted([]),
    "optimizer.txt": wanted(["optimizer", "postgres"]),
    "build.txt": [Requirement(t) for t in PYPROJECT["build-system"]["requires"]],
}


@pytest.mark.parametrize("environment", IMAGE_ENVIRONMENTS, ids=lambda e: e["platform_machine"])
@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_lock_satisfies_what_pyproject_asks_for(lock: str, environment: dict[str, str]) -> None:
    versions = pinned(REQUIREMENTS / lock, environment)
    for requirement in LOCKS[lock]:
        name = canonicalize_name(requirement.name)
        assert name in versions, f"{lock} does not pin {requirement} (run `make lock`)"
        assert requirement.specifier.contains(versions[name], prereleases=True), (
            f"{lock} pins {name}=={versions[name]}, pyproject.toml asks for {requirement}"
            " (run `make lock`)"
        )
        for extra in requirement.extras:  # uvicorn[standard], psycopg[binary]
            for needed in extra_requirements(requirement.name, extra, environment):
                assert canonicalize_name(needed.name) in versions, (
                    f"{lock} lacks {needed.name}, which {requirement} needs (run `make lock`)"
                )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_locked_package_is_hashed(lock: str) -> None:
    entries = read_lock(REQUIREMENTS / lock)
    assert entries
    unhashed = [name for name, _, _, hashes in entries if hashes == 0]
    assert not unhashed, f"{lock}: no hash for {unhashed}"


def test_the_agent_lock_holds_no_optimizer_only_package() -> None:
    agent = set(pinned(REQUIREMENTS / "agent.txt", IMAGE_ENVIRONMENTS[0]))
    # The optimizer extra's packages, less what the agent's own set pulls in (typer's rich).
    optimizer_only = {canonicalize_name(r.name) for r in wanted(["optimizer", "postgres"])}
    optimizer_only -= {canonicalize_name(r.name) for r in wanted([])} | {"rich"}
    assert {"numpy", "scikit-learn", "kubernetes", "sqlalchemy", "fastapi"} <= optimizer_only
    assert not agent & optimizer_only, f"the agent's lock holds {agent & optimizer_only}"
    assert "scipy" not in agent


def test_the_build_backend_pin_is_the_one_pyproject_builds_with() -> None:
    build = pinned(REQUIREMENTS / "build.txt", IMAGE_ENVIRONMENTS[0])
    assert set(build) >= {"setuptools", "wheel"}


@pytest.mark.parametrize("image", ["agent", "optimizer"])
def test_dockerfile_installs_from_its_lock_by_hash(image: str) -> None:
    text = (ROOT / f"Dockerfile.{image}").read_text()
    joined = text.replace("\\\n", " ")
    assert f"--require-hashes --no-deps -r requirements/{image}.txt" in joined
    assert "--require-hashes -r requirements/build.txt" in joined
    # Stowage itself without resolving: nothing is fetched that the lock did not pin.
    assert "--no-deps --no-build-isolation" in joined
    assert "--no-deps /wheels/" in joined
    final = text.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=build /opt/stowage /opt/stowage" in final
    assert "/opt/build" not in final, (
        "the build venv (pip, setuptools) must stay in the build stage"
    )
