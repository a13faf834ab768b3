"""Test-wide helpers: where ../shared lives and how tests that need it skip without it."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
from hypothesis import settings

# CI (.ci/run sets HYPOTHESIS_PROFILE=ci): the same examples on every run, so a landing is
# judged on the code and not on the draw; everywhere else each run draws new examples, which
# is how the property tests keep finding broken input no one thought of.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: The read-only data folder beside the repository (traces, fixtures); CI always has it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared"


def shared_data_path(*parts: str) -> Path:
    """A path under ../shared, or skip the calling test with a clear reason if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared data folder beside the repository)")
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prometheus_binary(name: str) -> str:
    """The path of Debian's ``prometheus`` package's ``name`` (``prometheus``, ``promtool``):
    skip the calling test without it, fail under CI (.ci/run installs the package)."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have {name}: .ci/run installs Debian's prometheus package")
        pytest.skip(f"{name} not installed (Debian package 'prometheus'; .ci/run installs it)")
    return found
