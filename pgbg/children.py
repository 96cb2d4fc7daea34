"""The worker's children: spares from the fork server, the tasks running in them, and
what they say — reports, output, exit.

No database here. ``Children.handle`` turns what the selector saw into ``Event``s, which
the worker turns into writes; ``Children.start`` hands a claimed task to a spare. A
child's slot is free once its process has exited ("gone", seen on a pidfd); its exit
status comes when the fork server has reaped it ("exited").
"""

from __future__ import annotations

import logging
import selectors
from typing import Any, NamedTuple

from pgbg import forkserver
from pgbg.attempts import Attempt

logger = logging.getLogger(__name__)


class Event(NamedTuple):
    """``kind``: "message" (``value``: a report, in order), "output" (a list of texts,
    always before the report that follows them), "gone" (its slot is free), "exited"
    (``value``: its wait status; it is no longer in ``running``), "lost" (it died with
    the fork server, which has been restarted; no longer in ``running``)."""

    kind: str
    child: Attempt
    value: Any = None


class Children:
    """The fork server and the children of one worker."""

    def __init__(self, selector: selectors.BaseSelector, output_limit: int,
                 allow: tuple[str, ...] | None = None, registered_only: bool = False,
                 imports: tuple[str, ...] = ()) -> None:
        self.selector = selector
        self.allow = allow  # module prefixes: each child checks what a name resolves to
        self.registered_only = registered_only  # only @pgbg.task functions of ``imports``
        self.imports = imports  # task modules the fork server imports before it forks
        # With registered_only: the names the fork server's imports declared (each child
        # checks again); None: any name.
        self.declared: frozenset[str] | None = None
        self.output_limit = output_limit  # bytes of each task's stdout/stderr kept
        self.running: dict[int, Attempt] = {}  # by pid: handed to a spare, until reaped
        self._client: forkserver.Client | None = None
        self._database_url = ""
        self._spares: list[forkserver.Spare] = []  # forked, waiting for a task
        self._preloaded: set[str] = set()  # task modules the fork server has imported
        self._generation = 0  # preloads asked for: older spares lack the latest
        self._lease_until: float | None = None  # monotonic; see ``lease``

    @property
    def server_pid(self) -> int | None:
        return self._client.process.pid if self._client else None

    def open(self, database_url: str) -> None:
        self._database_url = database_url
        self._client = forkserver.Client(database_url, allow=self.allow,
                                         registered_only=self.registered_only,
                                         imports=self.imports)
        self.declared = self._client.declared
        self.selector.register(self._client.fileno(), selectors.EVENT_READ, "events")
        self._preloaded.clear()
        self._generation = 0
        if self._lease_until is not None:
            self._client.lease(self._lease_until)

    def close(self) -> None:
        """Stop the fork server: whatever still runs is killed, spares exit."""
        if self._client is not None:
            self.selector.unregister(self._client.fileno())
            self._client.close()
            self._client = None
        for spare in self._spares:
            spare.close()
        self._spares.clear()

    def start(self, child: Attempt) -> forkserver.Spare | None:
        """Write ``child``'s task into a spare and return it; None if no spare is ready yet
        (they are announced to ``handle``: try again after it)."""
        assert self._client is not None
        while self._spares:
            spare = self._spares.pop(0)
            if spare.give(child.task.to_wire()):
                break
            spare.close()  # it died waiting (its exit is reported, and ignored)
        else:
            return None
        self._client.used(spare.pid)
        self.running[spare.pid] = child
        spare.watch(self.selector, child)
        module = child.task.func.partition(":")[0]
        if module not in self._preloaded:  # later children start with it imported
            self._preloaded.add(module)
            self._client.preload(module)
            self._generation += 1
            for old in self._spares:
                old.close()
            self._spares.clear()
        return spare

    def lease(self, until: float) -> None:
        """The fork server kills every task's process group at ``until`` (monotonic clock)
        unless told a later time before then."""
        self._lease_until = until
        if self._client is not None:
            self._client.lease(until)

    def signal(self, child: Attempt, sig: int) -> None:
        """Signal the task's process group, through the process that forked (and so
        alone reaps) it: a pid it has not reaped cannot have been reused."""
        assert self._client is not None and child.pid is not None
        self._client.signal(child.pid, sig)

    def handle(self, data: Any) -> list[Event]:
        """What the selector reported for ``data`` ("events", or ``(kind, child)`` as
        registered by ``Spare.watch``), as events."""
        events: list[Event] = []
        if data == "events":
            self._read_server(events)
            return events
        kind, child = data
        if kind == "report":
            self._read_reports(child, events)
        elif kind == "out":
            self._read_output(child, events)
        else:
            self._gone(child, events)
        return events

    def _read_server(self, events: list[Event]) -> None:
        assert self._client is not None
        news = self._client.read()
        if news is None:  # it died, and its children with it (parent-death signal)
            logger.error("the fork server died; restarting it",
                         extra={"running": len(self.running)})
            for child in self.running.values():
                if child.pid is not None:  # its group, the child included: no Python needed
                    forkserver.kill_group(child.pid)
                if child.process is not None:
                    child.process.close()
                events.append(Event("lost", child))
            self.running.clear()
            self.close()  # dead already: this only closes its socket and reaps it
            self.open(self._database_url)
            return
        for item in news:
            if isinstance(item, forkserver.Spare):
                if item.generation < self._generation:
                    item.close()  # forked before the latest preload: it exits
                else:
                    self._spares.append(item)
            elif item["ev"] == "exited":
                self._reaped(item["pid"], item["status"], events)

    def _gone(self, child: Attempt, events: list[Event]) -> None:
        """Its process has exited: its last words are in its pipes, its slot is free."""
        if child.process is None or child.process.pidfd < 0:
            return  # seen already
        child.process.exited()
        self._read_reports(child, events)
        events.append(Event("gone", child))

    def _reaped(self, pid: int, status: int, events: list[Event]) -> None:
        """The fork server reaped ``pid``: a task's child, or a spare that died waiting."""
        child = self.running.get(pid)
        if child is None:
            for spare in [s for s in self._spares if s.pid == pid]:
                spare.close()
                self._spares.remove(spare)
            return
        self._gone(child, events)
        self._read_output(child, events, final=True)  # its group is dead: the rest
        assert child.process is not None
        child.process.close()
        del self.running[pid]
        events.append(Event("exited", child, status))

    def _read_reports(self, child: Attempt, events: list[Event]) -> None:
        assert child.process is not None
        for message in child.process.read_reports():
            if message.get("kind") == "outcome":
                self._read_output(child, events, final=True)  # printed, then how it ended
            events.append(Event("message", child, message))

    def _read_output(self, child: Attempt, events: list[Event], final: bool = False) -> None:
        """What the task printed; ``final``: and a note of what the output limit dropped."""
        process = child.process
        assert process is not None
        texts = process.read_output(self.output_limit)
        note = process.truncation_note(self.output_limit) if final else None
        texts += [note] if note else []
        if texts:
            events.append(Event("output", child, texts))
