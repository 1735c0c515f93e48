"""Packaging and deploy (issue 12): the files under deploy/ run as written, so they cannot rot.

One fixture follows deploy/Dockerfile's build stage in a temporary folder: a fresh venv stands for
the base image's Python, `python -m build` makes the wheel, and the wheel goes into a fresh venv
with its dependencies from PyPI. The tests then start the installed `coze-bridge --demo` the way
the Dockerfile (CMD, HEALTHCHECK), the systemd unit (ExecStart) and a plain install do, and get a
streamed answer each time. `.ci/check` lints the Dockerfile (hadolint) and the unit
(systemd-analyze verify).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dotenv import dotenv_values

from bridge_api.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PACKAGES = ("bot", "bridge_api", "simdiscord")
KEY = "sk-ci-packaging"
ADMIN_KEY = "sk-ci-packaging-admin"
# The status page's files, served from the installed package (pyproject's package-data).
PAGE_FILES = ("index.html", "page.css", "page.js", "icon.svg")

# Building and installing from PyPI takes a minute, once for the module.
pytestmark = pytest.mark.timeout(300)
# The tests that use `installed` are async, even without awaiting: with pytest-asyncio 1.5, a
# sync test before an async one leaves an unclosed event loop behind (a ResourceWarning).


# --- deploy/Dockerfile, read as the tests need it ---------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, args = (pending + line).partition(" ")
        out.append((word.upper(), args.strip()))
        pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each stage (FROM starts one; ARGs before the first FROM are dropped)."""
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            result.append([])
        elif result:
            result[-1].append((word, args))
    return result


def env_pairs(args: str) -> dict[str, str]:
    """An ENV instruction's KEY=value pairs, or `key value`."""
    words = shlex.split(args)
    if "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def exec_form(args: str) -> list[str]:
    """CMD, or HEALTHCHECK's CMD, in exec (JSON) form: the shell form would need /bin/sh tricks."""
    if not args.startswith("["):
        _, _, args = args.partition(" CMD ")
    command = json.loads(args)
    assert isinstance(command, list)
    assert all(isinstance(word, str) for word in command)
    return command


def remap(text: str, paths: Mapping[str, Path]) -> str:
    for absolute, local in paths.items():
        text = re.sub(rf"(?<![\w/]){re.escape(absolute)}(?=/|\b|$)", str(local), text)
    return text


