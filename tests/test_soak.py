"""A small soak: concurrent streams, a third faulted, a gateway drop; all end, none mixed."""

from __future__ import annotations

from pathlib import Path

from bench.soak import run_soak, serving, soak_settings
from simdiscord import SimulatedDiscord


async def test_soak_every_stream_ends_and_none_is_mixed(sim: SimulatedDiscord, tmp_path: Path) -> None:
    async with serving(soak_settings(sim, tmp_path)) as url:
        result = await run_soak(url, sim, streams=36)
    assert result.ok, result.problems
    assert sum(result.outcomes.values()) == 36
    assert result.outcomes["ok:stop"] == 24
    assert result.outcomes["refused:content_filter"] == 4
    assert result.outcomes["silent:timeout"] == 4
    assert result.outcomes["broken:upstream_error"] == 4
    assert sim.gateway.resumes == 1
