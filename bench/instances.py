"""Several `coze-bridge` processes on one simulated Discord, sharing one storage URL (issue 15).

    async with BridgeInstances(sim, "postgresql://...", folder, count=2) as bridges:
        bridges["a"].base_url, bridges["b"].base_url

Each instance is `python -m bridge_api` configured by BRIDGE_* variables only, as an operator's
would be: its own listener bot (an account added to the simulation), the simulation's user
tokens, Coze bot and channel, one API key, `storage.url`, `instance.name` ("a", "b", ...) and,
when given, `instance.lease_seconds`. Each serves on a port of its own choosing (api.port 0,
read from its banner) and counts as started once /readyz answers 200. stderr goes to a file in
the instance's folder; `assert_no_secrets` checks that no token, key or password reached it.

On exit every instance still running is stopped with SIGTERM; one that had exited by itself, or
did not exit cleanly, fails the block with the tail of its stderr (secrets masked). The tests
(tests/instances_rig.py) and the benchmarks use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import string
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

from bridge_api.compat import LISTS, PLAIN
from simdiscord import SimulatedDiscord

# The folder that holds bot/, bridge_api/ and simdiscord/: the children import the same code.
ROOT = Path(__file__).resolve().parent.parent
BANNER = re.compile(r"(http://[\d.]+:\d+)/v1\b")
START_SECONDS = 45.0
STOP_SECONDS = 20.0
TAIL_CHARS = 4000
API_KEY = "sk-instances-4f9a2c7e1b"


def environ_for(settings: Mapping[str, Any]) -> dict[str, str]:
    """BRIDGE_* variables for settings given as sections (`{"api": {"port": 0}}`): strings as
    they are, anything else as JSON, as the settings read them back."""
    out: dict[str, str] = {}
    for section, value in settings.items():
        if isinstance(value, Mapping):
            for key, item in value.items():
                out[f"BRIDGE_{section.upper()}__{key.upper()}"] = _encoded(item)
        else:  # a top-level list, e.g. models
            out[f"BRIDGE_{section.upper()}"] = _encoded(value)
    return out


def _encoded(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def base_environ() -> dict[str, str]:
    """This process's environment without anything a bridge would read as its settings."""
    theirs = {*PLAIN, *LISTS}  # coze-discord-proxy's names, which the bridge also reads
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BRIDGE_") and name not in theirs
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    return env


