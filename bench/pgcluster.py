"""A throwaway PostgreSQL cluster of its own, for runs that freeze or kill the database.

Never the shared server: :func:`throwaway_postgres` runs ``initdb`` and ``pg_ctl`` from the
Debian packages into a temporary folder (as the ``postgres`` user when run as root) on a
free port, and removes it afterwards. :func:`signal_cluster` sends a signal to every server
process (SIGSTOP freezes the database, SIGCONT thaws it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from bench.loopback import free_port

BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)


class ClusterUnavailableError(RuntimeError):
    """This machine cannot run a cluster of its own (the message says why)."""


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextmanager
def throwaway_postgres() -> Iterator[tuple[str, Path]]:
    """A private PostgreSQL on a free port: (URL, data directory).

    Raises:
        ClusterUnavailableError: no server binaries, or root without runuser and a postgres user.
    """
    if BIN is None or not (BIN / "initdb").exists():
        raise ClusterUnavailableError(
            "PostgreSQL's server binaries (initdb, pg_ctl) are not installed"
        )
    if os.geteuid() == 0 and (shutil.which("runuser") is None or not _has_user("postgres")):
        raise ClusterUnavailableError(
            "running as root needs runuser and the postgres user to own the cluster"
        )
    folder = Path(tempfile.mkdtemp(prefix="stowage-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    data = folder / "data"
    port = free_port()
    subprocess.run(
        _as_postgres(str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    log = folder / "server.log"  # the server must not inherit our pipes
    subprocess.run(
        _as_postgres(
            str(BIN / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data
    finally:
        signal_cluster(data, signal.SIGCONT)
        subprocess.run(
            _as_postgres(str(BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def signal_cluster(data: Path, sig: signal.Signals) -> None:
    """Send ``sig`` to the postmaster of ``data`` and every process it started."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        postmaster = psutil.Process(int(pid_file.read_text().split()[0]))
        processes = [postmaster, *postmaster.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
