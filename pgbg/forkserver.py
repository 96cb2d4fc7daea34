"""The fork server: the small process that forks every task's child.

Forking costs in proportion to what the forking process has mapped; a process that has
loaded psycopg forks about four times slower than a bare interpreter. So the worker never
forks: it starts this process (which never imports psycopg), and this process keeps spare
children forked ahead of need. It hands each spare's pipes to the worker over a Unix
socket (``SCM_RIGHTS``): the worker writes a task straight into a spare and hears from the
child directly, so this process is on no task's path and its forks delay nothing. It alone
reaps the children, so only it signals them (a pid it has not reaped cannot have been
reused), and it tells the worker how each one exited. Task modules the worker names are
imported here once, so every later child starts with them loaded.

Protocol: one JSON object per datagram of a ``SOCK_SEQPACKET`` socket. From the worker:
first ``{"op": "setup", "database_url", "allow"}`` (kept in memory, inherited by every
child: never in an environment), then
``{"op": "used", "pid"}`` (a spare was given a task: fork another),
``{"op": "signal", "pid", "sig"}`` (honoured only for a child given a task),
``{"op": "preload", "module"}`` (import it once a throwaway child has; the spares forked
before are retired), ``{"op": "lease", "until"}`` (a ``time.monotonic()`` time: kill every
child given a task then, unless a later lease arrives first — the worker's lease in the
database lapses soon after, and its tasks must not run beside their recovered attempts
even when the worker itself is stuck).
To the worker: ``{"ev": "spare", "pid", "generation"}`` with four descriptors — the
task pipe's write end, the report and output pipes' read ends, a pidfd — and
``{"ev": "exited", "pid", "status"}`` (the wait status) for every child reaped. End of file
(the worker is gone) kills every child and ends the server. ``Client`` is the worker's
end, ``Spare`` a child as the worker holds it.

The group watcher: a process forked once at start, before anything else, that outlives
a fork server dying with its worker (it has no parent-death signal, and ignores SIGINT
and SIGTERM). Told over a pipe the pid of each child given a task, and of each one about
to be reaped (before, so a pid it holds cannot have been reused), it kills the process
group of every pid still held at end of file, then exits: a task stuck in a C call that
never returns to Python, where the child's own PARENT_DIED handler cannot run, dies with
all it started instead of running beside its recovered attempt.
"""

from __future__ import annotations

import array
import contextlib
import gc
import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgbg import child, registry

if TYPE_CHECKING:
    import subprocess



def _warn(message: str, **extra: object) -> None:
    """Log a warning from the worker's side of this module. ``logging`` is imported here,
    never at the top: the fork server must not load it, as it registers fork handlers that
    run Python code at every fork (measured: they halve the fork server's fork rate)."""
    import logging

    logging.getLogger(__name__).warning(message, extra=extra)

SPARES = 2  # children kept forked and waiting: two starts in a row wait for no fork
MAX_REPORT = child.MAX_REPORT  # bytes of one report line (a result included); longer: dropped
REPORT_READ = 1 << 20  # bytes of reports read per call: the loop attends to others between
PRELOAD_TIMEOUT = 30.0  # seconds a trial import may take before the module is never preloaded
NAMES_PER_EVENT = 200  # declared task names per datagram (each name <= ~1 kB)
FD_SIZE = array.array("i").itemsize
WATCH = struct.Struct("=i")  # to the group watcher: a pid given a task; minus it, reaped


@dataclass
class _Forked:
    pid: int
    pidfd: int
    spare: bool = True  # not given a task, nor retired, as far as we have heard
    watched: bool = False  # the group watcher was told of it


@dataclass
class _Trial:
    """A throwaway child importing a module before the fork server does."""

    module: str
    pid: int
    pidfd: int
    deadline: float  # monotonic


