"""Stopping an agent that is cancelled, silent for too long, or slow to start.

A ``Watchdog`` thread looks at the clock a few times a second. When it must stop the agent it
asks politely first and then less so: SIGINT to the whole tree (the CLI ends its turn and prints
its result), SIGTERM after ``grace`` seconds, SIGKILL of the whole sandbox after as many again.
The log of everything the agent printed until then stays stored.
"""

from __future__ import annotations

import signal
import threading
import time

from corral.sandbox.process import Supervised

__all__ = ["Watchdog"]

TICK = 0.1
GRACE = 5.0


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
        self._thread: threading.Thread | None = None

    def heard(self, *, started: bool) -> None:
        """The agent printed something (``started``: on the stream that shows it is up)."""
        self._heard_at = time.monotonic()
        self._has_started = self._has_started or started

    def watch(self, process: Supervised) -> None:
        self._started_at = self._heard_at = time.monotonic()
        self._thread = threading.Thread(target=self._loop, args=(process,), name="corral-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

    def due(self, now: float) -> str | None:
        """Why the agent must be stopped at ``now``, if it must."""
        if self.cancel.is_set():
            return "cancelled"
        if not self._has_started and self.startup is not None and now - self._started_at > self.startup:
            return "startup_timeout"
        if self.idle is not None and now - self._heard_at > self.idle:
            return "idle_timeout"
        return None

    def _loop(self, process: Supervised) -> None:
        while not self._done.wait(TICK):
            why = self.due(time.monotonic())
            if why is not None:
                self.fired = why
                self._escalate(process, why)
                return

    def _escalate(self, process: Supervised, why: str) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            process.interrupt(signum, why)
            if self._done.wait(self.grace):
                return
        process.kill(why)
