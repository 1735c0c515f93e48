"""Long answers: "continue" after a cut-off, stitched without the ellipsis or repeated words."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from bot.continuation import Transcript, is_cut_off, join, overlap
from simdiscord import SimulatedDiscord
from simdiscord.coze import cut_off
from tests.conftest import Bridge, BridgeFactory

WHOLE = " ".join(f"Sentence {n} of a very long answer." for n in range(1, 121))


def test_cut_off_answers_end_in_an_ellipsis() -> None:
    assert is_cut_off("and so on...")
    assert is_cut_off("and so on\u2026 ")
    assert not is_cut_off("The end.")
    assert not is_cut_off("Wait... what?")


def test_overlap_waits_while_a_repeat_is_still_possible() -> None:
    previous = "one two three four five six"
    assert overlap(previous, "four fi", final=False) is None
    assert overlap(previous, "four five six seven", final=False) == len("four five six")
    assert overlap(previous, "seven eight", final=False) == 0
    assert overlap(previous, "six", final=True) == 0, "too short to count as a repeat"


def test_join_restores_the_space_lost_at_the_cut() -> None:
    assert join("end of one", "start of two") == "end of one start of two"
    assert join("end of one", ", then") == "end of one, then"
    assert join("line\n", "next") == "line\nnext"


# One repeated word is too short to tell from a real one (MIN_OVERLAP); two or more are dropped.
@given(st.integers(min_value=2, max_value=6), st.integers(min_value=0, max_value=40))
def test_stitched_parts_stream_exactly_the_whole_answer(words: int, step: int) -> None:
    text = " ".join(f"word{n}" for n in range(200))
    head, rest = text[:700].rsplit(" ", 1)[0], None
    repeated = " ".join(head.split()[-words:])
    rest = repeated + " " + text[len(head) + 1 :]
    transcript = Transcript()
    streamed = ""
    part1 = head + "..."
    for end in range(1, len(part1) + 1, step + 1):
        streamed += transcript.delta(transcript.shown(part1[:end], final=False, hide_ellipsis=True))
    transcript.next_part(part1)
    for end in range(1, len(rest) + 1, step + 1):
        streamed += transcript.delta(transcript.shown(rest[:end], final=False, hide_ellipsis=True))
    streamed += transcript.delta(transcript.shown(rest, final=True, hide_ellipsis=False))
    assert streamed == text


async def test_auto_continue_stitches_one_completion(
    sim: SimulatedDiscord, start_bridge: BridgeFactory
) -> None:
    bridge: Bridge = await start_bridge(completion={"auto_continue": 3})
    body = {
        "model": "coze",
        "stream": True,
        "messages": [{"role": "user", "content": "tell it all sim:cutoff"}],
    }
    async with bridge.http.post(f"{bridge.base_url}/v1/chat/completions", json=body) as resp:
        raw = (await resp.read()).decode()
    chunks = [json.loads(f[6:]) for f in raw.split("\n\n") if f.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed == WHOLE
    assert [c["choices"][0]["finish_reason"] for c in chunks].count("stop") == 1
    assert raw.endswith("data: [DONE]\n\n")
    prompts = sim.prompts_received
    assert [p.content for p in prompts][1:] == ["continue", "continue"]
    assert len({p.channel_id for p in prompts}) == 1
    async with bridge.openai() as client:
        plain = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "again sim:cutoff"}]
        )
    assert plain.choices[0].message.content == WHOLE


async def test_without_auto_continue_the_cut_off_answer_is_returned(
    sim: SimulatedDiscord, bridge: Bridge
) -> None:
    async with bridge.openai() as client:
        plain = await client.chat.completions.create(
            model="coze", messages=[{"role": "user", "content": "sim:cutoff"}]
        )
    assert plain.choices[0].message.content == cut_off(WHOLE)[0]
    assert len(sim.prompts_received) == 1
