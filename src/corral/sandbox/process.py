"""Supervising one sandbox process: output as it arrives, the timeout, and the kill.

Synchronous on purpose: it needs only ``selectors``, so ``corral sandbox run`` starts fast, and
the async service runs it in a worker thread (the thread that spawns bwrap outlives it, which
``--die-with-parent`` needs). ``kill()`` may be called from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from corral.sandbox import spawner

__all__ = ["OutputSink", "Supervised", "TailBuffer", "pid_alive"]

OutputSink = Callable[[str, bytes], None]
"""Called with ``("stdout" | "stderr", chunk)`` as output arrives."""


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it and counts the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.dropped = 0
        self._data = bytearray()

    def write(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]
            self.dropped += excess

    def getvalue(self) -> bytes:
        return bytes(self._data)


class Supervised:
    """A started process whose stdout and stderr are pumped until it ends."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        pass_fds: Sequence[int] = (),
        preexec: Callable[[], None] | None = None,
        stdin: int | None = None,
        user: int | None = None,
        kill_tree: Callable[[], None] | None = None,
        tty: int | None = None,
    ) -> None:
        self._kill_tree = kill_tree
        self.signal_tree: Callable[[int], None] | None = None
        """Sends a signal to every process of the command's tree; set by the backend once it knows them."""
        self._lock = threading.Lock()
        self.killed_by: str | None = None
        self.started = time.monotonic()
        options: dict[str, Any] = {
            "env": env,
            "stdin": subprocess.DEVNULL if stdin is None else stdin,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.PIPE,
        }
        if tty is not None:  # a terminal of its own: nothing to pump, the caller copies the master
            options.update(stdin=tty, stdout=tty, stderr=tty)
        options |= {
            "pass_fds": tuple(pass_fds),
            "preexec_fn": preexec,
            "close_fds": True,
        }
        if user is None:
            self.popen = subprocess.Popen(argv, **options)
        elif preexec is None and spawner.available():
            with spawner.as_user(user):  # a vfork, not a fork of this whole process
                self.popen = subprocess.Popen(argv, **options)
        else:
            self.popen = subprocess.Popen(argv, user=user, group=user, extra_groups=[], **options)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def kill(self, why: str = "killed") -> None:
        """Kill the whole tree: the cgroup if there is one, and bwrap (its namespace goes with it)."""
        with self._lock:
            if self.killed_by is None:
                self.killed_by = why
        if self._kill_tree is not None:
            self._kill_tree()
        if self.popen.returncode is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def interrupt(self, signum: int, why: str) -> None:
        """Send ``signum`` to the command's processes (not to bwrap): a polite stop, unlike ``kill``."""
        with self._lock:
            if self.killed_by is None:
                self.killed_by = why
        if self.signal_tree is not None:
            self.signal_tree(signum)
        elif self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signum)

    def abort(self) -> None:
        """End a process whose output will never be pumped: kill it, reap it, close its pipes."""
        if self.popen.returncode is None:
            self.kill("interrupted")
            self.popen.wait()
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()

    def pump(self, out: TailBuffer, err: TailBuffer, sink: OutputSink | None, timeout: float | None) -> int:
        """Copy output until both streams close and the process exits; kill at the deadline."""
        try:
            return self._pump(out, err, sink, timeout)
        except BaseException:
            self.kill("interrupted")
            self.popen.wait()
            raise

    def _pump(self, out: TailBuffer, err: TailBuffer, sink: OutputSink | None, timeout: float | None) -> int:
        deadline = None if timeout is None else self.started + timeout
        streams = {"stdout": (self.popen.stdout, out), "stderr": (self.popen.stderr, err)}
        with selectors.DefaultSelector() as selector:
            for name, (pipe, _) in streams.items():
                if pipe is None:
                    continue
                os.set_blocking(pipe.fileno(), False)
                selector.register(pipe, selectors.EVENT_READ, name)
            while selector.get_map():
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                events = selector.select(wait)
                if not events and deadline is not None and time.monotonic() >= deadline:
                    self.kill("timeout")
                    deadline = None
                for key, _ in events:
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    streams[key.data][1].write(chunk)
                    if sink is not None:
                        sink(key.data, chunk)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return self.popen.wait(remaining)
        except subprocess.TimeoutExpired:
            self.kill("timeout")
            return self.popen.wait()
        finally:
            for pipe in (self.popen.stdout, self.popen.stderr):
                if pipe is not None:
                    pipe.close()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's counts)."""
    try:
        os.kill(pid, 0)
    except OSError as err:
        return err.errno == errno.EPERM
    return True
