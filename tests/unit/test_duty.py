"""The duty's decisions (pgbg/duty.py), without a database."""

from __future__ import annotations

from pgbg.duty import Duty


def held() -> Duty:
    duty = Duty()
    duty.taken(True, now=0.0, poll_interval=5.0)
    return duty


def test_a_holder_with_a_free_slot_claims_and_keeps_the_duty() -> None:
    duty = held()
    assert duty.queued(can_claim=True)
    duty.claimed(duty.claiming(), full=False)
    assert not duty.should_release(stopping=False)


def test_a_full_holder_told_of_a_task_hands_the_duty_on() -> None:
    duty = held()
    assert not duty.queued(can_claim=False)
    assert duty.should_release(stopping=False)
    duty.released()
    assert not duty.held


def test_a_full_claim_that_answered_a_notice_hands_on_one_for_a_freed_slot_does_not() -> None:
    duty = held()
    duty.claimed(duty.claiming(), full=True)  # a freed slot's claim: nothing was heard
    assert not duty.should_release(stopping=False)
    duty.queued(can_claim=True)
    duty.claimed(duty.claiming(), full=True)
    assert duty.should_release(stopping=False)


def test_told_while_full_a_worker_takes_the_duty_later_without_passing_it_on() -> None:
    duty = Duty()
    duty.taken(False, now=0.0, poll_interval=5.0)  # another holds it
    assert not duty.should_take(can_claim=True, now=1.0)
    duty.freed(can_claim=False)
    assert not duty.should_take(can_claim=False, now=1.0)
    assert duty.should_take(can_claim=True, now=1.0)  # a slot freed
    duty.taken(True, now=1.0, poll_interval=5.0)
    duty.claimed(duty.claiming(), full=True)  # a saturated queue: no hand-over per task
    assert not duty.should_release(stopping=False)


def test_told_while_free_the_new_holder_passes_a_burst_on() -> None:
    duty = Duty()
    duty.taken(False, now=0.0, poll_interval=5.0)
    duty.freed(can_claim=True)
    duty.taken(True, now=1.0, poll_interval=5.0)
    duty.claimed(duty.claiming(), full=True)
    assert duty.should_release(stopping=False)


def test_a_loser_tries_again_at_its_poll_and_a_stopping_holder_lets_go() -> None:
    duty = Duty()
    duty.taken(False, now=0.0, poll_interval=5.0)
    assert not duty.should_take(can_claim=True, now=4.0)
    assert duty.should_take(can_claim=True, now=5.0)
    assert held().should_release(stopping=True)


def test_a_heartbeat_makes_a_worker_with_a_free_slot_try_the_duty_again() -> None:
    duty = Duty()
    duty.taken(False, now=0.0, poll_interval=3600.0)  # lost the try: next at the poll
    assert not duty.should_take(True, 10.0)
    duty.heartbeat()  # the holder may have died, freeing the lock without a word
    assert duty.should_take(True, 10.0) and not duty.should_take(False, 10.0)


def test_a_lost_connection_says_whether_the_duty_went_with_it() -> None:
    duty = Duty()
    assert duty.lost() is False
    duty.taken(True, now=0.0, poll_interval=5.0)
    assert duty.lost() is True  # then the worker says the duty is free
    assert not duty.held and duty.free
