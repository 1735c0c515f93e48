"""The completion detector, driven by synthetic event sequences and a fake clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.detector import CompletionDetector, NoReply, ReplySnapshot, Step
from bot.interface import Finished, TextDelta

QUIET, FIRST, MAX = 4.0, 60.0, 300.0


def detector() -> CompletionDetector:
    return CompletionDetector(
        started_at=0.0, quiet_seconds=QUIET, first_reply_timeout=FIRST, max_reply_seconds=MAX
    )


def deltas(steps: list[Step]) -> str:
    return "".join(step.text for step in steps if isinstance(step, TextDelta))


def test_streams_appended_text_and_ends_on_buttons() -> None:
    d = detector()
    steps = d.feed(ReplySnapshot(1, "Hel"), 1.0) + d.feed(ReplySnapshot(1, "Hello wor"), 1.5)
    steps += d.feed(ReplySnapshot(1, "Hello world", ("More?", "Why?")), 2.0)
    assert [s.text for s in steps if isinstance(s, TextDelta)] == ["Hel", "lo wor", "ld"]
    assert steps[-1] == Finished("stop", "Hello world", ("More?", "Why?"))
    assert d.done
    assert d.deadline is None


def test_marker_with_unchanged_text_adds_no_delta() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "Done."), 1.0)
    assert d.feed(ReplySnapshot(1, "Done.", ()), 2.0) == [Finished("stop", "Done.", ())]


def test_quiet_period_ends_a_reply_without_buttons() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "No buttons today"), 10.0)
    assert d.deadline == 10.0 + QUIET
    assert d.tick(10.0 + QUIET - 0.01) == []
    assert d.tick(10.0 + QUIET) == [Finished("stop", "No buttons today", ())]


def test_edits_push_the_quiet_deadline() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "a"), 1.0)
    d.feed(ReplySnapshot(1, "ab"), 4.0)
    assert d.deadline == 4.0 + QUIET


def test_never_ends_on_quiet_before_the_first_content() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, ""), 1.0)
    assert d.deadline == MAX
    assert d.tick(100.0) == []
    assert d.feed(ReplySnapshot(1, "late text"), 150.0) == [TextDelta("late text")]
    assert d.deadline == 150.0 + QUIET


def test_no_sign_of_life_is_no_reply() -> None:
    d = detector()
    assert d.deadline == FIRST
    assert d.tick(FIRST) == [NoReply()]
    assert d.done


def test_max_reply_seconds_cuts_with_length() -> None:
    d = CompletionDetector(
        started_at=0.0, quiet_seconds=QUIET, first_reply_timeout=FIRST, max_reply_seconds=10
    )
    for t in range(1, 11):
        d.feed(ReplySnapshot(1, "x" * t), float(t) - 0.5)
    assert d.deadline == 10.0
    assert d.tick(10.0) == [Finished("length", "x" * 10, ())]


def test_empty_reply_cut_by_max_is_no_reply() -> None:
    d = CompletionDetector(
        started_at=0.0, quiet_seconds=QUIET, first_reply_timeout=FIRST, max_reply_seconds=10
    )
    d.feed(ReplySnapshot(1, ""), 1.0)
    assert d.tick(10.0) == [NoReply()]


def test_followups_after_the_marker_are_ignored() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "Answer", ("Suggestion",)), 1.0)
    assert d.feed(ReplySnapshot(2, "Follow-up question?"), 1.1) == []
    assert d.text == "Answer"


def test_long_answer_continues_in_later_messages() -> None:
    d = detector()
    steps = d.feed(ReplySnapshot(10, "part one"), 1.0)
    steps += d.feed(ReplySnapshot(11, "part"), 1.2)
    steps += d.feed(ReplySnapshot(11, "part two", ("more",)), 1.4)
    assert deltas(steps) == "part one\npart two"
    assert steps[-1] == Finished("stop", "part one\npart two", ("more",))


def test_messages_are_joined_in_id_order() -> None:
    d = detector()
    d.feed(ReplySnapshot(11, "second"), 1.0)
    d.feed(ReplySnapshot(10, "first"), 1.1)
    assert d.text == "first\nsecond"


def test_rewrite_keeps_real_final_text() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "see https://x.y"), 1.0)
    steps = d.feed(ReplySnapshot(1, "see <https://x.y> now"), 1.5)
    # Streams cannot take text back: only what lies past the length already sent goes out.
    assert deltas(steps) == "see <https://x.y> now"[len("see https://x.y") :]
    assert d.feed(ReplySnapshot(1, "see <https://x.y> now", ()), 2.0)[-1] == Finished(
        "stop", "see <https://x.y> now", ()
    )


# Button labels come from an alphabet the content never uses, so a leak is visible.
contents = st.text(alphabet="abc \n", max_size=30)
labels = st.lists(st.text(alphabet="XYZ", min_size=1, max_size=5), max_size=3).map(tuple)
events = st.lists(
    st.tuples(
        st.sampled_from(["edit", "tick"]),
        st.floats(min_value=0, max_value=20),
        st.integers(min_value=1, max_value=3),
        contents,
        st.none() | labels,
    ),
    max_size=25,
)


def run(
    sequence: list[tuple[str, float, int, str, tuple[str, ...] | None]],
) -> tuple[CompletionDetector, list[Step]]:
    d = CompletionDetector(started_at=0.0, quiet_seconds=2.0, first_reply_timeout=5.0, max_reply_seconds=60.0)
    now = 0.0
    steps: list[Step] = []
    for kind, gap, message_id, content, buttons in sequence:
        now += gap
        if kind == "tick":
            steps += d.tick(now)
        else:
            steps += d.feed(ReplySnapshot(message_id, content, buttons), now)
    # Whatever happened, driving the clock to each deadline must end the reply.
    for _ in range(5):
        if (deadline := d.deadline) is None:
            break
        steps += d.tick(max(now, deadline))
        now = max(now, deadline)
    return d, steps


@given(events)
@settings(max_examples=300, deadline=None)
def test_every_sequence_ends_exactly_once_without_leaking_suggestions(
    sequence: list[tuple[str, float, int, str, tuple[str, ...] | None]],
) -> None:
    d, steps = run(sequence)
    assert d.done
    terminal = [s for s in steps if isinstance(s, Finished | NoReply)]
    assert len(terminal) == 1
    assert steps[-1] is terminal[0]
    streamed = deltas(steps)
    assert not set("XYZ") & set(streamed)
    if isinstance(terminal[0], Finished):
        assert not set("XYZ") & set(terminal[0].content)


@given(st.lists(st.text(alphabet="abc \n", min_size=1, max_size=8), min_size=1, max_size=20), labels)
@settings(max_examples=200, deadline=None)
def test_appending_edits_stream_exactly_the_final_text(pieces: list[str], buttons: tuple[str, ...]) -> None:
    d = detector()
    text = ""
    steps: list[Step] = []
    for i, piece in enumerate(pieces):
        text += piece
        steps += d.feed(ReplySnapshot(1, text), float(i))
    steps += d.feed(ReplySnapshot(1, text, buttons), float(len(pieces)))
    final = steps[-1]
    assert isinstance(final, Finished)
    assert deltas(steps) == final.content == text
    assert final.suggestions == buttons


def test_touch_restarts_the_quiet_period_but_not_the_hard_cap() -> None:
    d = detector()
    d.feed(ReplySnapshot(1, "half an answer"), 10.0)
    d.touch(12.0)
    assert d.deadline == 12.0 + QUIET
    assert d.tick(10.0 + QUIET) == []
    d.touch(MAX + 50)
    assert d.deadline == MAX
    assert d.tick(MAX) == [Finished("length", "half an answer", ())]


def test_touch_before_any_reply_changes_nothing() -> None:
    d = detector()
    d.touch(30.0)
    assert d.deadline == FIRST
