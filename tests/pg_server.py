"""A real PostgreSQL server for the tests: one a session, from the machine's own binaries.

initdb into a temporary folder, the server on a free port of 127.0.0.1 (its socket in that
folder too), trust for the test user, and a database per test, copied from a template that is
migrated once. initdb and postgres refuse to run as root: as root (CI), they run as the
`postgres` account Debian's package creates. Without the binaries the tests fail (the README's
test command and .ci/run install them).
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bot.postgres_store import open_postgres_store

USER = "bridge"
TEMPLATE = "bridge_template"
# Tests throw their data away: nothing needs to survive a crash of the machine.
FAST = ("-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off")


def binaries() -> Path | None:
    """The newest PostgreSQL's bin folder (Debian's layout), or initdb's on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(initdb: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", initdb)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class PgServer:
    bindir: Path
    folder: Path
    port: int = 0
    account: dict[str, Any] = field(default_factory=dict)
    _template_ready: bool = False
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str, password: str | None = None) -> str:
        login = USER if password is None else f"{USER}:{password}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=False,
            **self.account,
        )

    def start(self) -> None:
        data = self.folder / "data"
        made = self.run(
            "initdb", "-D", str(data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        if made.returncode:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        for _ in range(3):  # another process may take the free port before the server does
            self.port = free_port()
            options = (
                f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
            )
            started = self.run(
                "pg_ctl", "-D", str(data), "-l", str(self.folder / "log"), "-w", "-t", "30",
                "-o", " ".join((options, *FAST)), "start",
            )  # fmt: skip
            if started.returncode == 0:
                return
        log = (self.folder / "log").read_text(errors="replace")
        raise RuntimeError(f"postgres did not start: {started.stdout.strip()} {log[-2000:]}")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    async def create(self, *, migrated: bool = True) -> str:
        """A new database's name: an empty one, or one at the current schema."""
        if migrated and not self._template_ready:
            await self._admin(f"CREATE DATABASE {TEMPLATE}")
            async with open_postgres_store(self.url(TEMPLATE)):
                pass
            self._template_ready = True
        name = f"test_{next(self._names)}"
        await self._admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE if migrated else 'template0'}")
        return name

    async def drop(self, name: str) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    async def _admin(self, sql: str) -> None:
        db = await asyncpg.connect(self.url("postgres"))
        try:
            await db.execute(sql)
        finally:
            await db.close()


def _account() -> dict[str, Any]:
    """subprocess arguments that run the server's programs as `postgres` when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root, and there is no postgres account for initdb to run as")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = binaries()
    if bindir is None:
        # Missing binaries fail the tests: skipped ones would pass without proving anything.
        pytest.fail(
            "PostgreSQL's binaries (initdb, pg_ctl, postgres) are not installed: "
            "the README's test command installs Debian's postgresql"
        )
    account = _account()
    folder = Path(tempfile.mkdtemp(prefix="coze-bridge-pg-"))
    try:
        if account:
            os.chown(folder, account["user"], account["group"])
        server = PgServer(bindir, folder, account=account)
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.asynccontextmanager
async def database(server: PgServer, *, migrated: bool = True) -> AsyncIterator[str]:
    """A database of its own for one test (or one contract run), dropped afterwards; its name."""
    name = await server.create(migrated=migrated)
    try:
        yield name
    finally:
        await server.drop(name)


@pytest.fixture
async def postgres_url(pg_server: PgServer) -> AsyncIterator[str]:
    """The URL of a database of its own, at the current schema."""
    async with database(pg_server) as name:
        yield pg_server.url(name)
