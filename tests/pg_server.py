"""A real PostgreSQL server for the tests: one a session, from the machine's own binaries.

initdb into a temporary folder, the server on a free port of 127.0.0.1 (its socket in that
folder too), trust for the test user, and a database per test, copied from a template that is
migrated once. initdb and postgres refuse to run as root: as root (CI), they run as the
`postgres` account Debian's package creates. Without the binaries the tests fail (the README's
test command and .ci/run install them).

`private_pg` is a server of a test's own, for tests that stop and start it under running
bridges (issue 15): its data folder is a copy of one made once a session, it keeps its port across
a restart, and it holds a database `bridge` (blank: the bridges migrate it).
"""

from __future__ import annotations

import asyncio
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
PRIVATE_DATABASE = "bridge"
# Tests throw their data away: nothing needs to survive a crash of the machine.
FAST = ("-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off")
# A private server is stopped as a crash would stop it and must keep what it acknowledged:
# its commits wait for the WAL to be written (to the OS, which outlives the server).
KEEPS_COMMITS = ("-c fsync=off", "-c full_page_writes=off")


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
    options: tuple[str, ...] = FAST
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

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def initdb(self) -> None:
        made = self.run(
            "initdb", "-D", str(self.data), "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        if made.returncode:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")

    def start(self) -> None:
        """Start the server: on a free port the first time, on the same port after a stop."""
        if not (self.data / "PG_VERSION").exists():
            self.initdb()
        fixed = self.port != 0
        for _ in range(1 if fixed else 3):  # another process may take the free port before the server does
            if not fixed:
                self.port = free_port()
            options = (
                f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.folder}"
            )
            started = self.run(
                "pg_ctl", "-D", str(self.data), "-l", str(self.folder / "log"), "-w", "-t", "30",
                "-o", " ".join((options, *self.options)), "start",
            )  # fmt: skip
            if started.returncode == 0:
                return
        log = (self.folder / "log").read_text(errors="replace")
        raise RuntimeError(f"postgres did not start: {started.stdout.strip()} {log[-2000:]}")

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: "immediate" as a crash would (the default), "fast" as an operator would."""
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

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


def _bindir() -> Path:
    bindir = binaries()
    if bindir is None:
        # Missing binaries fail the tests: skipped ones would pass without proving anything.
        pytest.fail(
            "PostgreSQL's binaries (initdb, pg_ctl, postgres) are not installed: "
            "the README's test command installs Debian's postgresql"
        )
    return bindir


@contextlib.contextmanager
def _server_folder(account: dict[str, Any]) -> Iterator[Path]:
    """A temporary folder the server's account owns (initdb and postgres insist)."""
    folder = Path(tempfile.mkdtemp(prefix="coze-bridge-pg-"))
    try:
        if account:
            os.chown(folder, account["user"], account["group"])
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    account = _account()
    with _server_folder(account) as folder:
        server = PgServer(_bindir(), folder, account=account)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@dataclass
class PrivatePg:
    """A PostgreSQL server of one test's own, to stop and start while bridges use it."""

    server: PgServer
    database: str = PRIVATE_DATABASE

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    @property
    def port(self) -> int:
        return self.server.port

    def url_with(self, password: str) -> str:
        """The URL with a password in it (trust lets any through): for tests that it is never shown."""
        return self.server.url(self.database, password=password)

    async def stop(self, mode: str = "immediate") -> None:
        """Stop it (as a crash would, by default); connections to it fail from now on."""
        await asyncio.to_thread(self.server.stop, mode)

    async def start(self) -> None:
        """Start it again, on the same port, with the same data."""
        await asyncio.to_thread(self.server.start)


@pytest.fixture(scope="session")
def pg_private_data() -> Iterator[Path]:
    """A stopped server's data folder, made once a session, that each private server copies."""
    account = _account()
    with _server_folder(account) as folder:
        server = PgServer(_bindir(), folder, account=account)
        server.start()
        try:
            made = server.run(
                "createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", USER, PRIVATE_DATABASE
            )
            if made.returncode:
                raise RuntimeError(f"createdb failed: {made.stderr.strip()}")
        finally:
            server.stop("fast")  # a clean stop: a copy starts without crash recovery
        yield server.data


@pytest.fixture
def private_pg(pg_private_data: Path) -> Iterator[PrivatePg]:
    """A server of this test's own (own folder, own port), stopped at teardown."""
    account = _account()
    with _server_folder(account) as folder:
        server = PgServer(_bindir(), folder, account=account, options=KEEPS_COMMITS)
        # cp -a keeps the owner and modes postgres insists on (0700, its own account).
        copied = subprocess.run(
            ["cp", "-a", str(pg_private_data), str(server.data)], capture_output=True, text=True, check=False
        )
        if copied.returncode:
            raise RuntimeError(f"copying the data folder failed: {copied.stderr.strip()}")
        server.start()
        try:
            yield PrivatePg(server)
        finally:
            server.stop()


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
