"""Crash recovery for real: a pool in another process is killed with SIGKILL mid-job, the next one cleans up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.jobs.models import Job, JobOptions, JobState
from corral.jobs.store import JobStore, open_store
from corral.runner.job import JobRunner
from corral.runner.pool import RunnerPool, reap_sockets
from corral.sandbox import cgroups
from corral.settings import Settings
from tests.gitserver import make_repo
from tests.security.attack import leftovers, sandbox_processes
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

# A pool in its own process: it runs until it is killed.
SERVER = """
import sys, time
from pathlib import Path
from corral.jobs.store import open_store
from corral.runner.pool import RunnerPool
from corral.settings import Settings

settings = Settings(home=Path(sys.argv[1]), git_allow_local=True, idle_timeout=60.0, startup_timeout=60.0)
pool = RunnerPool(settings, open_store(settings), capacity=1)
pool.start()
print(pool.runner_id, flush=True)
time.sleep(600)
"""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    require_root()
    require("bwrap")
    return Settings(home=tmp_path / "home", git_allow_local=True, idle_timeout=60.0, startup_timeout=60.0)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_after_kill_9_the_next_pool_requeues_the_running_job_runs_the_queued_and_reaps(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    origin = make_repo(tmp_path / "origin.git", files=2, commits=1)
    slow_command = ("sh", "-c", "echo started; sleep 3; echo {prompt} > done.txt; echo finished")
    # the allowed domain gives the job a door, so a proxy socket to leave behind
    slow = _submit(settings, store, "slow", origin, JobOptions(command=slow_command, allow_domains=("a.invalid",)))
    echo = JobOptions(command=("sh", "-c", "echo {prompt}"))
    quick = [_submit(settings, store, f"quick-{n}", origin, echo) for n in range(3)]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(settings.home)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert server.stdout is not None
        dead_owner = server.stdout.readline().strip()
        wait_for(lambda: [e.data for e in store.events(slow.id) if e.kind == "agent"] == ["started"], 60)
        held = sandbox_processes(settings)
        assert held, "the slow job runs in no sandbox"
        socket_path = settings.runtime / "proxy" / f"job-{slow.id}.sock"
        assert socket_path.exists()
    finally:
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()
    assert store.get(slow.id).state is JobState.RUNNING
    assert store.get(slow.id).owner == dead_owner
    assert [store.get(job.id).state for job in quick] == [JobState.QUEUED] * 3
    slots = {uid - settings.sandbox_uid_base for uid in held.values()}

    pool = RunnerPool(settings, store, capacity=2)
    pool.start()
    try:
        assert pool.recovered == [slow.id]
        ended = [pool.wait(job.id, 60) for job in (slow, *quick)]
    finally:
        pool.stop()
    assert [job.state for job in ended] == [JobState.SUCCEEDED] * 4, [job.result for job in ended]
    again = ended[0]
    assert again.attempts == 2
    assert again.owner == pool.runner_id
    assert again.result is not None
    assert again.result.files_changed == ("done.txt",)
    states = [e.data for e in store.events(slow.id) if e.kind == "state"]
    assert states == ["queued", "preparing", "running", "interrupted", "queued", "preparing", "running", "succeeded"]
    notes = " ".join(e.data for e in store.events(slow.id) if e.kind == "note")
    assert f"its runner {dead_owner} is gone" in notes
    assert [e.data for e in store.events(slow.id) if e.kind == "agent"] == ["started", "started", "finished"]
    assert all(job.attempts == 1 for job in ended[1:])
    assert len(store.list(limit=100)) == 4  # nothing lost, nothing doubled
    assert leftovers(settings, cgroups.detect(), slots) == set()
    assert not socket_path.exists()


def test_a_job_interrupted_too_often_fails_with_a_sentence(settings: Settings, store: JobStore, tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin.git", files=1, commits=1)
    job = _submit(settings, store, "x", origin, JobOptions(command=("true",)))
    claimed = store.claim(f"{socket.gethostname()}-{_pid_of_ended_process()}")
    assert claimed is not None
    assert claimed.id == job.id
    pool = RunnerPool(settings, store, capacity=1, requeue_interrupted=0)
    pool.start()
    try:
        ended = pool.wait(job.id, 10)
    finally:
        pool.stop()
    assert pool.recovered == [job.id]
    assert ended.state is JobState.FAILED
    assert ended.error is not None
    assert "interrupted 1 times" in ended.error


def test_a_live_owner_s_job_is_left_alone(settings: Settings, store: JobStore, tmp_path: Path) -> None:
    origin = make_repo(tmp_path / "origin.git", files=1, commits=1)
    job = _submit(settings, store, "x", origin, JobOptions(command=("true",)))
    me = f"{socket.gethostname()}-{os.getppid()}"  # a live process on this host, with a fresh heartbeat
    assert store.claim(me) is not None
    pool = RunnerPool(settings, store, capacity=1)
    pool.start()
    try:
        time.sleep(0.3)
        assert pool.recovered == []
        assert store.get(job.id).state is JobState.PREPARING
    finally:
        pool.stop()


def test_reap_sockets_removes_only_the_sockets_nobody_serves(tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(tmp_path / "live.sock"))
    live.listen()
    try:
        assert reap_sockets(tmp_path) == [tmp_path / "stale.sock"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["live.sock"]
    finally:
        live.close()


def _submit(settings: Settings, store: JobStore, prompt: str, origin: Path, options: JobOptions) -> Job:
    return JobRunner(settings, store).submit(prompt, str(origin), agent="generic", options=options)


def _pid_of_ended_process() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    ended = subprocess.Popen(["true"])
    ended.wait(10)
    return ended.pid


@pytest.mark.parametrize(
    ("owner", "beat_age", "alive", "dead"),
    [
        ("me-1", 0.0, True, True),  # this pool runs nothing yet
        (None, 0.0, True, True),
        ("here-42", 0.0, False, True),  # a dead process of this host
        ("here-42", 0.0, True, False),
        ("there-42", 0.0, False, False),  # another host: only its heartbeat tells
        ("there-42", 16.0, True, True),
        ("there-42", 14.0, True, False),
    ],
)
def test_owner_is_dead(owner: str | None, beat_age: float, alive: bool, dead: bool) -> None:
    import dataclasses
    from datetime import timedelta

    from corral.jobs.models import new_job, utc_now
    from corral.runner.pool import owner_is_dead

    now = utc_now()
    job = dataclasses.replace(new_job("p", "r"), owner=owner, heartbeat_at=now - timedelta(seconds=beat_age))
    found = owner_is_dead(job, now, me="me-1", hostname="here", alive=lambda pid: alive and pid == 42, heartbeat=5.0)
    assert found is dead
