"""The multi-instance rig (tests/instances_rig.py, bench/instances.py): bridge processes, each with
its own listener bot on one simulated Discord, sharing a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import asyncpg
import pytest

from bench.instances import BridgeInstances
from simdiscord import SimulatedDiscord
from tests.instances_rig import bridge_instances, stream_chat
from tests.pg_server import PrivatePg

PASSWORD = "pg-rig-pass-93b1d0"


def coze_replies_seen_by(sim: SimulatedDiscord, listener_id: int) -> set[int]:
    """The ids of Coze's messages the gateway sent to that listener's sessions."""
    coze = {bot.id for bot in sim.world.coze_bots}
    return {
        int(data["id"])
        for session in sim.gateway.sessions.values()
        if session.account_id == listener_id
        for _, kind, data in session.sent
        if kind == "MESSAGE_CREATE" and int(data["author"]["id"]) in coze
    }


async def test_two_bridges_answer_and_one_carries_on_when_the_other_is_killed(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    # trust lets any password in: it is there to be kept out of the output.
    url = private_pg.url_with(PASSWORD)
    # b logs everything it can: the check for secrets sees the most.
    async with bridge_instances(
        sim, url, tmp_path, extra_env={"b": {"BRIDGE_LOG__LEVEL": "DEBUG"}}
    ) as bridges:
        a, b = bridges
        connected = {s.account_id for s in sim.gateway.sessions.values() if s.socket is not None}
        assert {a.listener_id, b.listener_id} <= connected, "each instance has its own listener online"
        assert a.base_url != b.base_url
        answers = await asyncio.gather(stream_chat(a, "Hello from a"), stream_chat(b, "Hello from b"))
        assert all(answers)
        assert len(sim.prompts_received) == 2
        # Every listener sees every message of the server, its own instance's or not.
        assert coze_replies_seen_by(sim, a.listener_id) == coze_replies_seen_by(sim, b.listener_id)
        assert len(coze_replies_seen_by(sim, a.listener_id)) >= 2

        assert await a.kill() == -signal.SIGKILL
        assert await stream_chat(b, "Still there?")
        assert len(sim.prompts_received) == 3

        await bridges.start(a)  # again, on a new port, with the same database
        assert await stream_chat(a, "Back again")
        bridges.assert_no_secrets()
        assert " DEBUG " in (tmp_path / "b" / "stderr.log").read_text()
    db = await asyncpg.connect(private_pg.url)
    try:
        assert await db.fetchval("SELECT count(*) FROM threads") == 4, "both kept their threads in it"
    finally:
        await db.close()
    assert PASSWORD not in (tmp_path / "b" / "stderr.log").read_text()


async def test_an_instance_that_dies_by_itself_fails_the_block_with_its_stderr(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    async def crash_inside() -> None:
        async with bridge_instances(sim, private_pg.url, tmp_path, count=1) as bridges:
            os.kill(bridges["a"].pid, signal.SIGKILL)  # not through the rig: a crash
            process = bridges["a"].process
            assert process is not None
            await process.wait()

    with pytest.raises(AssertionError, match=r"instance a exited by itself \(-9\)") as caught:
        await crash_inside()
    assert "Discord" in str(caught.value), "the report holds the instance's stderr"
    assert sim.bot_token not in str(caught.value)


async def test_an_instance_that_cannot_start_says_why_without_secrets_and_stops_the_others(
    sim: SimulatedDiscord, private_pg: PrivatePg, tmp_path: Path
) -> None:
    with socket.socket() as held:  # bound, not listening: refused
        held.bind(("127.0.0.1", 0))
        unreachable = f"postgresql://bridge:{PASSWORD}@127.0.0.1:{held.getsockname()[1]}/bridge"
        rig = BridgeInstances(
            sim, private_pg.url, tmp_path, extra_env={"b": {"BRIDGE_STORAGE__URL": unreachable}}
        )
        with pytest.raises(AssertionError, match="instance b exited") as caught:
            async with rig:
                pass
    assert "cannot reach PostgreSQL" in str(caught.value)
    assert PASSWORD not in str(caught.value), "the bridge itself names no password"
    assert not rig["a"].running, "the instance that was starting is not left behind"
