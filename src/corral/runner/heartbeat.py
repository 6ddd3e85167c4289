"""Leases of running jobs: ``heartbeat_at`` kept fresh, so crash recovery can tell a dead owner.

One thread beats for every job a runner is running: it starts with the first job and ends at the
first beat that finds none. Once ``beating`` has exited for a job, no beat of it is under way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from corral.errors import CorralError
from corral.jobs.models import utc_now
from corral.jobs.store import JobStore

__all__ = ["HEARTBEAT", "Heartbeat"]

HEARTBEAT = 5.0
"""Seconds between two heartbeats of a job being run; a lease is stale after three missed ones."""


class Heartbeat:
    """Every ``interval`` seconds, a fresh ``heartbeat_at`` for each job inside ``beating``."""

    def __init__(self, store: JobStore, interval: float = HEARTBEAT) -> None:
        self.store = store
        self.interval = interval
        self._lock = threading.Lock()
        self._jobs: set[str] = set()
        self._thread: threading.Thread | None = None

    @contextmanager
    def beating(self, job_id: str) -> Iterator[None]:
        with self._lock:
            self._jobs.add(job_id)
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, name="corral-heartbeat", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._jobs.discard(job_id)

    def _beat(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    return
                running = list(self._jobs)
            for job_id in running:
                with self._lock:  # a job that ended meanwhile gets none; its end waits for one under way
                    if job_id in self._jobs:
                        with contextlib.suppress(CorralError):
                            self.store.update(job_id, heartbeat_at=utc_now())
