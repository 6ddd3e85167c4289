"""The embedded runner of ``corral serve``: claims queued jobs up to its capacity and runs them.

``RunnerPool.start`` first recovers what a killed corral left behind (``recover``): jobs whose
owner is dead are marked ``interrupted`` and queued again (once, by default), and leftover
sandboxes and proxy sockets are removed. Then one claim loop thread takes the oldest queued job
from the store whenever a session is free (woken by ``submit``, else every ``POLL`` seconds)
and runs it in a worker thread with ``JobRunner.run``. A worker that ends a job claims the next
one itself, at once, and runs it in the same thread; when none is queued it gives its session
back and ends. ``drain`` stops claiming, lets the running jobs finish for a while, then
interrupts them; their logs and checkouts stay.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import ConflictError, CorralError, UsageError
from corral.jobs.models import ENDED, TERMINAL, Job, JobOptions, JobResult, JobState, utc_now
from corral.runner.heartbeat import HEARTBEAT
from corral.runner.job import JobDirs, JobRunner, default_owner
from corral.sandbox.process import pid_alive

if TYPE_CHECKING:
    from corral.jobs.store import JobStore
    from corral.sandbox.base import SandboxBackend
    from corral.settings import Settings

__all__ = ["POLL", "STALE_BEATS", "RunnerPool", "owner_is_dead", "reap_checkouts", "reap_sockets", "recover"]

POLL = 0.5
"""Seconds between two looks at the store when nothing wakes the claim loop."""
STALE_BEATS = 3
"""Missed heartbeats after which a job's owner counts as dead."""
WAIT_TICK = 0.25
"""Seconds between two looks at the store while waiting for a job another process runs."""
INTERRUPT_GRACE = 60.0
"""Seconds a drain waits for interrupted jobs to write their result (the watchdog needs ~10)."""