def remap_setting(value: str, paths: Mapping[str, Path]) -> str:
    """`remap` for a setting's value: in sqlite:////data/x.db, the path after the scheme moves."""
    scheme = "sqlite:///" if value.startswith("sqlite:///") else ""
    return scheme + remap(value.removeprefix(scheme), paths)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the project's venv, coverage hooks or BRIDGE_* settings."""
    dropped = ("BRIDGE_", "COV_CORE_", "COVERAGE_", "PYTHON", "VIRTUAL_ENV", "PYTEST_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(dropped)}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env | extra


@dataclass
class Installed:
    folder: Path  # stands for the image's root directory
    base: Path  # the fresh venv standing for the base image's Python (it has `build`)
    venv: Path  # the venv the wheel went into: the image's /opt/venv
    wheel: Path
    paths: dict[str, Path]  # the Dockerfile's absolute paths, as folders under `folder`
    final: list[tuple[str, str]]  # the final stage's instructions


def run(command: list[str], **kwargs: Any) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """deploy/Dockerfile's build stage, run step by step in a temporary folder."""
    folder = tmp_path_factory.mktemp("image")
    paths = {path: folder / path.lstrip("/") for path in ("/src", "/opt/venv", "/data")}
    base = folder / "base-python"
    run([sys.executable, "-m", "venv", str(base)])
    build, *rest = stages((DEPLOY / "Dockerfile").read_text())
    assert rest, "the Dockerfile has a build stage and a final stage"
    # The Dockerfile's PIP_NO_CACHE_DIR keeps the image small; here pip's cache saves a minute.
    env = clean_env(PATH=f"{base / 'bin'}{os.pathsep}{clean_env()['PATH']}")
    cwd = folder
    for word, args in build:
        if word == "ENV":
            env |= {k: v for k, v in env_pairs(args).items() if k != "PIP_NO_CACHE_DIR"}
        elif word == "WORKDIR":
            cwd = Path(remap(args, paths))
            cwd.mkdir(parents=True, exist_ok=True)
        elif word == "COPY":
            *sources, target = shlex.split(args)
            into = cwd / target
            for source in sources:
                origin = ROOT / source
                if origin.is_dir():
                    shutil.copytree(origin, into, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    into.mkdir(parents=True, exist_ok=True)
                    shutil.copy(origin, into / origin.name)
        elif word == "RUN":
            absolute = re.findall(r"(?<![\w./-])/[\w./*-]+", args)
            unknown = [path for path in absolute if not path.startswith(tuple(paths))]
            assert not unknown, f"the test maps no folder for {unknown}: add it to `paths`"
            run(["bash", "-euo", "pipefail", "-c", remap(args, paths)], cwd=cwd, env=env)
        else:
            assert word in {"ARG", "LABEL"}, f"the test does not follow {word} in the build stage"
    wheels = list((paths["/src"] / "dist").glob("*.whl"))
    assert len(wheels) == 1
    venv = paths["/opt/venv"]
    assert (venv / "bin" / "coze-bridge").exists()
    return Installed(folder, base, venv, wheels[0], paths, rest[-1])


# --- starting the installed bridge ------------------------------------------------------------


async def start(
    argv: list[str], env: dict[str, str], cwd: Path, log: Path
) -> tuple[asyncio.subprocess.Process, str]:
    """Start `argv`; its API's base URL, from the banner."""
    await asyncio.to_thread(cwd.mkdir, parents=True, exist_ok=True)
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=env, cwd=cwd
        )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(45):
            while True:
                line = (await proc.stdout.readline()).decode()
                if not line:
                    errors = await asyncio.to_thread(log.read_text)
                    raise AssertionError(f"{argv} exited before printing its URL:\n{errors}")
                if match := re.search(r"(http://[\d.]+:\d+/v1)", line):
                    return proc, match.group(1)
    except BaseException:
        await stop(proc, expect=None)
        raise


async def stop(proc: asyncio.subprocess.Process, *, expect: int | None = 0) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        code = await proc.wait()
    if expect is not None:
        assert code == expect


async def streamed_answer(base: str, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": "coze", "stream": True, "messages": [{"role": "user", "content": "Hello, deploy"}]}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
        http.post(f"{base}/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = (await resp.read()).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    answer = "".join(
        json.loads(frame[6:])["choices"][0]["delta"].get("content", "")
        for frame in raw.split("\n\n")
        if frame.startswith("data: {")
    )
    assert answer
    return answer


async def output(*argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=clean_env()
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"{argv} failed:\n{out.decode()}\n{err.decode()}"
    return out.decode()


# --- the wheel ----------------------------------------------------------------------------------


async def test_the_wheel_holds_every_file_of_the_packages_and_nothing_else(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert {f"bridge_api/static/{name}" for name in PAGE_FILES} <= names
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == set(PACKAGES)
    with zipfile.ZipFile(installed.wheel) as wheel:
        dist_info = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
        assert "coze-bridge = bridge_api.cli:main" in wheel.read(dist_info).decode()


async def test_the_installed_wheel_streams_a_demo_answer(installed: Installed, tmp_path: Path) -> None:
    # Outside the repository, with only the fresh venv: nothing is imported from the source tree.
    proc, base = await start(
        [str(installed.venv / "bin" / "coze-bridge"), "--demo", "--port", "0"],
        clean_env() | {"BRIDGE_API__ADMIN_KEYS": json.dumps([ADMIN_KEY])},
        tmp_path / "cwd",
        tmp_path / "stderr.log",
    )
    try:
        await streamed_answer(base)
        # The status page, and its files as shipped, come from the installed package.
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            for path, name in (("/", "index.html"), ("/admin/static/page.js", "page.js")):
                async with http.get(base.removesuffix("/v1") + path) as resp:
                    assert resp.status == 200, path
                    assert await resp.read() == (ROOT / "bridge_api" / "static" / name).read_bytes()
    finally:
        await stop(proc)


# --- deploy/Dockerfile: CMD, ENV and HEALTHCHECK ------------------------------------------------


def image_env(installed: Installed, **extra: str) -> dict[str, str]:
    """The final stage's ENV over a clean environment, its absolute paths mapped as in the build."""
    env = clean_env()
    for word, args in installed.final:
        if word == "ENV":
            for name, value in env_pairs(args).items():
                value = value.replace("${PATH}", env["PATH"]).replace("$PATH", env["PATH"])
                env[name] = remap_setting(value, installed.paths)
    return env | extra


def final(installed: Installed, word: str) -> str:
    found = [args for name, args in installed.final if name == word]
    assert len(found) == 1, f"the final stage has one {word}"
    return found[0]


async def test_the_image_refuses_to_listen_on_all_addresses_without_api_keys(installed: Installed) -> None:
    env = image_env(installed, BRIDGE_API__PORT="0")
    assert env["BRIDGE_API__HOST"] == "0.0.0.0"
    installed.paths["/data"].mkdir(exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        *exec_form(final(installed, "CMD")),
        "--demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=installed.paths["/data"],
    )
    _, err = await asyncio.wait_for(proc.communicate(), 45)
    assert proc.returncode == 2
    assert "api.keys" in err.decode()


async def test_the_image_cmd_serves_with_keys_and_its_healthcheck_passes(
    installed: Installed, tmp_path: Path
) -> None:
    env = image_env(installed, BRIDGE_API__PORT="0", BRIDGE_API__KEYS=json.dumps([KEY]))
    database = Path(env["BRIDGE_STORAGE__URL"].removeprefix("sqlite:///"))
    assert database.parent == installed.paths["/data"]
    workdir = Path(remap(final(installed, "WORKDIR"), installed.paths))
    assert final(installed, "VOLUME") in ('["/data"]', "/data")
    proc, base = await start(
        [*exec_form(final(installed, "CMD")), "--demo"], env, workdir, tmp_path / "stderr.log"
    )
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/models") as resp,
        ):
            assert resp.status == 401
        await streamed_answer(base, KEY)
        port = base.split(":")[-1].split("/")[0]
        health = await asyncio.create_subprocess_exec(
            *exec_form(final(installed, "HEALTHCHECK")), env=env | {"BRIDGE_API__PORT": port}
        )
        assert await asyncio.wait_for(health.wait(), 30) == 0
    finally:
        await stop(proc)
    assert await asyncio.to_thread(database.exists), (
        "BRIDGE_STORAGE__URL puts the database in the /data volume"
    )
    # With nothing listening, the health check fails.
    health = await asyncio.create_subprocess_exec(
        *exec_form(final(installed, "HEALTHCHECK")),
        env=env | {"BRIDGE_API__PORT": port},
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert await asyncio.wait_for(health.wait(), 30) != 0


# --- deploy/coze-bridge.service -------------------------------------------------------------------


def unit_entries(section: str) -> Iterator[tuple[str, str]]:
    current = ""
    for raw in (DEPLOY / "coze-bridge.service").read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif line and not line.startswith(("#", ";")) and current == section:
            key, _, value = line.partition("=")
            yield key.strip(), value.strip()


async def test_the_unit_keeps_state_and_secrets_where_the_readme_says() -> None:
    service = list(unit_entries("Service"))
    settings = dict(service)
    assert settings["StateDirectory"] == "coze-bridge"
    # The bridge reads the env file itself, so that `systemctl reload` sees its changes.
    assert shlex.split(settings["ExecStart"])[1:] == ["--env-file", "/etc/coze-bridge/env"]
    assert "EnvironmentFile" not in settings
    assert settings["Restart"] == "on-failure"
    assert settings["DynamicUser"] == "yes"
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert settings[hardening] == "yes"
    assert settings["ProtectSystem"] == "strict"
    environment = dict(
        pair.split("=", 1) for key, value in service if key == "Environment" for pair in shlex.split(value)
    )
    assert environment["BRIDGE_STORAGE__URL"] == "sqlite:////var/lib/coze-bridge/bridge.db"


async def test_the_unit_execstart_serves_the_demo_and_reload_rereads_its_env_file(
    installed: Installed, tmp_path: Path
) -> None:
    service = list(unit_entries("Service"))
    settings = dict(service)
    state = tmp_path / "var-lib-coze-bridge"
    etc = tmp_path / "etc-coze-bridge"
    etc.mkdir()
    (etc / "env").write_text("BRIDGE_LOG__LEVEL=INFO\n")
    paths = {"/opt/coze-bridge": installed.venv, "/var/lib/coze-bridge": state, "/etc/coze-bridge": etc}
    exec_start = shlex.split(remap(settings["ExecStart"], paths))
    assert Path(exec_start[0]) == installed.venv / "bin" / "coze-bridge"
    env = clean_env()
    for key, value in service:
        if key == "Environment":
            env |= {
                k: remap_setting(v, paths) for k, v in (pair.split("=", 1) for pair in shlex.split(value))
            }
    proc, base = await start(
        [*exec_start, "--demo", "--port", "0"],
        env,
        Path(remap(settings["WorkingDirectory"], paths)),
        tmp_path / "stderr.log",
    )
    try:
        await streamed_answer(base)
        assert (state / "bridge.db").exists()
        # `systemctl reload` sends SIGHUP: the bridge reads the env file again and keeps serving.
        assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
        (etc / "env").write_text("BRIDGE_API__KEYS='[\"sk-added-by-reload\"]'\n")
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30), aiohttp.ClientSession() as http:
            while True:  # the signal is handled between two requests; no event to wait on from here
                async with http.get(f"{base}/models") as resp:
                    if resp.status == 401:
                        break
        await streamed_answer(base, key="sk-added-by-reload")
    finally:
        await stop(proc, expect=0)


# --- deploy/compose.yaml ----------------------------------------------------------------------


async def test_compose_builds_the_image_with_env_file_volume_restart_and_healthcheck(
    installed: Installed,
) -> None:
    # PyYAML only in the throwaway venv: the project does not depend on it.
    python = str(installed.base / "bin" / "python")
    await output(python, "-m", "pip", "install", "-q", "PyYAML")
    loaded = await output(
        python,
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        str(DEPLOY / "compose.yaml"),
    )
    compose = json.loads(loaded)
    (service,) = compose["services"].values()
    build = service["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert service["env_file"] == ["bridge.env"]
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    volume, target = service["volumes"][0].split(":")
    assert target == "/data"
    assert volume in compose["volumes"]
    port = image_env(installed)["BRIDGE_API__PORT"]
    assert final(installed, "EXPOSE") == port
    assert any(str(mapping).endswith(f":{port}") for mapping in service["ports"])
    assert service["healthcheck"]["test"] == ["CMD", *exec_form(final(installed, "HEALTHCHECK"))]


# --- deploy/env.example -------------------------------------------------------------------------


def test_env_example_alone_configures_the_bridge(tmp_path: Path) -> None:
    values = dotenv_values(DEPLOY / "env.example")
    assert values
    assert all(name.startswith("BRIDGE_") for name in values)
    example = DEPLOY / "env.example"
    absent = tmp_path / "absent.json"
    settings = load_settings(environ={}, env_file=example, bot_config=absent)
    assert [model.name for model in settings.model_routes] == ["coze", "coze-drawing"]
    assert len(settings.discord.user_tokens) == 2
    assert settings.accepted_keys()
    # The image's 0.0.0.0 needs the keys the file sets.
    image = {"BRIDGE_API__HOST": "0.0.0.0"}
    assert load_settings(environ=image, env_file=example, bot_config=absent).api.host == "0.0.0.0"
