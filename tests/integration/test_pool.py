"""The runner pool for real: real store, real git, real sandbox; the generic agent keeps most of it fast.

The follow-up test runs the real Claude Code CLI against the stand-in API on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral.errors import ConflictError, NotFoundError, UsageError
from corral.jobs.models import Job, JobOptions, JobState
from corral.jobs.store import JobStore, open_store
from corral.runner.job import JobRunner
from corral.runner.pool import RunnerPool
from corral.settings import Settings
from tests.claude import claude_bin
from tests.gitserver import git, make_repo
from tests.standin_api import StandinAPI, prompt_text
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

REAL_KEY = "sk-ant-api03-REAL-KEY-never-inside-" + "x" * 20
ECHO = ("sh", "-c", "echo {prompt}")


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", files=2, commits=1)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    require_root()
    require("bwrap")
    return Settings(
        home=tmp_path / "home", git_allow_local=True, idle_timeout=60.0, startup_timeout=60.0, job_timeout=120.0
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def make_pool(settings: Settings, store: JobStore) -> Iterator[Callable[..., RunnerPool]]:
    made: list[RunnerPool] = []

    def make(**kwargs: object) -> RunnerPool:
        pool = RunnerPool(settings, store, **kwargs)  # type: ignore[arg-type]
        made.append(pool)
        pool.start()
        return pool

    yield make
    for pool in made:
        pool.stop()


def generic(*command: str, allow: tuple[str, ...] = ()) -> JobOptions:
    return JobOptions(command=command, allow_domains=allow)


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def printed(store: JobStore, job_id: str) -> list[str]:
    return [e.data for e in store.events(job_id) if e.kind == "agent"]


@pytest.mark.parametrize("capacity", [0, -1, "x", 1.5, True])
def test_a_capacity_that_is_not_a_whole_number_of_one_or_more_is_refused(
    settings: Settings, store: JobStore, capacity: object
) -> None:
    with pytest.raises(UsageError, match=f"capacity must be a whole number .*not {capacity!r}"):
        RunnerPool(settings, store, capacity=capacity)  # type: ignore[arg-type]


def test_a_hundred_concurrent_submissions_at_capacity_four_all_finish(
    make_pool: Callable[..., RunnerPool], store: JobStore, origin: Path
) -> None:
    pool = make_pool(capacity=4)
    assert pool.capacity == 4
    most = [0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            most[0] = max(most[0], pool.active_sessions)
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    submitted: list[Job] = []
    lock = threading.Lock()

    def submit(thread: int) -> None:
        for n in range(thread, 100, 8):
            job = pool.submit(f"job-{n}", str(origin), agent="generic", options=generic(*ECHO))
            with lock:
                submitted.append(job)

    started = time.monotonic()
    threads = [threading.Thread(target=submit, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ended = [pool.wait(job.id, timeout=max(1.0, 120 - (time.monotonic() - started))) for job in submitted]
    sampling.set()
    sampler.join()
    assert len({job.id for job in submitted}) == 100
    assert [job.state for job in ended] == [JobState.SUCCEEDED] * 100
    assert sorted(job.result.summary for job in ended if job.result) == sorted(f"job-{n}" for n in range(100))
    assert all(job.attempts == 1 and job.owner == pool.runner_id for job in ended)
    # never more than four at once, from the pool's own count and from the stored run times
    assert 2 <= most[0] <= 4, most
    edges = sorted(
        [(j.started_at, 1) for j in ended] + [(j.finished_at, -1) for j in ended], key=lambda e: (e[0], e[1])
    )
    running = overlap = 0
    for _, step in edges:
        running += step
        overlap = max(overlap, running)
    assert 1 <= overlap <= 4
    assert len(store.list(limit=1000)) == 100
    assert pool.last_poll_age_ms < 5000


def test_a_worker_that_ends_a_job_runs_the_next_queued_one_in_the_same_thread(
    settings: Settings, store: JobStore, origin: Path
) -> None:
    pool = RunnerPool(settings, store, capacity=2)
    jobs = [pool.submit(f"job-{n}", str(origin), agent="generic", options=generic(*ECHO)) for n in range(6)]
    ran_in: dict[str, str] = {}
    run = pool.runner.run

    def spy(job_id: str, listener: object = None) -> Job:
        ran_in[job_id] = threading.current_thread().name
        return run(job_id)

    pool.runner.run = spy  # type: ignore[method-assign]
    pool.start()
    try:
        ended = [pool.wait(job.id, timeout=60) for job in jobs]
    finally:
        pool.stop()
    assert [job.state for job in ended] == [JobState.SUCCEEDED] * 6
    assert set(ran_in) == {job.id for job in jobs}
    assert 1 <= len(set(ran_in.values())) <= 2  # at most one thread per session, each claimed the next itself
    assert pool.active_sessions == 0


def test_one_thread_keeps_the_heartbeat_of_every_running_job_fresh(
    settings: Settings, store: JobStore, origin: Path
) -> None:
    def beaters() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "corral-heartbeat"}

    others = beaters()  # of earlier runners, which end a few seconds after their last job
    runner = JobRunner(settings, store, heartbeat=0.2)
    slow = generic("sh", "-c", "echo started; sleep 2")
    jobs = [runner.submit(f"beat-{n}", str(origin), agent="generic", options=slow) for n in range(2)]
    threads = [threading.Thread(target=runner.run, args=(job.id,)) for job in jobs]
    for thread in threads:
        thread.start()
    wait_for(lambda: all(printed(store, job.id) == ["started"] for job in jobs))
    first = [store.get(job.id).heartbeat_at for job in jobs]
    assert len(beaters() - others) == 1
    time.sleep(0.8)
    later = [store.get(job.id).heartbeat_at for job in jobs]
    assert all(a is not None and b is not None and b > a for a, b in zip(first, later, strict=True)), (first, later)
    for thread in threads:
        thread.join(60)
    ended = [store.get(job.id) for job in jobs]
    assert [job.state for job in ended] == [JobState.SUCCEEDED] * 2
    time.sleep(0.6)  # three beats: none for an ended job
    assert [store.get(job.id).heartbeat_at for job in jobs] == [job.heartbeat_at for job in ended]
    wait_for(lambda: not beaters() - others, timeout=5)


def test_the_same_idempotency_key_gives_the_same_job(make_pool: Callable[..., RunnerPool], origin: Path) -> None:
    pool = make_pool(capacity=1)
    first = pool.submit("once", str(origin), agent="generic", options=generic(*ECHO), idempotency_key="k-1")
    again = pool.submit("once", str(origin), agent="generic", options=generic(*ECHO), idempotency_key="k-1")
    other = pool.submit("once", str(origin), agent="generic", options=generic(*ECHO), idempotency_key="k-2")
    assert again.id == first.id != other.id
    assert pool.wait(first.id, 60).state is JobState.SUCCEEDED


def test_cancel_a_queued_and_a_running_job_and_wait(
    make_pool: Callable[..., RunnerPool], store: JobStore, origin: Path
) -> None:
    pool = make_pool(capacity=1)
    slow = pool.submit("slow", str(origin), agent="generic", options=generic("sh", "-c", "echo started; sleep 60"))
    queued = pool.submit("never", str(origin), agent="generic", options=generic(*ECHO))
    wait_for(lambda: printed(store, slow.id) == ["started"])
    assert pool.active_sessions == 1
    assert pool.wait(slow.id, timeout=0.3).state is JobState.RUNNING  # a wait that times out returns the job as is
    assert pool.cancel(queued.id).state is JobState.CANCELLED
    began = time.monotonic()
    pool.cancel(slow.id)
    ended = pool.wait(slow.id, timeout=30)
    assert ended.state is JobState.CANCELLED, ended
    assert ended.result is not None
    assert ended.result.reason == "cancelled"
    assert time.monotonic() - began < 20
    with pytest.raises(ConflictError, match="already ended"):
        pool.cancel(slow.id)
    assert store.get(queued.id).started_at is None
    assert "running" not in [e.data for e in store.events(queued.id) if e.kind == "state"]


def test_drain_interrupts_a_job_that_outlives_the_timeout_and_keeps_its_log(
    make_pool: Callable[..., RunnerPool], store: JobStore, origin: Path
) -> None:
    pool = make_pool(capacity=2)
    quick = pool.submit("q", str(origin), agent="generic", options=generic("sh", "-c", "sleep 0.5; echo quick"))
    slow = pool.submit("s", str(origin), agent="generic", options=generic("sh", "-c", "echo started; sleep 60"))
    wait_for(lambda: printed(store, slow.id) == ["started"] and store.get(quick.id).state is JobState.RUNNING)
    began = time.monotonic()
    pool.drain(2.0)
    assert 2.0 <= time.monotonic() - began < 30
    assert pool.draining
    assert pool.active_sessions == 0
    assert store.get(quick.id).state is JobState.SUCCEEDED  # finished within the drain timeout
    ended = store.get(slow.id)
    assert ended.state is JobState.INTERRUPTED
    assert ended.result is not None
    assert ended.result.reason == "interrupted"
    assert printed(store, slow.id) == ["started"]
    late = pool.submit("late", str(origin), agent="generic", options=generic(*ECHO))
    time.sleep(1.0)
    assert store.get(late.id).state is JobState.QUEUED  # a draining pool claims nothing


def test_follow_up_of_a_generic_job_continues_on_the_same_branch(
    make_pool: Callable[..., RunnerPool], store: JobStore, origin: Path, settings: Settings
) -> None:
    pool = make_pool(capacity=2)
    command = generic("sh", "-c", "sleep 1; echo {prompt} >> notes.txt")
    first = pool.submit("one", str(origin), agent="generic", options=command)
    with pytest.raises(ConflictError, match="when it has finished"):
        pool.follow_up(first.id, "too early")
    parent = pool.wait(first.id, 60)
    assert parent.state is JobState.SUCCEEDED
    assert parent.result is not None
    second = pool.follow_up(first.id, "two")
    assert second.parent_id == first.id
    child = pool.wait(second.id, 60)
    assert child.state is JobState.SUCCEEDED, child.result
    assert child.result is not None
    checkout = settings.home / "jobs" / first.id / "repo"
    assert not (settings.home / "jobs" / second.id).exists()
    assert child.result.branch == parent.result.branch == f"corral/{first.id}"
    assert git("show", f"{child.result.branch}:notes.txt", cwd=checkout) == "one\ntwo"
    assert git("rev-parse", f"{child.result.commit}~1", cwd=checkout) == parent.result.commit
    assert child.result.base == parent.result.base
    assert "+one" in child.result.diff
    assert "+two" in child.result.diff
    with pytest.raises(NotFoundError):
        pool.follow_up("0123456789abcdef", "who?")


def test_set_egress_changes_a_running_job_s_allowlist(
    make_pool: Callable[..., RunnerPool], store: JobStore, origin: Path, settings: Settings
) -> None:
    require("curl")
    with StandinAPI() as target:
        where = target.url.removeprefix("http://")
        curl = f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}\\n' http://{where}/"
        script = f'{curl}; echo asked; while [ ! -e "$TMPDIR/go" ]; do sleep 0.1; done; {curl}'
        pool = make_pool(capacity=1)
        job = pool.submit(
            "net", str(origin), agent="generic", options=generic("sh", "-c", script, allow=("a.invalid",))
        )
        wait_for(lambda: "asked" in printed(store, job.id))
        assert target.requests == []
        changed = pool.set_egress(job.id, [where])
        assert changed.options.allow_domains == (where,)
        (settings.home / "jobs" / job.id / "tmp" / "go").touch()
        ended = pool.wait(job.id, 60)
        assert len(target.requests) == 1
    assert ended.state is JobState.SUCCEEDED, ended.result
    codes = [line for line in printed(store, job.id) if line != "asked"]
    assert codes[-1] == "200", codes
    assert codes[0] != "200", codes
    assert ended.result is not None
    assert any(v.startswith(f"network {where}") for v in ended.result.violations)
    with pytest.raises(ConflictError, match="not running"):
        pool.set_egress(job.id, ["example.com"])


def test_a_follow_up_resumes_the_claude_session_in_the_same_checkout(
    tmp_path: Path, origin: Path, settings: Settings, store: JobStore
) -> None:
    import dataclasses

    require("socat")
    with StandinAPI(required_auth=("x-api-key", REAL_KEY)) as api:
        claude = dataclasses.replace(settings, anthropic_base_url=api.url, claude_bin=str(claude_bin()))
        pool = RunnerPool(claude, store, capacity=1, environ={"ANTHROPIC_API_KEY": REAL_KEY})
        pool.start()
        try:
            # the stand-in plays the script of the session's first prompt, across both runs
            first = pool.submit("WRITE a.txt old\nSAY written\nREAD a.txt\nEDIT a.txt old new", str(origin))
            parent = pool.wait(first.id, 120)
            assert parent.state is JobState.SUCCEEDED, parent.result
            assert parent.session_id
            asked = len(api.requests)
            second = pool.follow_up(first.id, "READ a.txt\nEDIT a.txt old new")
            child = pool.wait(second.id, 120)
        finally:
            pool.stop()
        later = [r.body for r in api.requests[asked:] if isinstance(r.body, dict) and r.body.get("messages")]
    assert child.state is JobState.SUCCEEDED, child.result
    assert child.result is not None
    assert parent.result is not None
    assert later, "the follow-up never asked the API"
    history = str(later[0]["messages"])
    assert prompt_text(later[0]).startswith("WRITE a.txt old")  # the earlier turns came along
    assert "READ a.txt\\nEDIT a.txt old new" in history or "READ a.txt\nEDIT a.txt old new" in history
    checkout = settings.home / "jobs" / first.id / "repo"
    assert child.result.branch == parent.result.branch
    assert git("show", f"{child.result.branch}:a.txt", cwd=checkout).strip() == "new"
    assert git("rev-parse", f"{child.result.commit}~1", cwd=checkout) == parent.result.commit
    assert child.result.files_changed == ("a.txt",)