def check_capacity(capacity: object) -> int:
    """``capacity`` if it is a whole number of 1 or more; otherwise ``UsageError``."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        msg = f"The capacity must be a whole number of sessions, 1 or more, not {capacity!r}; set CORRAL_CAPACITY=4."
        raise UsageError(msg)
    return capacity


class RunnerPool:
    """Runs up to ``capacity`` jobs of the store at once in this process; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        capacity: int = 4,
        runner_id: str | None = None,
        sandbox: SandboxBackend | None = None,
        environ: Mapping[str, str] | None = None,
        requeue_interrupted: int = 1,
    ) -> None:
        self.capacity = check_capacity(capacity)
        if isinstance(requeue_interrupted, bool) or not isinstance(requeue_interrupted, int) or requeue_interrupted < 0:
            msg = f"requeue_interrupted must be a whole number of 0 or more, not {requeue_interrupted!r}."
            raise UsageError(msg)
        self.settings = settings
        self.store = store
        self.runner_id = runner_id or default_owner()
        self.requeue_interrupted = requeue_interrupted
        self.runner = JobRunner(settings, store, sandbox=sandbox, environ=environ, owner=self.runner_id)
        self.recovered: list[str] = []
        """The ids of the jobs the last ``start`` found interrupted (requeued or failed)."""
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._active: dict[str, threading.Thread] = {}
        """The jobs running now, by id, and the worker threads running them."""
        self._workers: set[threading.Thread] = set()
        """The worker threads: each holds one session, while it runs a job or claims its next one."""
        self._draining = False
        self._started = False
        self._loop: threading.Thread | None = None
        self._polled_at = time.monotonic()

    @property
    def active_sessions(self) -> int:
        with self._cond:
            return len(self._active)

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def last_poll_age_ms(self) -> int:
        return round((time.monotonic() - self._polled_at) * 1000)

    def start(self) -> None:
        """Recover what a killed runner left, then start claiming; a second call does nothing."""
        with self._cond:
            if self._started:
                return
            self._started = True
        self.recovered = recover(
            self.settings, self.store, self.runner.sandbox, self.requeue_interrupted, runner_id=self.runner_id
        )
        self._loop = threading.Thread(target=self._claim_loop, name="corral-claim", daemon=True)
        self._loop.start()

    def submit(
        self,
        prompt: str,
        repo: str,
        *,
        ref: str | None = None,
        agent: str = "claude-code",
        options: JobOptions | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Store the job as ``queued`` (checked as ``JobRunner.submit`` does) and wake the claim loop."""
        job = self.runner.submit(prompt, repo, ref=ref, agent=agent, options=options, idempotency_key=idempotency_key)
        self._wake.set()
        return job

    def follow_up(self, job_id: str, prompt: str) -> Job:
        """Queue a new job that continues ``job_id``: same checkout and branch, the agent's session resumed."""
        parent = self.store.get(job_id)
        if parent.state not in TERMINAL:
            msg = f"Job {job_id!r} is {parent.state}; send the follow-up when it has finished."
            raise ConflictError(msg)
        if parent.result is None or parent.result.branch is None:
            msg = f"Job {job_id!r} ended before it had a checkout, so there is nothing to follow up; submit a new job."
            raise ConflictError(msg)
        if parent.agent != "generic" and parent.session_id is None:
            msg = f"Job {job_id!r} has no agent session to resume; submit a new job instead."
            raise ConflictError(msg)
        job = self.runner.submit(
            prompt, parent.repo, ref=parent.ref, agent=parent.agent, options=parent.options, parent_id=parent.id
        )
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one never starts, a running one is stopped politely (then less so)."""
        for _ in range(3):  # a queued job may be claimed while we look; look again
            job = self.store.get(job_id)
            if job.state in TERMINAL:
                msg = f"Job {job_id!r} has already ended ({job.state}); there is nothing to cancel."
                raise ConflictError(msg)
            with self._cond:
                ours = job_id in self._active
            if not ours and job.state in (JobState.PREPARING, JobState.RUNNING):
                msg = f"Job {job_id!r} is run by the runner {job.owner!r}; cancel it through that runner."
                raise ConflictError(msg)
            try:
                return self.runner.cancel(job_id)
            except ConflictError:
                continue
        msg = f"Job {job_id!r} kept changing state while it was being cancelled; try again."
        raise ConflictError(msg)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """The job once it has ended (or is interrupted), or as it is when ``timeout`` seconds have passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job.state in ENDED:
                return job
            left = WAIT_TICK if deadline is None else min(WAIT_TICK, deadline - time.monotonic())
            if left <= 0:
                return job
            with self._cond:
                self._cond.wait(left)  # a job of this pool ending wakes us at once

    def set_egress(self, job_id: str, allow: Sequence[str]) -> Job:
        """Replace a running job's allowlist live; ``ConflictError`` if it is not running here."""
        return self.runner.set_egress(job_id, allow)

    def drain(self, timeout: float) -> None:
        """Stop claiming, wait up to ``timeout`` seconds for the running jobs, then interrupt the rest."""
        with self._cond:
            self._draining = True
        self._wake.set()
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        stop_by = time.monotonic() + INTERRUPT_GRACE
        while time.monotonic() < stop_by:
            with self._cond:
                active = list(self._active)
                if not active:
                    return
            for job_id in active:
                self.runner.interrupt(job_id)  # False while its worker is still starting: try again below
            with self._cond:
                self._cond.wait(0.1)

    def stop(self) -> None:
        """Drain without waiting, and join the threads."""
        self.drain(0)
        if self._loop is not None:
            self._loop.join(INTERRUPT_GRACE)
        with self._cond:
            workers = list(self._workers)
        for worker in workers:
            worker.join(INTERRUPT_GRACE)

    def _claim_loop(self) -> None:
        while True:
            self._wake.clear()
            with self._cond:
                if self._draining:
                    return
                free = self.capacity - len(self._workers)
            job = self._claim() if free > 0 else None
            if job is not None:
                self._begin(job)
                continue
            self._wake.wait(POLL)

    def _claim(self) -> Job | None:
        self._polled_at = time.monotonic()
        try:
            return self.store.claim(self.runner_id)
        except CorralError:
            return None  # the store is unavailable for now: look again at the next poll

    def _begin(self, job: Job) -> None:
        """Start a worker thread (a session) with ``job``; only the claim loop starts them."""
        with self._cond:
            if not self._draining:
                worker = threading.Thread(target=self._work, args=(job,), name=f"corral-job-{job.id}", daemon=True)
                self._active[job.id] = worker
                self._workers.add(worker)
                worker.start()
                return
        self._give_back(job)

    def _give_back(self, job: Job) -> None:
        """Queue again, untouched, a job claimed as the drain began."""
        self.store.update(job.id, state=JobState.INTERRUPTED)
        self.store.update(
            job.id, state=JobState.QUEUED, owner=None, attempts=job.attempts - 1, log=_state(JobState.QUEUED)
        )

    def _work(self, first: Job) -> None:
        """Run ``first``, then claim and run the next job until none is queued or the pool drains."""
        job: Job | None = first
        try:
            while job is not None:
                self._run(job.id)
                job = self._next()
        finally:
            with self._cond:
                self._workers.discard(threading.current_thread())
                self._cond.notify_all()
            self._wake.set()  # the claim loop may fill the session again

    def _run(self, job_id: str) -> None:
        try:
            self.runner.run(job_id)
        except Exception as err:  # a bug, not a job's failure: the job is kept as interrupted
            self.store.append_event(job_id, "note", f"the runner failed: {type(err).__name__}: {err}")
        finally:
            with self._cond:
                self._active.pop(job_id, None)
                self._cond.notify_all()

    def _next(self) -> Job | None:
        """The job this worker runs next, claimed in its own session; ``None`` when it should end."""
        with self._cond:
            if self._draining:
                return None
        job = self._claim()
        if job is None:
            return None
        with self._cond:
            if not self._draining:
                self._active[job.id] = threading.current_thread()
                return job
        self._give_back(job)
        return None


def owner_is_dead(
    job: Job,
    now: datetime,
    *,
    me: str,
    hostname: str,
    alive: Callable[[int], bool],
    heartbeat: float = HEARTBEAT,
) -> bool:
    """Whether nobody runs ``job`` any more: it is ``me`` (which runs nothing yet), a dead process on
    this host (``<hostname>-<pid>``), or an owner whose heartbeat is ``STALE_BEATS`` beats old."""
    if job.owner is None or job.owner == me:
        return True
    host, _, pid = job.owner.rpartition("-")
    if host == hostname and pid.isdigit() and not alive(int(pid)):
        return True
    return job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=STALE_BEATS * heartbeat)


