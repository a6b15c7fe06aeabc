"""The broker-reachability rule (worker/reachability.py) on a fake clock: when it turns, when it
turns back, and what it ignores."""

from __future__ import annotations

import pytest

from worker.client import ClientError
from worker.reachability import COORDINATOR_GRACE_S, UNACKED_BOUND_S, BrokerReachability


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def tick(self, s: float) -> float:
        self.t += s
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def connected(clock: Clock) -> BrokerReachability:
    state = BrokerReachability(clock)
    state.answered(clock.t)
    clock.tick(1)
    return state


def test_unreachable_until_a_first_round_trip(clock: Clock) -> None:
    state = BrokerReachability(clock)
    assert not state.reachable
    state.answered(state.now())
    assert state.reachable


@pytest.mark.parametrize(
    "signal",
    ["commit failed", "poll failed", "probe timed out", "send failed"],
)
def test_any_failure_makes_it_unreachable_at_once(clock: Clock, signal: str) -> None:
    state = connected(clock)
    started = clock.t
    clock.tick(0.5)
    state.failed(signal, started_at=started)
    assert not state.reachable and state.reason == signal


def test_only_a_round_trip_begun_after_the_failure_clears_it(clock: Clock) -> None:
    state = connected(clock)
    sent = clock.tick(1)  # a batch goes out
    clock.tick(1)
    state.failed("probe timed out")
    failed_at = clock.t
    clock.tick(1)
    state.answered(sent)  # its acknowledgement arrives late: proves nothing
    assert not state.reachable
    state.answered(failed_at)  # begun at the very moment of the failure: not after it
    assert not state.reachable
    begun = clock.tick(0.1)
    clock.tick(0.2)
    state.answered(begun)
    assert state.reachable


def test_failures_in_flight_across_the_outage_do_not_flap_it_back(clock: Clock) -> None:
    state = connected(clock)
    commit_started = clock.tick(1)
    sent = clock.tick(0.5)
    clock.tick(1)
    state.failed("probe timed out")  # the outage
    probe = clock.tick(4)  # the broker is back
    state.answered(probe)
    assert state.reachable
    clock.tick(3)
    state.failed("commit timed out", started_at=commit_started)  # sent during the outage
    state.unacknowledged(sent)  # still being retried by the producer
    assert state.reachable
    fresh = clock.tick(1)
    state.failed("commit failed", started_at=fresh)  # a new request failing: a new outage
    assert not state.reachable


def test_sends_unacknowledged_beyond_the_bound_count_as_a_failure(clock: Clock) -> None:
    state = connected(clock)
    sent = clock.tick(1)
    state.unacknowledged(None)
    clock.tick(UNACKED_BOUND_S - 0.1)
    state.unacknowledged(sent)
    assert state.reachable
    clock.tick(0.2)
    state.unacknowledged(sent)
    assert not state.reachable
    assert state.reason.startswith("sends unacknowledged")


def test_the_coordinator_counts_only_when_unknown_for_a_while(clock: Clock) -> None:
    state = connected(clock)
    state.coordinator(known=False)  # a re-lookup after one failed request
    clock.tick(COORDINATOR_GRACE_S / 2)
    state.coordinator(known=True)
    clock.tick(COORDINATOR_GRACE_S)
    state.coordinator(known=False)
    assert state.reachable
    clock.tick(COORDINATOR_GRACE_S)
    state.coordinator(known=False)
    assert not state.reachable and state.reason == "group coordinator unknown"


def test_an_outage_seen_from_an_idle_worker_turns_and_clears_once(clock: Clock) -> None:
    """The loop's cadence: a probe every second, the coordinator checked every turn."""
    state = connected(clock)
    history = []
    for second in range(30):
        down = 5 <= second < 15
        begun = clock.t
        clock.tick(0.9 if not down else 1.5)  # a failing probe waits out its timeout
        if down:
            state.failed("probe timed out", started_at=begun)
        else:
            state.answered(begun)
        state.coordinator(known=not down)
        history.append(state.reachable)
    turns = [i for i in range(1, len(history)) if history[i] != history[i - 1]]
    assert len(turns) == 2, history  # down once, up once
    assert history[turns[0]] is False and history[turns[1]] is True


def test_an_error_the_broker_replies_with_is_an_answer(clock: Clock) -> None:
    state = connected(clock)
    started = clock.tick(1)
    state.report("offset commit failed", started, ClientError("coordinator loading", answered=True))
    assert state.reachable
    started = clock.tick(1)
    state.report("offset commit failed", started, ClientError("request timed out"))
    assert not state.reachable and state.reason == "offset commit failed: request timed out"
    clock.tick(1)
    state.report("probe", clock.t, None)
    assert state.reachable
