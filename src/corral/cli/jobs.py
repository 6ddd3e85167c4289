"""``corral run`` and ``corral jobs``: run a job in this process with live progress, and read the jobs.

``corral jobs`` reads a ``JobSource``: ``LocalJobs`` (the local store), or, when ``CORRAL_URL`` is
set, ``corral.cli.remote.RemoteJobs`` (a running ``corral serve``); ``job_source`` picks one.
"""

from __future__ import annotations

import builtins
import json
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console

    from corral.agents.events import AgentEvent
    from corral.jobs.models import Event, Job, JobState
    from corral.jobs.store import JobStore
    from corral.runner.job import JobRunner
    from corral.settings import Settings

__all__ = [
    "EXIT_CODES",
    "FOLLOW_INTERVAL",
    "JobSource",
    "LocalJobs",
    "cancel_job",
    "job_source",
    "list_jobs",
    "print_events",
    "print_logs",
    "run_job",
    "show_job",
]

FOLLOW_INTERVAL = 0.5
"""Seconds between two looks at the local store while ``corral jobs logs --follow`` waits."""

EXIT_CODES = {"succeeded": 0, "failed": 1, "timed_out": 124, "cancelled": 130, "interrupted": 130}
"""What ``corral run`` exits with for each end state of its job."""


def open_store() -> JobStore:
    from corral.jobs.store import open_store as open_
    from corral.settings import get_settings

    return open_(get_settings())


def run_job(runner: JobRunner, job: Job, *, as_json: bool) -> int:
    """Run ``job`` with progress on stderr; print the summary (or the job as JSON) on stdout."""
    from rich.console import Console

    from corral.runner.job import Listener

    err = Console(stderr=True, highlight=False)
    started = time.monotonic()

    class Progress(Listener):
        def state(self, job: Job) -> None:
            err.print(f"[bold]{job.state.value}[/] job {job.id}")

        def agent(self, event: AgentEvent, tokens: int) -> None:
            line = event.describe()
            if line:
                err.print(
                    f"  {line}  [dim]({_tokens(tokens)} tokens, {time.monotonic() - started:.0f}s)[/]", soft_wrap=True
                )

    with _cancel_on_interrupt(runner, job.id, err):
        job = runner.run(job.id, Progress())
    if as_json:
        sys.stdout.write(json.dumps(job.to_dict(), indent=2) + "\n")
    else:
        _summary(Console(highlight=False), job)
    return EXIT_CODES.get(job.state.value, 1)


@contextmanager
def _cancel_on_interrupt(runner: JobRunner, job_id: str, err: Console) -> Iterator[None]:
    """The first Ctrl-C cancels the job politely (its log and changes are kept); the second stops corral."""
    pressed = 0

    def handler(signum: int, frame: Any) -> None:
        nonlocal pressed
        pressed += 1
        if pressed > 1:
            raise KeyboardInterrupt
        err.print("[yellow]cancelling[/] (Ctrl-C again to stop at once)")
        runner.cancel(job_id)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _summary(out: Console, job: Job) -> None:
    result = job.result
    color = "green" if job.state.value == "succeeded" else "red"
    out.print(f"[{color}]{job.state.value}[/] job {job.id}" + (f" ({result.reason})" if result else ""))
    if result is None:
        if job.error:
            out.print(job.error)
        return
    duration = f"{result.duration_ms / 1000:.1f}s" if result.duration_ms is not None else "-"
    cost = f"${result.cost_usd:.4f}" if result.cost_usd is not None else "-"
    rows = [
        ("branch", f"{result.branch or '-'}" + (" (pushed)" if result.pushed else "")),
        ("commit", result.commit or "-"),
        ("files changed", ", ".join(result.files_changed) or "none"),
        ("tokens", f"{_tokens(result.usage.total)} ({result.usage.input_tokens} in, {result.usage.output_tokens} out)"),
        ("cost", cost),
        ("duration", duration),
    ]
    if result.usage_limit_resets_at is not None:
        rows.append(("usage limit resets", result.usage_limit_resets_at.isoformat()))
    for violation in result.violations:
        rows.append(("blocked", violation))
    for name, value in rows:
        out.print(f"  {name:<14} {value}", soft_wrap=True)
    if result.summary:
        out.print(result.summary, soft_wrap=True, markup=False)


def _tokens(count: int) -> str:
    return f"{count / 1000:.1f}k" if count >= 1000 else str(count)