@dataclass
class Server:
    sock: socket.socket
    spares: int = SPARES
    watcher: int | None = None  # the pipe to the group watcher (-1 once it is gone)
    selector: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    children: dict[int, _Forked] = field(default_factory=dict)  # forked, not yet reaped
    outgoing: deque[tuple[bytes, list[int]]] = field(default_factory=deque)
    generation: int = 0  # preloads asked for: a spare forked before the last one lacks it
    accepting: bool = True
    lease_until: float | None = None  # monotonic: kill the tasks' children then
    lapsed: bool = False  # the lease ran out: a task given to a child from now on dies too
    trials: dict[int, _Trial] = field(default_factory=dict)  # trial imports under way
    tried: set[str] = field(default_factory=set)  # modules tried (imported here or refused)

    def serve(self) -> None:
        gc.freeze()
        self.sock.setblocking(False)
        self.selector.register(self.sock, selectors.EVENT_READ, "sock")
        while self.accepting or self.children:
            short = self.accepting and self.spare_count() < self.spares
            waits = [t for t in (self.next_trial_deadline(), self.until_lease()) if t is not None]
            ready = self.selector.select(0 if short else min(waits, default=None))
            for key, mask in ready:
                if key.data == "sock":
                    if mask & selectors.EVENT_WRITE:
                        self.flush()
                    if mask & selectors.EVENT_READ:
                        self.read_commands()
                elif isinstance(key.data, _Trial):
                    self.trial_ended(key.data)
                else:
                    self.reap(key.data)
            self.expire_trials()
            if short and not ready:  # nothing else waits: fork one, then look again
                self.fork_spare()
            if self.lease_until is not None and time.monotonic() >= self.lease_until:
                self.lease_until, self.lapsed = None, True
                for forked in self.children.values():
                    if not forked.spare:
                        _kill(forked.pid, signal.SIGKILL)

    def until_lease(self) -> float | None:
        if self.lease_until is None:
            return None
        return max(0.0, self.lease_until - time.monotonic())

    def spare_count(self) -> int:
        return sum(1 for forked in self.children.values() if forked.spare)

    # -- to the worker -------------------------------------------------------------

    def emit(self, event: dict[str, Any], fds: list[int] | None = None) -> None:
        """Queue ``event`` (our copies of ``fds`` are closed once it is sent) and send."""
        self.outgoing.append((json.dumps(event).encode(), fds or []))
        self.flush()

    def flush(self) -> None:
        while self.outgoing and self.accepting:
            data, fds = self.outgoing[0]
            try:
                socket.send_fds(self.sock, [data], fds) if fds else self.sock.send(data)
            except BlockingIOError:
                break
            except OSError:  # the worker is gone; end of file on the socket ends us
                break
            self.outgoing.popleft()
            for fd in fds:
                os.close(fd)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
        if self.accepting and self.selector.get_key(self.sock).events != events:
            self.selector.modify(self.sock, events, "sock")

    # -- from the worker -----------------------------------------------------------

    def read_commands(self) -> None:
        while self.accepting:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.worker_gone()
                return
            command = json.loads(data)
            forked = self.children.get(command.get("pid", 0))
            if command["op"] == "used" and forked is not None:
                forked.spare = False
                forked.watched = self.watch(forked.pid)
                if self.lapsed:  # until the lease is renewed, no task may run
                    _kill(forked.pid, signal.SIGKILL)
            elif command["op"] == "signal" and forked is not None and not forked.spare:
                _kill(forked.pid, command["sig"])
            elif command["op"] == "lease":
                self.lease_until, self.lapsed = float(command["until"]), False
            elif command["op"] == "preload":
                self.generation += 1  # the worker counts every preload it asks for
                for older in self.children.values():
                    older.spare = False  # the worker retires them: end of file, they exit
                self.start_trial(command["module"])

    # -- preloading --------------------------------------------------------------------
    # A module is imported here only after a throwaway child imported it without fail
    # within PRELOAD_TIMEOUT: an import that exits, raises or hangs harms that child alone
    # (the module is then never preloaded; each task imports it in its own child and
    # fails there). The trial runs beside the loop, so nothing here waits for it.

    def start_trial(self, module: str) -> None:
        if module in self.tried or any(t.module == module for t in self.trials.values()):
            return
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the trial child, which never returns
            code = 1
            try:
                os.setpgid(0, 0)  # its own group: killed with whatever it started
                if child.libc is not None:
                    child.libc.prctl(child.PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                os.closerange(3, 1 << 20)  # not the socket: the worker's end of file stays ours
                importlib.import_module(module)
                code = 0
            except BaseException:  # its exit code says it failed
                code = 1
            finally:
                os._exit(code)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)
        trial = _Trial(module, pid, os.pidfd_open(pid), time.monotonic() + PRELOAD_TIMEOUT)
        self.trials[pid] = trial
        self.selector.register(trial.pidfd, selectors.EVENT_READ, trial)

    def trial_ended(self, trial: _Trial) -> None:
        status = self.end_trial(trial)
        if status == 0 and self.accepting:
            try:
                importlib.import_module(trial.module)
            except BaseException:  # SystemExit, KeyboardInterrupt too
                sys.modules.pop(trial.module, None)
            gc.freeze()  # never collected in a child, so never copied by its collector

    def end_trial(self, trial: _Trial) -> int:
        """Kill what is left in the trial's group (not yet reaped, so its pid and group id
        cannot have been reused), then reap it; its wait status."""
        _kill(trial.pid, signal.SIGKILL)
        _pid, status = os.waitpid(trial.pid, 0)
        self.selector.unregister(trial.pidfd)
        os.close(trial.pidfd)
        del self.trials[trial.pid]
        self.tried.add(trial.module)
        return status

    def next_trial_deadline(self) -> float | None:
        if not self.trials:
            return None
        return max(0.0, min(t.deadline for t in self.trials.values()) - time.monotonic())

    def expire_trials(self) -> None:
        now = time.monotonic()
        for trial in [t for t in self.trials.values() if t.deadline <= now]:
            self.end_trial(trial)  # too slow: never preloaded

    def worker_gone(self) -> None:
        """Nothing we started may outlive the worker."""
        for trial in list(self.trials.values()):
            self.end_trial(trial)
        self.accepting = False
        self.selector.unregister(self.sock)
        for _data, fds in self.outgoing:
            for fd in fds:
                os.close(fd)
        self.outgoing.clear()
        for forked in self.children.values():
            _kill(forked.pid, signal.SIGKILL)

    # -- children ------------------------------------------------------------------

    def fork_spare(self) -> None:
        """Fork a child that waits for the one task it will run, and hand its pipes over."""
        task_r, task_w = os.pipe2(os.O_CLOEXEC)
        report_r, report_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.dup2(out_w, 1)  # the task's stdout and stderr, and its children's, captured
            os.dup2(out_w, 2)
            # Nothing else of ours: not the socket, not another spare's pipes or pidfd.
            low, high = sorted((task_r, report_w))
            os.closerange(3, low)
            os.closerange(low + 1, high)
            os.closerange(high + 1, 1 << 20)
            for stream in (sys.stdout, sys.stderr):
                stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            child.serve(task_r, report_w, parent)
        for fd in (task_r, report_w, out_w):
            os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child; whichever runs first wins
        pidfd = os.pidfd_open(pid)
        self.children[pid] = _Forked(pid, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, self.children[pid])
        self.emit({"ev": "spare", "pid": pid, "generation": self.generation},
                  [task_w, report_r, out_r, os.dup(pidfd)])

    def reap(self, forked: _Forked) -> None:
        # Exited but not reaped: its pid and group id cannot have been reused yet, so kill
        # whatever it left behind in its group, then reap it.
        _kill(forked.pid, signal.SIGKILL)
        if forked.watched:
            self.watch(-forked.pid)
        _pid, status = os.waitpid(forked.pid, 0)
        self.selector.unregister(forked.pidfd)
        os.close(forked.pidfd)
        del self.children[forked.pid]
        self.emit({"ev": "exited", "pid": forked.pid, "status": status})


    def watch(self, pid: int) -> bool:
        """Tell the group watcher (``pid`` given a task, ``-pid`` about to be reaped); False
        if it is not there to hear. One write, atomic: far under PIPE_BUF."""
        if self.watcher is None or self.watcher < 0:
            return False
        try:
            os.write(self.watcher, WATCH.pack(pid))
        except OSError:  # it was killed: the child's own handler is the one line left
            sys.stderr.write("pgbg fork server: the group watcher is gone\n")
            os.close(self.watcher)
            self.watcher = -1
            return False
        return True


