"""The shape of a job store, and ``open_store`` to get the one the settings name.

A store keeps every job from the moment it is accepted (as ``queued``) and each job's
append-only event log. Implementations: ``SqlJobStore`` (SQLite, and later PostgreSQL).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from corral.jobs.models import Event, Job, JobState
    from corral.settings import Settings

__all__ = ["DB_NAME", "JobStore", "open_store", "store_url"]

DB_NAME = "corral.db"
"""The SQLite file in ``CORRAL_HOME`` when ``database_url`` is empty."""


class JobStore(Protocol):
    """Jobs and their event logs; every method is safe to call from several threads at once."""

    def add(self, job: Job, *, log: Sequence[tuple[str, str]] = ()) -> Job:
        """Store a new ``queued`` job with the first entries of its log (``(kind, data)``), in one
        transaction; ``ConflictError`` if its id is taken. A job whose ``idempotency_key`` is already
        stored is not added (nor is ``log``): the stored job is returned."""
        ...

    def claim(self, owner: str) -> Job | None:
        """Move the oldest ``queued`` job to ``preparing``, owned by ``owner`` (heartbeat now,
        ``attempts`` + 1, a ``state`` event), in one transaction: of several runners on one
        database, exactly one gets each job. ``None`` when nothing is queued."""
        ...

    def get(self, job_id: str) -> Job:
        """The job ``job_id``; ``NotFoundError`` if there is none."""
        ...

    def list(self, *, state: JobState | None = None, limit: int = 50, offset: int = 0) -> builtins.list[Job]:
        """Up to ``limit`` jobs, newest first, after skipping ``offset``, only those in ``state`` if given."""
        ...

    def update(
        self, job_id: str, *, state: JobState | None = None, log: Sequence[tuple[str, str]] = (), **changes: Any
    ) -> Job:
        """Move the job to ``state`` (checked by ``next_state``), set ``result``, ``error``,
        ``session_id``, ``options``, ``owner``, ``heartbeat_at`` or ``attempts``, and append
        ``log`` (``(kind, data)`` entries, such as the ``state`` event of the move) to its events,
        all in one transaction; of two callers moving a job from the same state, one gets
        ``ConflictError``. Sets ``started_at`` on entering ``running``, ``finished_at`` on entering a
        terminal state, and ``updated_at`` always."""
        ...

    def append_event(self, job_id: str, kind: str, data: str) -> Event:
        """Append one entry to the job's log with the next ``seq`` (1, 2, 3...), atomically
        across threads and processes."""
        ...

    def events(self, job_id: str, *, after: int = 0, limit: int | None = None) -> builtins.list[Event]:
        """The job's log entries with ``seq`` greater than ``after``, in order."""
        ...

    def close(self) -> None:
        """Release the store's connections (and with them its open files)."""
        ...


def store_url(settings: Settings) -> str:
    """The SQLAlchemy URL of the store: ``database_url``, or SQLite in ``home``."""
    if settings.database_url:
        return settings.database_url
    return f"sqlite:///{settings.home / DB_NAME}"


def open_store(settings: Settings) -> JobStore:
    """The store the settings name, its schema migrated to the newest revision.

    With no ``database_url`` it is SQLite at ``home/corral.db``; ``home`` is made (mode 0700)
    if it is missing.
    """
    if not settings.database_url and not settings.home.is_dir():
        settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        settings.home.chmod(0o700)  # mkdir's mode is filtered by the umask
    from corral.jobs.sql import SqlJobStore

    return SqlJobStore.open(store_url(settings))