def recover(
    settings: Settings,
    store: JobStore,
    sandbox: SandboxBackend | None,
    requeue: int,
    *,
    runner_id: str | None = None,
) -> list[str]:
    """Mark the jobs of dead owners ``interrupted``, queue interrupted jobs again (up to ``requeue``
    restarts, else fail them), and reap leftover sandboxes, proxy sockets and checkout mounts. Returns the ids of
    the jobs it interrupted, requeued or failed."""
    me = runner_id or default_owner()
    now = utc_now()
    hostname = socket.gethostname()
    touched: list[str] = []
    for state in (JobState.PREPARING, JobState.RUNNING):
        for job in _all(store, state):
            if owner_is_dead(job, now, me=me, hostname=hostname, alive=pid_alive):
                gone = (("note", f"its runner {job.owner} is gone; the job was interrupted"),)
                try:
                    store.update(
                        job.id,
                        state=JobState.INTERRUPTED,
                        error="corral stopped while the job ran",
                        log=gone + _state(JobState.INTERRUPTED),
                    )
                except ConflictError:
                    continue  # it moved on meanwhile: someone runs it
    for job in _all(store, JobState.INTERRUPTED):
        try:
            if job.attempts <= requeue:
                again = (("note", f"queued again after attempt {job.attempts}"),)
                store.update(job.id, state=JobState.QUEUED, owner=None, log=again + _state(JobState.QUEUED))
            else:
                why = f"The job was interrupted {job.attempts} times; it is not started again. Submit it anew."
                result = JobResult(is_error=True, reason="interrupted", summary=why)
                store.update(job.id, state=JobState.FAILED, error=why, result=result, log=_state(JobState.FAILED))
        except ConflictError:
            continue
        touched.append(job.id)
    reap = getattr(sandbox, "reap", None)
    if callable(reap):
        (settings.runtime / "slots").mkdir(parents=True, exist_ok=True, mode=0o700)  # reap expects it
        reap()
    reap_sockets(settings.runtime / "proxy")
    reap_checkouts(settings, store)
    return touched


def reap_checkouts(settings: Settings, store: JobStore) -> list[Path]:
    """Unmount the overlay checkouts no job being prepared or run uses (a killed runner left them mounted)."""
    from corral.gitcache import GitCache

    busy = []
    for state in (JobState.PREPARING, JobState.RUNNING):
        for job in _all(store, state):
            root = job
            while root.parent_id is not None:  # a follow-up works in the checkout of the first job
                root = store.get(root.parent_id)
            busy.append(JobDirs(settings.home / "jobs" / root.id).repo)
    return GitCache(settings.home / "git").reap(keep=busy)


def _state(state: JobState) -> tuple[tuple[str, str]]:
    """The log entry of a move to ``state``."""
    return (("state", state.value),)


def _all(store: JobStore, state: JobState) -> list[Job]:
    return store.list(state=state, limit=1_000_000)


def reap_sockets(directory: Path) -> list[Path]:
    """Remove the Unix sockets in ``directory`` that nobody listens on any more."""
    removed = []
    for path in sorted(directory.glob("*.sock")) if directory.is_dir() else ():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            probe.close()
    return removed
