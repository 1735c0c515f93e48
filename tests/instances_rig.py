"""Bridge processes for the multi-instance end-to-end tests (issue 15), with the tests' settings.

The process handling is bench/instances.py's (the benchmarks start instances alike); this adds
the settings every end-to-end test uses (tests/conftest.py: quick quiet periods, no pacing), a
short lease, and a streamed chat through real HTTP.

    async with bridge_instances(sim, private_pg.url, tmp_path) as bridges:
        text = await stream_chat(bridges["a"], "Hello")
        await bridges["a"].kill()
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from bench.instances import BridgeInstances, Instance
from simdiscord import SimulatedDiscord
from tests.conftest import TEST_ACCOUNTS, TEST_COMPLETION

# The shortest lease the settings allow: a killed instance's holds pass on within seconds.
LEASE_SECONDS = 3.0


@asynccontextmanager
async def bridge_instances(
    sim: SimulatedDiscord,
    storage_url: str,
    folder: Path,
    *,
    count: int = 2,
    lease_seconds: float | None = LEASE_SECONDS,
    settings: Mapping[str, Any] | None = None,
    extra_env: Mapping[str, Mapping[str, str]] | None = None,
    secrets: Iterable[str] = (),
) -> AsyncIterator[BridgeInstances]:
    """`count` bridge processes ("a", "b", ...) on `sim`, sharing `storage_url`; stopped on exit,
    which fails if one crashed. `settings` sections go over the tests' own."""
    given = dict(settings or {})
    sections = {
        "completion": TEST_COMPLETION | given.pop("completion", {}),
        "accounts": TEST_ACCOUNTS | given.pop("accounts", {}),
        **given,
    }
    async with BridgeInstances(
        sim,
        storage_url,
        folder,
        count=count,
        lease_seconds=lease_seconds,
        settings=sections,
        extra_env=extra_env,
        secrets=secrets,
    ) as bridges:
        yield bridges


async def stream_chat(
    instance: Instance,
    messages: str | list[dict[str, Any]],
    *,
    model: str = "coze",
    http: aiohttp.ClientSession | None = None,
) -> str:
    """A streamed chat completion from `instance`: its text, once [DONE] has come."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body = {"model": model, "stream": True, "messages": messages}
    async with _session(http) as session:
        url = f"{instance.base_url}/v1/chat/completions"
        async with session.post(url, json=body, headers=instance.headers) as resp:
            assert resp.status == 200, f"instance {instance.name}: {resp.status} {await resp.text()}"
            raw = (await resp.read()).decode()
    assert raw.rstrip().endswith("data: [DONE]"), f"instance {instance.name}: the stream did not end"
    chunks = [json.loads(frame[6:]) for frame in raw.split("\n\n") if frame.startswith("data: {")]
    errors = [chunk["error"] for chunk in chunks if "error" in chunk]
    assert not errors, f"instance {instance.name}: {errors}"
    return "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])


@asynccontextmanager
async def _session(http: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if http is not None:
        yield http
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as own:
        yield own