def start_watcher() -> int:
    """Fork the group watcher; the write end of its pipe (close-on-exec, and closed by
    every child, so only we hold it). It keeps only stdin, stdout, stderr and its end: not
    the worker's socket, whose end of file must reach the worker when we die."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the watcher, which never returns
        code = 1
        try:
            os.closerange(3, read_end)
            os.closerange(read_end + 1, 1 << 20)
            with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
                comm.write("pgbg-watcher")  # as ps shows it
            _watch(read_end)
            code = 0
        finally:
            os._exit(code)
    os.close(read_end)
    return write_end


def _watch(fd: int) -> None:
    """Hold the pids the fork server names until end of file, then kill their groups."""
    held: set[int] = set()
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
        whole = len(data) - len(data) % WATCH.size
        for (pid,) in WATCH.iter_unpack(data[:whole]):
            if pid > 0:
                held.add(pid)
            else:
                held.discard(-pid)
        data = data[whole:]
    for pid in held:  # not reaped by the fork server: its group id is still this task's
        _kill(pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group of a task whose fork server died (the task itself died with
    it, by its parent-death signal; its group id stays reserved while members remain)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# -- the worker's end ----------------------------------------------------------------


@dataclass
class Spare:
    """A forked child as the worker holds it: its pipes and pidfd, then what it reports."""

    pid: int
    generation: int
    task_fd: int  # where its task is written (closed once written)
    report_fd: int  # JSON lines: what the task records, then how it ended
    out_fd: int  # what the task (and anything it starts) writes to stdout and stderr
    pidfd: int  # readable once the process has exited
    selector: selectors.BaseSelector | None = None  # watching its descriptors, if any
    task_id: str | None = None  # once given one
    partial: bytearray = field(default_factory=bytearray)  # a report line's start
    discarding: bool = False  # in a line over MAX_REPORT: skip to its end
    rejected: int = 0  # report lines that were not a valid message
    out_kept: int = 0
    out_dropped: int = 0
    out_noted: int = 0  # of the dropped bytes, how many a truncation note has reported

    def give(self, task: dict[str, Any]) -> bool:
        """Write ``task`` (a task row as JSON values); False if the spare had died waiting
        (the task has not started). A child that dies once it has its task is told of by
        its exit, like any other."""
        data = memoryview(json.dumps(task).encode())
        self.task_id = str(task.get("id"))
        try:
            while data:
                data = data[os.write(self.task_fd, data):]
        except BrokenPipeError:
            return False
        finally:
            self.task_fd = self._close(self.task_fd)
        return True

    def read_reports(self) -> list[dict[str, Any]]:
        """The valid messages that have arrived, without blocking (end of file closes the
        pipe). The pipe is the task's to write, and its children's: a line that is not a
        well-formed message (garbage, interleaved writes, over ``MAX_REPORT`` bytes) is
        dropped and logged, and concerns this task alone."""
        data, self.report_fd = self._read_available(self.report_fd, REPORT_READ)
        messages: list[dict[str, Any]] = []
        pos = 0
        while pos < len(data):
            end = data.find(b"\n", pos)
            stop = len(data) if end < 0 else end
            if not self.discarding:
                self.partial += data[pos:stop]
                if len(self.partial) > MAX_REPORT:
                    self.partial.clear()
                    self.discarding = True
            if end < 0:
                break
            if self.discarding:
                self.discarding = False
                self._reject("a report line over the size limit was discarded")
            else:
                message = _report(bytes(self.partial))
                self.partial.clear()
                if message is None:
                    self._reject("a malformed report line was ignored")
                else:
                    messages.append(message)
            pos = end + 1
        return messages

    def _reject(self, what: str) -> None:
        self.rejected += 1
        if self.rejected <= 3:  # a flood of garbage is not a flood of log lines
            _warn(what, task_id=self.task_id, pid=self.pid, limit=MAX_REPORT)

    def read_output(self, limit: int) -> list[str]:
        """What the task printed since the last call, up to ``limit`` bytes in all; the
        rest is counted for ``truncation_note``."""
        data, self.out_fd = self._read_available(self.out_fd, 1 << 20)  # bounded per call
        kept = data[:max(0, limit - self.out_kept)]
        self.out_kept += len(kept)
        self.out_dropped += len(data) - len(kept)
        return [kept.decode("utf-8", "replace")] if kept else []

    def truncation_note(self, limit: int) -> str | None:
        """How much output was not kept, once per batch dropped since the last note."""
        if self.out_dropped <= self.out_noted:
            return None
        note = (f"[output truncated: {self.out_dropped - self.out_noted} more bytes not kept "
                f"(limit {limit})]")
        self.out_noted = self.out_dropped
        return note

    def watch(self, selector: selectors.BaseSelector, data: Any) -> None:
        """Have ``selector`` report its pipes and its exit, as ``(kind, data)``, kind one
        of "report", "out", "gone"."""
        self.selector = selector
        for fd, kind in ((self.report_fd, "report"), (self.out_fd, "out"), (self.pidfd, "gone")):
            selector.register(fd, selectors.EVENT_READ, (kind, data))

    def exited(self) -> None:
        """The process is gone: stop watching for that."""
        if self.pidfd >= 0:
            self.pidfd = self._close(self.pidfd)

    def close(self) -> None:
        """Close what is still open; a spare never given a task reads end of file and exits."""
        self.task_fd, self.report_fd, self.out_fd, self.pidfd = (
            self._close(fd) if fd >= 0 else -1
            for fd in (self.task_fd, self.report_fd, self.out_fd, self.pidfd))

    def _read_available(self, fd: int, limit: int | None = None) -> tuple[bytes, int]:
        """What ``fd`` (non-blocking) holds now (up to about ``limit`` bytes), and ``fd``,
        or -1 if end of file closed it."""
        chunks = []
        size = 0
        while fd >= 0 and (limit is None or size < limit):
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                fd = self._close(fd)
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), fd

    def _close(self, fd: int) -> int:
        if self.selector is not None and fd in self.selector.get_map():
            self.selector.unregister(fd)
        os.close(fd)
        return -1


def _str(value: object) -> bool:
    return isinstance(value, str)


def _optional_str(value: object) -> bool:
    return value is None or isinstance(value, str)


# What each kind of message must carry (the worker reads these keys), checked per field.
_REPORT_FIELDS: dict[str, dict[str, Any]] = {
    "info": {"message": _str},
    "error_exit": {"message": _str},
    "related": {"link_kind": _str, "key": _str},
    "outcome": {"status": lambda v: v in ("succeeded", "failed"),
                "exit_code": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "error": _optional_str,
                "exception_types": lambda v: v is None or (
                    isinstance(v, list) and all(isinstance(x, str) for x in v))},
}
_OPTIONAL = {"error", "exception_types"}


def _report(line: bytes) -> dict[str, Any] | None:
    """``line`` as a report message, or None if it is not a well-formed one."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None
    if not isinstance(message, dict):
        return None
    checks = _REPORT_FIELDS.get(message.get("kind"))  # type: ignore[arg-type]
    if checks is None:
        return None
    for name, check in checks.items():
        if name not in message and name in _OPTIONAL:
            continue
        if name not in message or not check(message[name]):
            return None
    return message


