"""Jobs: the model, its one state machine, and the store that never loses a job.

Importing this package is cheap; SQLAlchemy is imported only when a store is opened.
"""

from __future__ import annotations

from corral.jobs.models import (
    TERMINAL,
    Event,
    Job,
    JobOptions,
    JobResult,
    JobState,
    Usage,
    new_job,
    next_state,
)
from corral.jobs.store import JobStore, open_store

__all__ = [
    "TERMINAL",
    "Event",
    "Job",
    "JobOptions",
    "JobResult",
    "JobState",
    "JobStore",
    "Usage",
    "new_job",
    "next_state",
    "open_store",
]
