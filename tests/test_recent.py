"""The status page's record: the last 100 requests and an hour of per-minute figures, on a set clock."""

from __future__ import annotations

from dataclasses import dataclass

from bridge_api.recent import KEPT, MINUTES, Recent, Served

HOUR = 3600.0
# A minute boundary, so that minute arithmetic in the tests is plain.
T0 = 1_800_000_000.0 - 1_800_000_000.0 % 60


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


def served(
    at: float, status: int = 200, first: float | None = None, path: str = "/v1/chat/completions"
) -> Served:
    return Served(
        at=at,
        method="POST",
        path=path,
        status=status,
        code=None if status < 400 else "model_not_found",
        key="0123456789ab",
        model="coze",
        first_token_seconds=first,
        duration_seconds=1.5,
        continued=False,
    )


def test_it_keeps_the_last_hundred_requests_newest_first() -> None:
    recent = Recent(Clock())
    for number in range(KEPT + 30):
        recent.record(served(T0, path=f"/v1/{number}"))
    paths = [request["path"] for request in recent.requests()]
    assert len(paths) == KEPT
    assert paths[0] == f"/v1/{KEPT + 29}"
    assert paths[-1] == "/v1/30"


def test_a_request_shows_as_it_ended_with_its_time_in_utc() -> None:
    recent = Recent(Clock())
    recent.record(served(T0 + 12.345, status=404, first=None))
    assert recent.requests() == [
        {
            "at": "2027-01-15T08:00:12.345+00:00",
            "method": "POST",
            "path": "/v1/chat/completions",
            "status": 404,
            "code": "model_not_found",
            "key": "0123456789ab",
            "model": "coze",
            "first_token_seconds": None,
            "duration_seconds": 1.5,
            "continued": False,
        }
    ]


def test_each_minute_counts_requests_errors_and_the_mean_and_slowest_first_token() -> None:
    clock = Clock(T0 + 2 * 60 + 30)
    recent = Recent(clock)
    recent.record(served(T0 + 1, first=1.0))
    recent.record(served(T0 + 59, first=2.0))
    recent.record(served(T0 + 30, status=503))  # no answer: no first token
    recent.record(served(T0 + 2 * 60 + 5, first=0.5))
    minutes = recent.minutes()
    assert len(minutes) == MINUTES
    assert minutes[-1]["minute"] == "2027-01-15T08:02:00.000+00:00"  # the current minute is last
    assert minutes[-3:] == [
        {
            "minute": "2027-01-15T08:00:00.000+00:00",
            "requests": 3,
            "errors": 1,
            "first_token_mean": 1.5,
            "first_token_max": 2.0,
        },
        {
            "minute": "2027-01-15T08:01:00.000+00:00",
            "requests": 0,
            "errors": 0,
            "first_token_mean": None,
            "first_token_max": None,
        },
        {
            "minute": "2027-01-15T08:02:00.000+00:00",
            "requests": 1,
            "errors": 0,
            "first_token_mean": 0.5,
            "first_token_max": 0.5,
        },
    ]
    assert all(minute["requests"] == 0 for minute in minutes[:-3])


def test_a_minute_older_than_an_hour_drops_out_and_its_slot_starts_afresh() -> None:
    clock = Clock(T0)
    recent = Recent(clock)
    recent.record(served(T0, first=9.0))
    recent.record(served(T0 + 60, first=1.0))
    clock.now = T0 + HOUR - 1  # the first minute is still the oldest shown
    assert recent.minutes()[0]["requests"] == 1
    clock.now = T0 + HOUR
    assert [m["requests"] for m in recent.minutes()] == [1] + [0] * (MINUTES - 1)
    # The same slot of the ring, an hour on: the old minute's figures are not added to the new one.
    recent.record(served(T0 + HOUR + 10, first=3.0))
    assert recent.minutes()[-1] | {"minute": None} == {
        "minute": None,
        "requests": 1,
        "errors": 0,
        "first_token_mean": 3.0,
        "first_token_max": 3.0,
    }
    # Hours later, nothing of the past shows, though every slot still holds an old minute.
    clock.now = T0 + 5 * HOUR
    assert sum(int(str(m["requests"])) for m in recent.minutes()) == 0
    assert len(recent.requests()) == 3  # the last requests are kept by count, not by age
