"""Which worker hears of new tasks: one on duty, so that an enqueue wakes one worker.

Every enqueue sends a NOTIFY. If every worker LISTENed to it, each would run a claim step
and all but one would find nothing: with 8 idle workers, 8 claim steps per task. Instead
one worker at a time is *on duty*: it holds a session advisory lock and is the only one
that LISTENs to new tasks (``queries.worker_duty_take`` / ``worker_duty_release``).

- It keeps the duty while it can claim. Told of a task when it cannot (no slot free,
  stopping, its lease unsure), or when its claim came back full (more may wait), it hands
  the duty on: UNLISTEN, unlock and a NOTIFY on the duty channel, all workers' channel.
- A worker that can claim and believes the duty free (told so, or at start) tries to take
  it; whoever wins LISTENs first, then claims, so a task queued while nobody listened is
  found by that claim. A loser knows the duty is held and tries again only at its poll.
  If the winner was told while it had a slot free, that claim answers the notice: should
  it come back full, the duty moves on again, so a burst fans out over the idle workers
  one hand-over at a time. A worker told while it had no slot free only remembers that
  the duty is free: it claims anyway once a slot frees, and a claim made for a freed slot
  never hands the duty on, so a saturated queue does not pass it round with every task.
- A holder that loses its connection says the duty is free once it has reconnected; one
  that dies cannot: its lock goes with its session, without a word. So a worker with a slot
  free also tries the duty at every heartbeat: a dead holder costs the others at most a
  heartbeat interval of deafness (a task is never lost: a worker with a slot free claims
  at every poll too).

The bound: one enqueue leads to one claim step if the worker on duty has a slot free, else
to one hand-over (a statement by the holder, a try by each worker with a slot free) and
one claim step by the new holder; at most two, however many workers run. Workers with no
slot free never claim on a NOTIFY. Poll-only workers (no LISTEN) take no part.

No I/O here: the worker asks what to do and reports what happened.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Duty:
    held: bool = False
    free: bool = True  # as last heard: the duty may be free (so: try to take it)
    more: bool = False  # told so while a slot was free: tasks may wait for us
    hand_on: bool = False  # held, and to be handed on at the next chance
    heard: bool = False  # told of new tasks since the last claim began
    next_try: float = 0.0  # a try regardless of what was heard, at the poll

    def queued(self, can_claim: bool) -> bool:
        """Told of new tasks; True if this worker should claim now."""
        if not self.held:  # a notice sent before our UNLISTEN took effect: not ours
            return False
        self.heard = True
        if not can_claim:
            self.hand_on = True
        return can_claim

    def freed(self, can_claim: bool) -> None:
        """Another worker (or this one) handed the duty on."""
        self.free = True
        self.more = self.more or can_claim

    def should_take(self, can_claim: bool, now: float) -> bool:
        return not self.held and can_claim and (self.free or now >= self.next_try)

    def taken(self, won: bool, now: float, poll_interval: float) -> None:
        self.held, self.free, self.heard, self.more = won, False, won and self.more, False
        self.next_try = now + poll_interval

    def should_release(self, stopping: bool) -> bool:
        return self.held and (self.hand_on or stopping)

    def released(self) -> None:
        self.held = self.hand_on = self.heard = False

    def claiming(self) -> bool:
        """A claim begins; True if it answers a notice of new tasks."""
        answering, self.heard = self.heard, False
        return answering

    def claimed(self, answering: bool, full: bool) -> None:
        """A claim that answered a notice came back full: more may wait; hand on."""
        if self.held and answering and full:
            self.hand_on = True

    def lost(self) -> bool:
        """The connection is gone, and the lock with it; True if it was held (then say, once
        connected again, that the duty is free)."""
        held = self.held
        self.held = self.hand_on = self.heard = self.more = False
        self.free = True
        return held

    def heartbeat(self) -> None:
        """A try at the next chance, whatever was heard: a holder that died freed the lock
        without a word."""
        self.next_try = 0.0
