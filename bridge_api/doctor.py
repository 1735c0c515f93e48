"""`coze-bridge doctor`: checks the real setup against Discord and says what to fix.

One line per check, `ok` or `FAIL` with the Developer Portal switch or permission to set
(`warn`: works, worth knowing; `skip`: an earlier FAIL hides it). Exit 0 when nothing
failed, 1 otherwise, 2 for invalid settings. Secrets are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from bot.doctor import diagnose
from bridge_api.compat import BOT_CONFIG, LISTS, PLAIN, proxy_settings
from bridge_api.settings import ConfigError, Settings, effective_environ, load_settings

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
MASK = "********"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="coze-bridge doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, help="TOML settings file (BRIDGE_* variables override it)")
    parser.add_argument("--env-file", type=Path, help="BRIDGE_* variables, one per line (as coze-bridge)")
    parser.add_argument(
        "--show-config", action="store_true", help="print the effective settings and where each came from"
    )
    parser.add_argument(
        "--probe", action="store_true", help="also post one short prompt per model and follow Coze's reply"
    )
    return parser.parse_args(argv)


async def run_doctor(settings: Settings, *, probe: bool = False) -> tuple[list[str], int]:
    """The report's lines (after the settings line) and the exit code."""
    lines = await diagnose(settings, with_probe=probe)
    failed = any(line.status == "FAIL" for line in lines)
    report = [f"ok    settings: valid ({len(settings.model_routes)} model(s))", *map(str, lines)]
    return report, EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        settings = load_settings(args.config, environ=environ, env_file=args.env_file)
    except ConfigError as exc:
        print(f"FAIL  settings: {exc}")
        return EXIT_CONFIG
    if args.show_config:
        print("ok    settings: valid; effective values (secrets masked) and their source:")
        for line in show_config(settings, args.config, environ, env_file=args.env_file):
            print(f"      {line}")
        return EXIT_OK
    lines, code = asyncio.run(run_doctor(settings, probe=args.probe))
    print("\n".join(lines))
    return code


def show_config(
    settings: Settings,
    path: Path | None,
    environ: Mapping[str, str],
    bot_config: Path = BOT_CONFIG,
    env_file: Path | None = None,
) -> list[str]:
    """`key = value  (source)` for every setting, the lowest-precedence source last checked."""
    file_data = tomllib.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    merged = effective_environ(environ, env_file)
    compat = proxy_settings(merged, bot_config)
    env_names = {
        name.upper(): "environment" if name in environ else f"env file {env_file}"
        for name in merged
        if name.upper().startswith("BRIDGE_")
    }
    dumped = settings.model_dump()
    # A token given as a plain string shows as one masked value; a table, by the keys it sets.
    dumped["discord"]["user_tokens"] = [
        SecretStr("") if entry.model_fields_set == {"token"} else entry.model_dump(exclude_unset=True)
        for entry in settings.discord.user_tokens
    ]
    out = []
    for parts, value in _flatten(dumped):
        out.append(
            f"{_key(parts)} = {_show(value)}  ({_source(parts, file_data, compat, env_names, path, bot_config)})"
        )
    return out


def _flatten(data: Any, parts: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, (*parts, key))
    elif isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        for index, item in enumerate(data):
            yield from _flatten(item, (*parts, index))
    else:
        yield parts, data


def _key(parts: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, list):
        return "[" + ", ".join(_show(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key} = {_show(item)}" for key, item in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)


def _has(data: Any, parts: tuple[str | int, ...]) -> bool:
    for part in parts:
        in_list = isinstance(part, int) and isinstance(data, list) and part < len(data)
        if in_list or (isinstance(part, str) and isinstance(data, dict) and part in data):
            data = data[part]
        else:
            return False
    return True


def _source(
    parts: tuple[str | int, ...],
    file_data: Mapping[str, Any],
    compat: Mapping[str, Any],
    env_names: Mapping[str, str],
    path: Path | None,
    bot_config: Path,
) -> str:
    # load_settings' precedence, highest first: BRIDGE_*, the file, coze-discord-proxy's names.
    # A table or list may come whole from one variable (as JSON): its prefixes count too.
    names = [p for p in parts if isinstance(p, str)]
    for depth in range(len(names), 0, -1):
        if (variable := "BRIDGE_" + "__".join(names[:depth]).upper()) in env_names:
            return f"{env_names[variable]} {variable}"
    if _has(file_data, parts):
        return f"file {path}"
    if _has(compat, parts):
        theirs = {target: name for name, target in (PLAIN | LISTS).items()}
        if len(parts) > 1 and (their := theirs.get((str(parts[0]), str(parts[1])))) is not None:
            return f"environment {their} (coze-discord-proxy)"
        if parts[0] == "models":
            return f"{bot_config} (coze-discord-proxy)"
        return "coze-discord-proxy compatibility"
    return "default"
