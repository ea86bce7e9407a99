"""The one retry rule (tuitop/backends/retry.py): what becomes of a message that failed,
decided once for both stores."""

from __future__ import annotations

import json

from tuitop.backends.retry import Decision, RetryPolicy
from tuitop.message import decode
from tuitop.outcome import COUNTED, FATES, Outcome


def message(tries: int, payload: str = '{"n": 1}') -> bytes:
    return json.dumps(
        {"event_name": "t", "payload": json.loads(payload), "_enqueue_ts": 1.0,
         "_queued_total": tries}
    ).encode()  # fmt: skip


def test_a_retryable_failure_is_retried_with_one_try_more_after_the_doubling_delay() -> None:
    policy = RetryPolicy(base_delay=5.0, max_requeues=3)
    assert policy.decide(decode(message(0)), "boom", retryable=True) == Decision(
        Outcome.RETRIED, 1, delay=5.0
    )
    assert policy.decide(decode(message(1)), "boom", retryable=True).delay == 10.0  # try 2


def test_past_the_tries_it_is_given_up_with_why() -> None:
    decision = RetryPolicy(max_requeues=3).decide(decode(message(3)), "boom", retryable=True)
    assert decision == Decision(Outcome.DEAD, 4, why="boom; given up after 4 tries")
    assert not decision.retried


def test_a_permanent_failure_is_given_up_at_once_with_its_own_reason() -> None:
    decision = RetryPolicy().decide(decode(message(0)), "refused", retryable=False)
    assert (decision.outcome, decision.why) == (Outcome.DEAD, "refused")


def test_an_unreadable_message_is_never_retried() -> None:
    decision = RetryPolicy().decide(decode(b"not json"), "boom", retryable=True)
    assert decision.outcome is Outcome.DEAD
    assert decision.why.startswith("boom; unusable message: ")


def test_outcomes_are_the_stored_counter_names() -> None:
    assert Outcome.RETRIED == "retried" and f"{Outcome.DEAD}" == "dead"
    assert set(FATES) == {Outcome.RETRIED, Outcome.DEAD}
    assert Outcome.GONE not in COUNTED
