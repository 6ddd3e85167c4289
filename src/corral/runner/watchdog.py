"""Stopping an agent that is cancelled, silent for too long, or slow to start.

One patrol thread per process looks at the clock of every watched run a few times a second (it
starts with the first run watched and ends ``LINGER`` seconds after the last), so a run starts
and stops no thread of its own. When a run must be stopped it is asked politely first and then less so, in a
thread of its own: SIGINT to the whole tree (the CLI ends its turn and prints its result),
SIGTERM after ``grace`` seconds, SIGKILL of the whole sandbox after as many again. The log of
everything the agent printed until then stays stored. Once ``stop`` has returned, ``fired`` no
longer changes and no signal is sent.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable

from corral.sandbox.process import Supervised

__all__ = ["Watchdog"]

TICK = 0.1
GRACE = 5.0
LINGER = 2.0
"""Seconds the patrol thread waits with nothing to watch before it ends."""


class Watchdog:
    """Watches one agent run: ``watch`` when it starts, ``heard`` on each output, ``stop`` at its end."""

    def __init__(
        self, cancel: threading.Event, *, idle: float | None, startup: float | None, grace: float = GRACE
    ) -> None:
        self.cancel = cancel
        self.idle = idle
        self.startup = startup
        self.grace = grace
        self.fired: str | None = None
        """Why the watchdog stopped the agent: ``cancelled``, ``idle_timeout`` or ``startup_timeout``."""
        self._started_at = time.monotonic()
        self._heard_at = self._started_at
        self._has_started = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        """Held to fire, to signal and to stop: after ``stop`` neither happens."""
        self._process: Supervised | None = None

    def heard(self, *, started: bool) -> None:
        """The agent printed something (``started``: on the stream that shows it is up)."""
        self._heard_at = time.monotonic()
        self._has_started = self._has_started or started

    def watch(self, process: Supervised) -> None:
        self._started_at = self._heard_at = time.monotonic()
        self._process = process
        _PATROL.add(self)

    def stop(self) -> None:
        with self._lock:
            self._done.set()
        _PATROL.remove(self)

    def due(self, now: float) -> str | None:
        """Why the agent must be stopped at ``now``, if it must."""
        if self.cancel.is_set():
            return "cancelled"
        if not self._has_started and self.startup is not None and now - self._started_at > self.startup:
            return "startup_timeout"
        if self.idle is not None and now - self._heard_at > self.idle:
            return "idle_timeout"
        return None

    def check(self, now: float) -> None:
        """Fire if the run is due to be stopped at ``now``: escalate in a thread of its own."""
        with self._lock:
            if self._done.is_set() or self.fired is not None or self._process is None:
                return
            why = self.due(now)
            if why is None:
                return
            self.fired = why
        _PATROL.remove(self)
        name = "corral-watchdog-escalate"
        threading.Thread(target=self._escalate, args=(self._process, why), name=name, daemon=True).start()

    def _escalate(self, process: Supervised, why: str) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            if not self._signal(functools.partial(process.interrupt, signum, why)):
                return
            if self._done.wait(self.grace):
                return
        self._signal(functools.partial(process.kill, why))

    def _signal(self, send: Callable[[], None]) -> bool:
        """Send one signal unless the run was stopped; whether it was sent."""
        with self._lock:
            if self._done.is_set():
                return False
            send()
            return True


class _Patrol:
    """The one thread that checks every watched run each ``TICK``; started on demand, it ends after
    ``LINGER`` seconds with nothing to watch (so runs one after another share it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: set[Watchdog] = set()
        self._thread: threading.Thread | None = None

    def add(self, dog: Watchdog) -> None:
        with self._lock:
            self._watched.add(dog)
            if self._thread is not None:
                return
            self._thread = thread = threading.Thread(target=self._loop, name="corral-watchdog", daemon=True)
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._thread = None
            raise

    def remove(self, dog: Watchdog) -> None:
        with self._lock:
            self._watched.discard(dog)

    def _loop(self) -> None:
        busy_at = time.monotonic()
        while True:
            time.sleep(TICK)
            now = time.monotonic()
            with self._lock:
                if self._watched:
                    busy_at = now
                elif now - busy_at >= LINGER:
                    self._thread = None
                    return
                dogs = list(self._watched)
            for dog in dogs:
                dog.check(now)


_PATROL = _Patrol()