class JobSource(Protocol):
    """Where ``corral jobs`` reads jobs: the local store, or a server."""

    def list(self, *, state: JobState | None = None, limit: int = 50) -> builtins.list[Job]: ...
    def get(self, job_id: str) -> Job: ...
    def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]: ...
    def follow(self, job_id: str, *, after: int = 0) -> Iterator[Event]: ...
    def cancel(self, job_id: str) -> Job: ...
    def close(self) -> None: ...


class LocalJobs:
    """The jobs of the local store; a running job can only be cancelled by the process that runs it."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def list(self, *, state: JobState | None = None, limit: int = 50) -> builtins.list[Job]:
        return self.store.list(state=state, limit=limit)

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]:
        self.store.get(job_id)
        return self.store.events(job_id, after=after)

    def follow(self, job_id: str, *, after: int = 0) -> Iterator[Event]:
        """The events after ``after``, then new ones as they are stored, until the job has ended."""
        from corral.jobs.models import TERMINAL

        while True:
            ended = self.store.get(job_id).state in TERMINAL
            events = self.store.events(job_id, after=after)
            for event in events:
                after = event.seq
                yield event
            if ended and not events:
                return
            if not events:
                time.sleep(FOLLOW_INTERVAL)

    def cancel(self, job_id: str) -> Job:
        return cancel_job(self.store, job_id)

    def close(self) -> None:
        self.store.close()


def cancel_job(store: JobStore, job_id: str) -> Job:
    """Cancel a queued job in the store; a running one belongs to the process that runs it, and is refused."""
    from corral.errors import ConflictError
    from corral.jobs.models import TERMINAL, JobResult, JobState

    job = store.get(job_id)
    if job.state in TERMINAL:
        msg = f"The job {job_id} has already ended ({job.state.value}); there is nothing to cancel."
        raise ConflictError(msg)
    if job.state is not JobState.QUEUED:
        msg = (
            f"The job {job_id} is {job.state.value} in another process, which only that process can stop; "
            "set CORRAL_URL to the corral serve that runs it and cancel it there (or press Ctrl-C in its corral run)."
        )
        raise ConflictError(msg)
    result = JobResult(is_error=True, reason="cancelled", summary="Cancelled before it ran.")
    job = store.update(job_id, state=JobState.CANCELLED, result=result)
    store.append_event(job_id, "state", job.state.value)
    return job


def job_source(settings: Settings) -> JobSource:
    """The server at ``CORRAL_URL`` when it is set, else the local store."""
    if settings.url:
        from corral.cli.remote import RemoteJobs

        return RemoteJobs(settings.url, settings.runner_secret)
    return LocalJobs(open_store())


def list_jobs(store: JobStore | JobSource, *, state: str | None, limit: int, as_json: bool) -> None:
    from corral.gitcache import mask_url
    from corral.jobs.models import JobState

    if state is not None and state not in set(JobState):
        from corral.errors import UsageError

        msg = f"The state {state!r} is unknown; choose one of: {', '.join(JobState)}."
        raise UsageError(msg)
    jobs = store.list(state=JobState(state) if state else None, limit=limit)
    if as_json:
        sys.stdout.write(json.dumps([job.to_dict() for job in jobs], indent=2) + "\n")
        return
    sys.stdout.write(f"{'id':<16}  {'state':<11}  {'created':<16}  repo  prompt\n")
    for job in jobs:
        prompt = job.prompt.splitlines()[0][:60] if job.prompt else ""
        created = job.created_at.strftime("%Y-%m-%d %H:%M")
        sys.stdout.write(f"{job.id:<16}  {job.state.value:<11}  {created}  {mask_url(job.repo)}  {prompt}\n")


def show_job(store: JobStore | JobSource, job_id: str) -> None:
    sys.stdout.write(json.dumps(store.get(job_id).to_dict(), indent=2) + "\n")


def print_logs(store: JobStore, job_id: str, *, raw: bool) -> None:
    """The job's event log: every line, or with ``raw`` only the agent's own output, verbatim."""
    store.get(job_id)
    print_events(store.events(job_id), raw=raw)


def print_events(events: Iterable[Event], *, raw: bool) -> None:
    """Each event as a line as it comes (``raw``: only the agent's own output lines, verbatim)."""
    for event in events:
        if raw:
            if event.kind == "agent":
                sys.stdout.write(event.data + "\n")
        else:
            sys.stdout.write(f"{event.seq:>5} {event.at.strftime('%H:%M:%S')} {event.kind:<6} {event.data}\n")
        sys.stdout.flush()
