"""The fork server: the small process that forks every task's child.

Forking costs in proportion to what the forking process has mapped; a process that has
loaded psycopg forks about four times slower than a bare interpreter. So the worker never
forks: it starts this process (which never imports psycopg), tells it which tasks to run,
and hears back pids, what the tasks record, and how they ended. Task modules are imported
here once, on first use, so every later child starts with them loaded.

Protocol: JSON lines. Commands on ``cmd_fd`` from the worker:
``{"op": "run", "task": {...}}``, ``{"op": "signal", "task_id": ..., "sig": n}``.
Events on ``event_fd`` to the worker: ``{"ev": "ready"}``,
``{"ev": "started", "task_id", "pid"}``, ``{"ev": "message", "task_id", "message"}``,
``{"ev": "exited", "task_id", "status"}`` (the wait status). End of file on ``cmd_fd``
(the worker is gone) kills every task and ends the server. ``Client`` is the worker's end.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgbg import child

if TYPE_CHECKING:
    import subprocess


@dataclass
class _Running:
    task_id: str  # "" while it is the spare, waiting for a task
    pid: int
    pidfd: int
    pipe: int
    task_fd: int = -1  # the spare's: where its task is written
    out: int = -1  # what the task (and anything it starts) writes to stdout and stderr
    out_kept: int = 0
    out_dropped: int = 0
    out_noted: int = 0  # of the dropped bytes, how many a truncation note has reported
    partial: bytes = b""


@dataclass
class Server:
    cmd_fd: int
    event_fd: int
    output_limit: int = 1 << 20  # bytes of a task's output forwarded; the rest is counted
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    children: dict[str, _Running] = field(default_factory=dict)
    spare: _Running | None = None
    outgoing: bytearray = field(default_factory=bytearray)
    commands: bytes = b""
    preloaded: set[str] = field(default_factory=set)
    accepting: bool = True

    def serve(self) -> None:
        os.set_blocking(self.cmd_fd, False)
        os.set_blocking(self.event_fd, False)
        self.selector.register(self.cmd_fd, selectors.EVENT_READ, "cmd")
        self.emit({"ev": "ready"})
        self.fork_spare()
        while self.accepting or self.children or self.spare:
            self.flush()
            for key, _mask in self.selector.select():
                if key.data == "cmd":
                    self.read_commands()
                elif key.data == "out":
                    self.flush()
                elif isinstance(key.data, tuple):
                    kind, running = key.data
                    if kind == "pidfd" and running.pidfd == key.fd:
                        self.reap(running)
                    elif kind == "pipe" and running.pipe == key.fd:
                        self.read_child(running)
                    elif kind == "out" and running.out == key.fd:
                        self.read_output(running)
        self.flush(block=True)

    # -- to the worker -------------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        self.outgoing += json.dumps(event).encode() + b"\n"

    def flush(self, block: bool = False) -> None:
        """Write what the worker has not taken yet; never block unless told to."""
        os.set_blocking(self.event_fd, block)
        try:
            while self.outgoing:
                del self.outgoing[:os.write(self.event_fd, self.outgoing)]
        except BlockingIOError:
            pass
        except BrokenPipeError:
            self.outgoing.clear()  # the worker is gone; cmd EOF ends us shortly
        waiting = self.event_fd in self.selector.get_map()
        if self.outgoing and not waiting:
            self.selector.register(self.event_fd, selectors.EVENT_WRITE, "out")
        elif not self.outgoing and waiting:
            self.selector.unregister(self.event_fd)

    # -- from the worker -----------------------------------------------------------

    def read_commands(self) -> None:
        try:
            chunk = os.read(self.cmd_fd, 65536)
        except BlockingIOError:
            return
        if not chunk:  # the worker is gone: nothing we started may outlive it
            self.accepting = False
            self.selector.unregister(self.cmd_fd)
            for running in self.children.values():
                _kill(running.pid, signal.SIGKILL)
            if self.spare is not None:  # end of file on its task pipe: it exits
                os.close(self.spare.task_fd)
                self.spare.task_fd = -1
            return
        lines = (self.commands + chunk).split(b"\n")
        self.commands = lines.pop()
        for line in lines:
            command = json.loads(line)
            if command["op"] == "run":
                self.start(command["task"])
            elif command["op"] == "signal" and command["task_id"] in self.children:
                _kill(self.children[command["task_id"]].pid, command["sig"])

    # -- children ------------------------------------------------------------------

    def fork_spare(self) -> None:
        """Fork the child the next task will run in, ahead of need, so that a task starts
        without waiting for a fork (the next spare is forked while it runs)."""
        if not self.accepting or self.spare is not None:
            return
        task_r, task_w = os.pipe2(os.O_CLOEXEC)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.dup2(out_w, 1)  # the task's stdout and stderr, and its children's, captured
            os.dup2(out_w, 2)
            for fd in (task_w, read_fd, out_r, out_w, self.cmd_fd, self.event_fd):
                os.close(fd)
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            child.serve(task_r, write_fd, parent)
        os.close(task_r)
        os.close(write_fd)
        os.close(out_w)
        os.set_blocking(out_r, False)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins
        os.set_blocking(read_fd, False)
        self.spare = _Running("", pid, os.pidfd_open(pid), read_fd, task_w, out_r)
        self.selector.register(self.spare.pidfd, selectors.EVENT_READ, ("pidfd", self.spare))
        self.selector.register(read_fd, selectors.EVENT_READ, ("pipe", self.spare))
        self.selector.register(out_r, selectors.EVENT_READ, ("out", self.spare))

    def start(self, task: dict[str, Any]) -> None:
        """Hand ``task`` (a task row as JSON values, passed through as it came) to the spare."""
        module = task["func"].partition(":")[0]
        if module not in self.preloaded:
            self.preloaded.add(module)
            with contextlib.suppress(Exception):  # the child reports the error properly
                importlib.import_module(module)
            if self.spare is not None:  # forked before the preload: replace it, once
                self.retire_spare()
        self.fork_spare()
        running, self.spare = self.spare, None
        assert running is not None
        running.task_id = task["id"]
        data = json.dumps(task).encode()
        os.set_blocking(running.task_fd, True)
        while data:
            data = data[os.write(running.task_fd, data):]
        os.close(running.task_fd)
        running.task_fd = -1
        self.children[running.task_id] = running
        self.emit({"ev": "started", "task_id": running.task_id, "pid": running.pid})
        self.flush()  # the worker hears of it before we spend time forking
        self.fork_spare()  # while this task runs

    def retire_spare(self) -> None:
        spare, self.spare = self.spare, None
        assert spare is not None
        os.close(spare.task_fd)  # end of file: it exits, and is reaped like any child
        spare.task_fd = -1
        self.children[f"spare-{spare.pid}"] = spare
        spare.task_id = f"spare-{spare.pid}"

    def read_child(self, running: _Running) -> None:
        while True:
            try:
                chunk = os.read(running.pipe, 65536)
            except BlockingIOError:
                return
            if not chunk:
                running.pipe = self.unwatch(running.pipe)
                return
            lines = (running.partial + chunk).split(b"\n")
            running.partial = lines.pop()
            for line in lines:
                message = json.loads(line)
                if message.get("kind") == "outcome" and running.out >= 0:
                    self.read_output(running)  # what it printed, before how it ended
                    self.note_truncation(running)
                self.emit({"ev": "message", "task_id": running.task_id, "message": message})

    def read_output(self, running: _Running) -> None:
        """Forward what the task printed, as it comes, up to the limit; count the rest."""
        while True:
            try:
                chunk = os.read(running.out, 65536)
            except BlockingIOError:
                return
            if not chunk:
                running.out = self.unwatch(running.out)
                return
            room = max(0, self.output_limit - running.out_kept)
            if room and running.task_id:
                kept = chunk[:room]
                running.out_kept += len(kept)
                self.emit({"ev": "output", "task_id": running.task_id,
                           "text": kept.decode("utf-8", "replace")})
            running.out_dropped += len(chunk) - min(room, len(chunk))

    def note_truncation(self, running: _Running) -> None:
        """Say how much output was not kept, once per batch dropped since the last note."""
        if running.out_dropped > running.out_noted and running.task_id:
            self.emit({"ev": "output", "task_id": running.task_id, "truncated": True,
                       "text": f"[output truncated: {running.out_dropped - running.out_noted} "
                               f"more bytes not kept (limit {self.output_limit})]"})
            running.out_noted = running.out_dropped

    def unwatch(self, fd: int) -> int:
        """Stop watching ``fd`` and close it; returns -1, the value for "closed"."""
        self.selector.unregister(fd)
        os.close(fd)
        return -1

    def reap(self, running: _Running) -> None:
        # Exited but not reaped: its pid and group id cannot have been reused yet, so kill
        # whatever it left behind in its group, then reap it.
        _kill(running.pid, signal.SIGKILL)
        _pid, status = os.waitpid(running.pid, 0)
        if running.pipe >= 0:
            self.read_child(running)  # its last words are in the pipe buffer by now
        if running.pipe >= 0:  # a grandchild holds the pipe open; stop listening to it
            running.pipe = self.unwatch(running.pipe)
        if running.out >= 0:
            self.read_output(running)  # what is left in the pipe; the group is dead now
        if running.out >= 0:
            running.out = self.unwatch(running.out)
        self.note_truncation(running)
        running.pidfd = self.unwatch(running.pidfd)
        if running is self.spare:  # died waiting, or told to exit: fork another if open
            if running.task_fd >= 0:
                os.close(running.task_fd)
            self.spare = None
            self.fork_spare()
            return
        del self.children[running.task_id]
        if not running.task_id.startswith("spare-"):
            self.emit({"ev": "exited", "task_id": running.task_id, "status": status})




class Client:
    """The worker's end: starts the fork server, sends it commands, reads its events."""

    def __init__(self, output_limit: int, database_url: str) -> None:
        import subprocess  # here, not at the top: the fork server itself never needs it

        cmd_r, cmd_w = os.pipe2(os.O_CLOEXEC)
        event_r, event_w = os.pipe2(os.O_CLOEXEC)
        # It imports task modules as the worker would.
        path = os.pathsep.join(p for p in sys.path if p)
        env = {**os.environ, "PYTHONPATH": path, "PGBG_DATABASE_URL": database_url}
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", "pgbg.forkserver", str(cmd_r), str(event_w), str(os.getpid()),
             str(output_limit)],
            pass_fds=(cmd_r, event_w), env=env, stdin=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(event_w)
        self.commands, self.events, self._partial = cmd_w, event_r, b""
        os.set_blocking(event_r, False)

    def run(self, task: dict[str, Any]) -> None:
        self._send({"op": "run", "task": task})

    def signal(self, task_id: str, sig: int) -> None:
        self._send({"op": "signal", "task_id": task_id, "sig": sig})

    def _send(self, command: dict[str, Any]) -> None:
        data = memoryview(json.dumps(command).encode() + b"\n")
        while data:
            data = data[os.write(self.commands, data):]

    def read(self) -> list[dict[str, Any]] | None:
        """The events that have arrived, without blocking; None once it is gone."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.events, 65536)
            except BlockingIOError:
                break
            if not chunk:
                return None
            chunks.append(chunk)
        lines = (self._partial + b"".join(chunks)).split(b"\n")
        self._partial = lines.pop()
        return [json.loads(line) for line in lines]

    def close(self) -> None:
        """End of file on its commands: it kills what still runs, then exits."""
        import subprocess

        os.close(self.commands)
        os.close(self.events)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def main() -> None:
    cmd_fd, event_fd, worker_pid, output_limit = (int(arg) for arg in sys.argv[1:5])
    # Dies with the worker (its children then kill their own groups).
    if child.libc is not None:
        child.libc.prctl(child.PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != worker_pid:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when tasks stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDONLY)  # every child's stdin, inherited
    os.dup2(devnull, 0)
    os.close(devnull)
    Server(cmd_fd, event_fd, output_limit).serve()


if __name__ == "__main__":
    main()