class Client:
    """The worker's end: starts the fork server, sends it commands, reads its events."""

    def __init__(self, database_url: str, spares: int = SPARES,
                 allow: Sequence[str] | None = None, registered_only: bool = False,
                 imports: Sequence[str] = ()) -> None:
        """``allow``: the worker's module prefixes (None: any), checked again by each child
        on what a task's name resolves to. ``imports``: task modules the fork server
        imports before it forks anything; it then sends the ``@pgbg.task`` names they
        declared (``{"ev": "declared", "names"}``, in parts) and ``{"ev": "imported",
        "error"}`` (None, or the first import's failure: it then forks nothing)."""
        import subprocess  # here, not at the top: the fork server itself never needs it

        from pgbg.db import without_password

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # It imports task modules as the worker would. The URL with its password travels
        # on the socket, not in the environment every task (and what it runs) inherits.
        path = os.pathsep.join(p for p in sys.path if p)
        env = {**os.environ, "PYTHONPATH": path,
               "PGBG_DATABASE_URL": without_password(database_url)}
        self.process: subprocess.Popen[bytes] = subprocess.Popen(
            [sys.executable, "-m", "pgbg.forkserver", str(theirs.fileno()), str(os.getpid()),
             str(spares)],
            pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL,
            # Its own session: a stop aimed at the worker's process group (Ctrl-Z, kill
            # -STOP -pgid) must not freeze the watchdog that kills tasks at lease lapse.
            start_new_session=True)
        theirs.close()
        self.sock = ours
        ours.send(json.dumps({"op": "setup", "database_url": database_url,
                              "allow": list(allow) if allow is not None else None,
                              "registered_only": registered_only,
                              "imports": list(imports)}).encode())
        # Until the fork server has imported ``imports`` (its "imported" event), it forks
        # nothing and reads nothing: a close then kills it rather than wait for it.
        self.importing = bool(imports)

    def fileno(self) -> int:
        return self.sock.fileno()

    def used(self, pid: int) -> None:
        self._send({"op": "used", "pid": pid})

    def signal(self, pid: int, sig: int) -> None:
        self._send({"op": "signal", "pid": pid, "sig": sig})

    def lease(self, until: float) -> None:
        self._send({"op": "lease", "until": until})

    def preload(self, module: str) -> None:
        self._send({"op": "preload", "module": module})

    def _send(self, command: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # it died: its end of file is read next
            self.sock.send(json.dumps(command).encode())

    def read(self) -> list[dict[str, Any] | Spare] | None:
        """What has arrived, without blocking (spares as ``Spare``); None once it is gone."""
        events: list[dict[str, Any] | Spare] = []
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    65536, socket.CMSG_SPACE(4 * FD_SIZE),
                    socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                return events
            except OSError:
                data, ancillary = b"", []
            fds = array.array("i")
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                    fds.frombytes(payload[:len(payload) - len(payload) % FD_SIZE])
            if not data:
                for fd in fds:
                    os.close(fd)
                for spare in events:
                    if isinstance(spare, Spare):
                        spare.close()
                return None
            event = json.loads(data)
            if event["ev"] == "imported":
                self.importing = False
            if event["ev"] == "spare" and len(fds) != 4:  # out of descriptors: not all came
                for fd in fds:  # without its task pipe the spare reads end of file and exits
                    os.close(fd)
            elif event["ev"] == "spare":
                for fd in fds[1:3]:
                    os.set_blocking(fd, False)
                task_fd, report_fd, out_fd, pidfd = fds
                events.append(Spare(event["pid"], event["generation"], task_fd, report_fd,
                                    out_fd, pidfd))
            else:
                events.append(event)

    def close(self) -> None:
        """End of file on its socket: it kills what still runs, then exits."""
        import subprocess

        self.sock.close()
        if self.importing:  # stuck in a task module's import: nothing of ours runs there
            self.process.kill()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main() -> None:
    sock_fd, worker_pid, spares = (int(arg) for arg in sys.argv[1:4])
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
    # First, while this process is small: it inherits the ignored SIGINT and SIGTERM and
    # not our parent-death signal (a fork clears it), and reads end of file when we exit.
    watcher = start_watcher()
    sock = socket.socket(fileno=sock_fd)
    setup = sock.recv(1 << 20)  # the worker's first datagram, before anything is forked
    if not setup:
        os._exit(0)  # the worker is gone already
    command = json.loads(setup)
    child.setup(command["database_url"], command["allow"], command.get("registered_only", False))
    if os.environ.get("PGBG_DJANGO") == "1":  # manage.py pgbg worker: Django's apps loaded
        from pgbg.contrib.django import forking  # once, here, before any task module; each

        forking.setup()  # child drops inherited connections (pgbg/contrib/django/forking.py)
    if command.get("imports"):  # before anything is forked: every child has them
        error = child.import_modules(command["imports"])
        names = registry.declared_names()
        for start in range(0, len(names), NAMES_PER_EVENT):  # datagrams are bounded
            sock.send(json.dumps({"ev": "declared",
                                  "names": names[start:start + NAMES_PER_EVENT]}).encode())
        sock.send(json.dumps({"ev": "imported", "error": error}).encode())
        if error is not None:  # the worker stops; it closes the socket when it has
            while sock.recv(1 << 20):
                pass
            os._exit(1)
    child.inherited_signals()  # after the watcher's fork: only the spares need them
    Server(sock, spares, watcher=watcher).serve()


if __name__ == "__main__":
    main()
