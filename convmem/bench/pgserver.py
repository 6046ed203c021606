"""A throwaway PostgreSQL server on loopback, for the tests and ``convmem bench store``.

Runs the OS's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/*/bin`` on Debian/Ubuntu, or on
``PATH``) on a temporary data directory, listening on 127.0.0.1 only, on a free port. PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` OS user (``runuser``).
``scripts/bootstrap`` installs the ``postgresql`` package when it is missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from convmem import RunError


def find_bindir() -> str | None:
    """The directory of ``initdb``/``pg_ctl`` (newest Debian version first), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """Starts a PostgreSQL server in a temporary directory; stops it and deletes it on exit.

    Example::

        with TempPostgres() as pg:
            store = PostgresStore(pg.conninfo)

    Args:
        fsync: Keep PostgreSQL's fsync on (default, for honest commit latencies); off makes
            tests faster and changes nothing about what a crashed *client* can leave behind.
    """

    def __init__(self, *, fsync: bool = True) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RunError(
                "PostgreSQL is not installed (no initdb): run scripts/bootstrap, or "
                "apt-get install postgresql"
            )
        self.bindir = bindir
        self.fsync = fsync
        self.port = 0
        self.root = ""
        self._as_postgres = os.geteuid() == 0

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bindir, args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )
        if proc.returncode != 0:
            log = Path(self.root, "server.log")
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RunError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
                + (f"\nserver log:\n{tail}" if tail else "")
            )
        return proc

    def start(self) -> TempPostgres:
        self.root = tempfile.mkdtemp(prefix="convmem-pg-")
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        data = os.path.join(self.root, "data")
        self._run("initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.port = _free_port()
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c max_connections=200 "
            f"-c fsync={'on' if self.fsync else 'off'}"
        )
        self._run(
            "pg_ctl",
            "-D",
            data,
            "-o",
            options,
            "-l",
            os.path.join(self.root, "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        if not self.root:
            return
        data = os.path.join(self.root, "data")
        try:
            if os.path.exists(os.path.join(data, "postmaster.pid")):
                self._run("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = ""

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