def mask(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


@dataclass(eq=False)
class Instance:
    """One bridge process; `start` it again after `stop` or `kill` (a new port, the same state)."""

    name: str
    folder: Path
    listener_id: int
    env: dict[str, str] = field(repr=False)
    api_key: str = field(repr=False)
    base_url: str = ""
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    # The signal this rig ended it with (its exit is no crash); None while it runs, or if it
    # exited by itself.
    ended_by: signal.Signals | None = None
    # Masked in the stderr tails it reports (`BridgeInstances` fills it).
    secrets: list[str] = field(default_factory=list, repr=False)
    _stdout: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def stderr_path(self) -> Path:
        return self.folder / "stderr.log"

    @property
    def stdout_path(self) -> Path:
        return self.folder / "stdout.log"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"instance {self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def output(self) -> str:
        """Everything it wrote so far, stdout then stderr."""
        return "".join(
            path.read_text(errors="replace") for path in (self.stdout_path, self.stderr_path) if path.exists()
        )

    def stderr_tail(self, chars: int = TAIL_CHARS) -> str:
        """The end of its stderr, `secrets` masked: for failure reports."""
        if not self.stderr_path.exists():
            return ""
        return mask(self.stderr_path.read_text(errors="replace"), self.secrets)[-chars:]

    async def start(self, http: aiohttp.ClientSession) -> None:
        """Start the process; return once its /readyz answers 200."""
        assert not self.running, f"instance {self.name} is running"
        self.ended_by = None
        self.folder.mkdir(parents=True, exist_ok=True)
        with self.stderr_path.open("ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge_api",
                stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.env, cwd=self.folder,
            )  # fmt: skip
        try:
            async with asyncio.timeout(START_SECONDS):
                self.base_url = await self._banner()
                await self._ready(http)
        except BaseException:
            await self.kill()
            raise

    async def _banner(self) -> str:
        """The API's base URL, from the banner the bridge prints once it listens."""
        assert self.process is not None
        assert self.process.stdout is not None
        stdout = self.process.stdout
        with self.stdout_path.open("ab") as copy:
            while line := await stdout.readline():
                copy.write(line)
                if match := BANNER.search(line.decode(errors="replace")):
                    self._stdout = asyncio.get_running_loop().create_task(
                        _copy(stdout, self.stdout_path), name=f"bridge-{self.name}-stdout"
                    )
                    return match.group(1)
        await self.process.wait()
        raise AssertionError(
            f"instance {self.name} exited ({self.process.returncode}) before serving:\n{self.stderr_tail()}"
        )

    async def _ready(self, http: aiohttp.ClientSession) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.base_url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            if not self.running:
                raise AssertionError(
                    f"instance {self.name} exited before it was ready:\n{self.stderr_tail()}"
                )
            await asyncio.sleep(0.05)  # sleep-ok: a child process has no other signal than its answers

    async def stop(self, *, grace: float = STOP_SECONDS) -> int:
        """SIGTERM, as systemd or docker stop would; its exit code once it has exited (SIGKILL
        and an AssertionError after `grace` seconds)."""
        return await self._end(signal.SIGTERM, grace)

    async def kill(self) -> int:
        """SIGKILL: the process dies mid-whatever, as in a crash or an OOM kill."""
        return await self._end(signal.SIGKILL, STOP_SECONDS)

    async def _end(self, signum: signal.Signals, grace: float) -> int:
        process = self.process
        assert process is not None, f"instance {self.name} was never started"
        if process.returncode is None:
            self.ended_by = signum
            process.send_signal(signum)
        try:
            async with asyncio.timeout(grace):
                code = await process.wait()
        except TimeoutError:
            process.kill()  # it would not stop: a hung shutdown
            await process.wait()
            raise AssertionError(
                f"instance {self.name} did not exit within {grace:g} s of {signum.name}:\n{self.stderr_tail()}"
            ) from None
        finally:
            if self._stdout is not None:
                await self._stdout  # ends at the closed pipe
                self._stdout = None
        return code


async def _copy(stream: asyncio.StreamReader, path: Path) -> None:
    """Keep reading a child's stdout (a full pipe would block it), into its file."""
    with path.open("ab") as out:
        while chunk := await stream.read(65536):
            out.write(chunk)
            out.flush()


class BridgeInstances:
    """`count` bridges on `sim` sharing `storage_url`; an async context manager."""

    def __init__(
        self,
        sim: SimulatedDiscord,
        storage_url: str,
        folder: Path,
        *,
        count: int = 2,
        lease_seconds: float | None = None,
        settings: Mapping[str, Any] | None = None,
        extra_env: Mapping[str, Mapping[str, str]] | None = None,
        api_key: str = API_KEY,
        secrets: Iterable[str] = (),
    ) -> None:
        """`settings` (sections, as in config.toml) apply to every instance; `extra_env` maps an
        instance's name to variables of its own, applied last."""
        assert 1 <= count <= len(string.ascii_lowercase)
        self.sim = sim
        self.storage_url = storage_url
        self.api_key = api_key
        self._http: aiohttp.ClientSession | None = None
        password = urlsplit(storage_url).password
        self.instances: list[Instance] = []
        for name in string.ascii_lowercase[:count]:
            listener = sim.world.add_account(f"bridge-listener-{name}", bot=True)
            own = {
                "discord": sim.discord_settings() | {"bot_token": listener.token},
                "storage": {"url": storage_url},
                "instance": {"name": name}
                | ({} if lease_seconds is None else {"lease_seconds": lease_seconds}),
                "api": {"port": 0, "keys": [api_key]},
            }
            env = base_environ() | environ_for(_merged(own, settings or {}))
            env |= dict((extra_env or {}).get(name, {}))
            instance = Instance(name, folder / name, listener.id, env, api_key)
            self.instances.append(instance)
        # Never in any output: every account's token (and its part after the prefix), the API
        # key, the database's password.
        tokens = [account.token for account in sim.world.accounts.values()]
        self.secrets = [
            *tokens,
            *(token.partition(".")[2] for token in tokens if len(token.partition(".")[2]) >= 16),
            api_key,
            *([password, unquote(password)] if password else []),
            *secrets,
        ]
        for instance in self.instances:
            instance.secrets = self.secrets

    def __getitem__(self, key: int | str) -> Instance:
        if isinstance(key, int):
            return self.instances[key]
        return next(instance for instance in self.instances if instance.name == key)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def __len__(self) -> int:
        return len(self.instances)

    async def start(self, instance: Instance) -> None:
        """Start (or start again) one instance."""
        assert self._http is not None, "enter the BridgeInstances block first"
        await instance.start(self._http)

    async def __aenter__(self) -> BridgeInstances:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            # Together, as a fleet starts: they migrate the shared database once, under its lock.
            # One that fails cancels the others' starts (each kills its own process then).
            async with asyncio.TaskGroup() as group:
                for instance in self.instances:
                    group.create_task(self.start(instance), name=f"start-{instance.name}")
        except BaseException as exc:
            await self._stop_all()
            if isinstance(exc, BaseExceptionGroup):
                raise exc.exceptions[0] from None  # the first instance's failure, with its stderr
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        problems = await self._stop_all()
        if not problems:
            return
        report = "\n\n".join(problems)
        if exc is not None:
            exc.add_note(report)  # the block's own failure stays the one raised
            return
        raise AssertionError(report)

    async def _stop_all(self) -> list[str]:
        """Stop every instance; what went wrong with each, stderr tails included."""
        crashed = [
            i for i in self.instances if i.process is not None and not i.running and i.ended_by is None
        ]
        outcomes = await asyncio.gather(
            *(instance.stop() for instance in self.instances if instance.running), return_exceptions=True
        )
        problems = [
            mask(str(outcome), self.secrets) for outcome in outcomes if isinstance(outcome, BaseException)
        ]
        for instance in self.instances:
            code = None if instance.process is None else instance.process.returncode
            if instance in crashed:
                problems.append(
                    f"instance {instance.name} exited by itself ({code}):\n{instance.stderr_tail()}"
                )
            elif instance.ended_by == signal.SIGTERM and code not in (0, None):
                problems.append(
                    f"instance {instance.name} exited {code} on SIGTERM:\n{instance.stderr_tail()}"
                )
        if self._http is not None:
            await self._http.close()
            self._http = None
        return problems

    def assert_no_secrets(self) -> None:
        """Fail if any instance wrote a token, the API key or the database's password."""
        for instance in self.instances:
            output = instance.output()
            leaked = [n for n, secret in enumerate(self.secrets) if secret in output]
            # The index, never the secret: the failure message is output too.
            assert not leaked, (
                f"instance {instance.name} wrote secret(s) #{leaked} of BridgeInstances.secrets"
            )


def _merged(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
