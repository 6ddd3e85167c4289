"""Jobs end to end: the real Claude Code CLI in the real sandbox, behind the real proxy and gateway.

The Messages API is the stand-in on 127.0.0.1, which answers only requests that carry the real
key: a job that gets anything done proves the gateway swapped the placeholder for it. The
repository is a real bare repository on disk (``git_allow_local``) or served by ``git
http-backend`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.errors import RepoError
from corral.jobs.models import Job, JobOptions, JobState
from corral.jobs.store import JobStore, open_store
from corral.runner.job import JobRunner, Listener
from corral.settings import Settings
from tests.claude import claude_bin
from tests.gitserver import git, make_repo
from tests.security.attack import sandbox_processes
from tests.standin_api import StandinAPI
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

REAL_KEY = "sk-ant-api03-REAL-KEY-never-inside-" + "x" * 20
FAST_FAIL = ("CLAUDE_CODE_MAX_RETRIES=0",)


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI(required_auth=("x-api-key", REAL_KEY)) as server:
        yield server


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "origin.git", files=3, commits=2)


@pytest.fixture
def settings(tmp_path: Path, api: StandinAPI) -> Settings:
    require_root()
    require("bwrap")
    require("socat")
    return Settings(
        home=tmp_path / "home",
        git_allow_local=True,
        anthropic_base_url=api.url,
        claude_bin=str(claude_bin()),
        idle_timeout=60.0,
        startup_timeout=60.0,
        job_timeout=120.0,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def runner(settings: Settings, store: JobStore) -> JobRunner:
    return JobRunner(settings, store, environ={"ANTHROPIC_API_KEY": REAL_KEY})


def run(runner: JobRunner, prompt: str, origin: Path, **options: object):  # type: ignore[no-untyped-def]
    job = runner.submit(prompt, str(origin), options=JobOptions(**options))  # type: ignore[arg-type]
    return runner.run(job.id)


def ended_by(job: Job) -> str:
    """The reason the job's result gives (it must have one)."""
    assert job.result is not None, job
    return job.result.reason


def show(repo: Path, rev: str) -> str:
    return git("show", rev, cwd=repo)


def test_a_written_file_lands_on_the_job_branch_with_its_diff(
    runner: JobRunner, store: JobStore, origin: Path, api: StandinAPI
) -> None:
    sent_before = sum(api.usage_sent.values())
    job = run(runner, "WRITE hello.txt hi from the agent", origin)
    assert job.state is JobState.SUCCEEDED, job.result
    result = job.result
    assert result is not None
    assert result.reason == "completed"
    assert result.files_changed == ("hello.txt",)
    assert "+hi from the agent" in result.diff
    assert result.branch == f"corral/{job.id}"
    checkout = runner.dirs(job.id).repo
    assert show(checkout, f"{result.branch}:hello.txt") == "hi from the agent"
    assert result.commit == git("rev-parse", result.branch, cwd=checkout)
    assert "corral <corral@localhost>" in git("log", "-1", "--format=%an <%ae>", result.commit, cwd=checkout)
    # what the gateway metered is what the stand-in sent, and the CLI's own report is kept
    assert result.usage.total == sum(api.usage_sent.values()) - sent_before > 0
    assert result.session_id
    assert result.num_turns
    assert result.cost_usd is not None
    kinds = [event.kind for event in store.events(job.id)]
    assert kinds[0] == "state"
    assert kinds.count("agent") >= 4
    lines = [json.loads(e.data) for e in store.events(job.id) if e.kind == "agent"]
    assert (lines[0]["type"], lines[-1]["type"]) == ("system", "result")
    states = [e.data for e in store.events(job.id) if e.kind == "state"]
    assert states == ["queued", "preparing", "running", "succeeded"]


def test_the_real_credential_never_enters_the_sandbox(
    runner: JobRunner, store: JobStore, origin: Path, settings: Settings
) -> None:
    # the key is searched for in two halves, so that the prompt (and the transcript) does not hold it
    half = len(REAL_KEY) // 2
    script = (
        f"BASH env | sort > seen-env.txt; a='{REAL_KEY[:half]}'; b='{REAL_KEY[half:]}'; "
        'grep -rsl -- "$a$b" .. "$HOME" /tmp /run /etc > found.txt; echo scanned'
    )
    job = run(runner, script, origin)
    assert job.state is JobState.SUCCEEDED, job.result
    checkout = runner.dirs(job.id).repo
    seen_env = show(checkout, f"corral/{job.id}:seen-env.txt")
    assert "ANTHROPIC_API_KEY=corral-placeholder-" in seen_env
    assert REAL_KEY not in seen_env
    assert show(checkout, f"corral/{job.id}:found.txt") == ""
    # nor in anything corral stored: the event log, the result, the job's files on the host
    stored = json.dumps(store.get(job.id).to_dict()) + "".join(e.data for e in store.events(job.id))
    assert REAL_KEY not in stored
    for path in runner.dirs(job.id).root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert REAL_KEY.encode() not in path.read_bytes(), path


def test_egress_outside_the_allowlist_is_denied_and_reported(runner: JobRunner, origin: Path) -> None:
    from tests.standin_api import StandinAPI as Other

    with Other() as other:
        port = other.url.rsplit(":", 1)[1]
        job = run(runner, f"BASH curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/; echo", origin)
        assert other.requests == []
    assert job.state is JobState.SUCCEEDED, job.result
    assert job.result is not None
    assert any(v.startswith(f"network 127.0.0.1:{port}") for v in job.result.violations), job.result.violations


def test_a_cancelled_job_leaves_no_process_behind(runner: JobRunner, store: JobStore, origin: Path) -> None:
    job = runner.submit("BASH sleep 120", str(origin))
    seen_tool = threading.Event()

    class Watch(Listener):
        def agent(self, event: object, tokens: int) -> None:
            if type(event).__name__ == "ToolUse":
                seen_tool.set()

    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(runner.run(job.id, Watch())))
    worker.start()
    assert seen_tool.wait(60), "the agent never started its tool"
    time.sleep(0.5)
    started = time.monotonic()
    runner.cancel(job.id)
    worker.join(60)
    assert not worker.is_alive()
    assert time.monotonic() - started < 20
    ended = store.get(job.id)
    assert ended.state is JobState.CANCELLED
    assert ended_by(ended) == "cancelled"
    assert any(e.kind == "agent" for e in store.events(job.id))  # the log is kept
    # no process of any sandbox uid is left (the agent and its `sleep` ran as one), whatever else the host runs
    assert sandbox_processes(runner.settings) == {}


def test_two_jobs_on_the_same_repo_at_once_both_succeed(runner: JobRunner, origin: Path) -> None:
    jobs = [runner.submit(f"WRITE job-{n}.txt from job {n}", str(origin)) for n in range(2)]
    done: dict[int, object] = {}
    threads = [threading.Thread(target=lambda n=n: done.__setitem__(n, runner.run(jobs[n].id))) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for n, job in enumerate(jobs):
        ended = done[n]
        assert ended.state is JobState.SUCCEEDED, ended.result  # type: ignore[attr-defined]
        assert ended.result.files_changed == (f"job-{n}.txt",)  # type: ignore[attr-defined]
        assert show(runner.dirs(job.id).repo, f"corral/{job.id}:job-{n}.txt") == f"from job {n}"


def test_a_hostile_url_is_refused_before_git_runs(runner: JobRunner, store: JobStore, settings: Settings) -> None:
    for url in ("ext::sh -c touch% /tmp/corral-pwned", "--upload-pack=touch /tmp/corral-pwned", "fd::17"):
        with pytest.raises(RepoError):
            runner.submit("SAY hi", url)
    assert store.list() == []
    assert not (settings.home / "git").exists()
    assert not Path("/tmp/corral-pwned").exists()


def test_usage_limit_is_recognised_with_its_reset_time(settings: Settings, store: JobStore, origin: Path) -> None:
    """A subscription's limit, so an OAuth token, stored with ``corral auth``: sent as a Bearer token upstream."""
    import dataclasses

    from corral.secrets import CredentialStore

    token = "sk-ant-oat01-REAL-TOKEN-never-inside-" + "y" * 20
    CredentialStore(settings.home).set_token(token)
    with StandinAPI(required_auth=("authorization", f"Bearer {token}")) as subscription:
        oauth = JobRunner(dataclasses.replace(settings, anthropic_base_url=subscription.url), store, environ={})
        reset = int(time.time()) + 3600
        job = run(oauth, f"USAGE_LIMIT {reset}", origin)
        assert len(subscription.requests) >= 1
    assert job.state is JobState.FAILED
    assert ended_by(job) == "usage_limit", job.result
    assert job.result.usage_limit_resets_at is not None


@pytest.mark.parametrize(("status", "reason"), [(401, "api_error"), (429, "api_error"), (529, "api_error")])
def test_api_errors_fail_the_job_with_the_api_s_words(
    runner: JobRunner, origin: Path, status: int, reason: str
) -> None:
    job = run(runner, f"ERROR {status}", origin, env=FAST_FAIL)
    assert job.state is JobState.FAILED
    assert ended_by(job) == reason, job.result
    assert str(status) in job.result.summary


def test_max_turns_stops_the_agent(runner: JobRunner, origin: Path) -> None:
    job = run(runner, "WRITE a.txt one\nWRITE b.txt two\nWRITE c.txt three", origin, max_turns=1)
    assert job.state is JobState.FAILED
    assert ended_by(job) == "max_turns"
    assert "a.txt" in job.result.files_changed  # what it did before the limit is kept


def test_a_silent_api_trips_the_idle_watchdog(settings: Settings, store: JobStore, origin: Path) -> None:
    import dataclasses

    quick = JobRunner(dataclasses.replace(settings, idle_timeout=3.0), store, environ={"ANTHROPIC_API_KEY": REAL_KEY})
    started = time.monotonic()
    job = run(quick, "SILENT", origin)
    assert job.state is JobState.TIMED_OUT
    assert ended_by(job) == "idle_timeout"
    assert time.monotonic() - started < 30


def test_a_slow_start_trips_the_startup_watchdog(settings: Settings, store: JobStore, origin: Path) -> None:
    import dataclasses

    quick = JobRunner(
        dataclasses.replace(settings, startup_timeout=0.05), store, environ={"ANTHROPIC_API_KEY": REAL_KEY}
    )
    job = run(quick, "SAY hi", origin)
    assert job.state is JobState.TIMED_OUT
    assert ended_by(job) == "startup_timeout"


def test_the_wall_clock_limit_ends_a_slow_job(runner: JobRunner, origin: Path) -> None:
    started = time.monotonic()
    job = run(runner, "SLOW 60\nSAY too late", origin, timeout=4.0)
    assert job.state is JobState.TIMED_OUT
    assert ended_by(job) == "timeout"
    assert time.monotonic() - started < 30


def test_corral_run_as_a_process(settings: Settings, origin: Path, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "CORRAL_HOME": str(settings.home),
        "CORRAL_GIT_ALLOW_LOCAL": "true",
        "CORRAL_ANTHROPIC_BASE_URL": settings.anthropic_base_url,
        "CORRAL_CLAUDE_BIN": settings.claude_bin,
        "ANTHROPIC_API_KEY": REAL_KEY,
    }
    corral = str(Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "corral")
    if not Path(corral).exists():
        corral = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "corral")
    done = subprocess.run(
        [corral, "run", "WRITE notes.md # Notes", "--repo", str(origin), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["state"] == "succeeded"
    assert job["result"]["files_changed"] == ["notes.md"]
    assert "running" in done.stderr  # live progress went to stderr
    assert "Write" in done.stderr
    assert REAL_KEY not in done.stdout + done.stderr
    listed = subprocess.run([corral, "jobs", "list"], env=env, capture_output=True, text=True, check=True).stdout
    assert job["id"] in listed
    raw = subprocess.run(
        [corral, "jobs", "logs", job["id"], "--raw"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(raw.stdout.splitlines()[-1])["type"] == "result"
    failed = subprocess.run(
        [corral, "run", "ERROR 400", "--repo", str(origin), "-e", FAST_FAIL[0]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stdout


def test_read_edit_and_bash_change_an_existing_file(runner: JobRunner, origin: Path) -> None:
    script = "\n".join(
        (
            "READ README.md",
            "EDIT README.md edit edited-by-the-agent",
            "BASH git status --porcelain README.md > status.txt",
        )
    )
    job = run(runner, script, origin)
    assert job.state is JobState.SUCCEEDED, job.result
    assert job.result is not None
    assert sorted(job.result.files_changed) == ["README.md", "status.txt"]
    assert "+edited-by-the-agent 1" in job.result.diff
    # plain git works inside the sandbox on the checkout that borrows the mirror's objects
    assert show(runner.dirs(job.id).repo, f"corral/{job.id}:status.txt") == "M README.md"


def test_push_sends_the_branch_with_the_bot_token_from_the_host(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    """The remote is served by git http-backend and needs the token to push; the sandbox never sees it."""
    import dataclasses

    from corral.secrets import CredentialStore
    from tests.gitserver import serve

    token = "bot-token-never-inside-0123456789"
    make_repo(tmp_path / "served" / "project.git", files=3, commits=1)
    CredentialStore(settings.home).set_git_token(token)
    with serve(tmp_path / "served", token=token) as base:
        url = f"{base}/project.git"
        pushing = JobRunner(
            dataclasses.replace(settings, git_allow_local=False), store, environ={"ANTHROPIC_API_KEY": REAL_KEY}
        )
        job = pushing.run(pushing.submit("WRITE pushed.txt over http", url, options=JobOptions(push=True)).id)
        assert job.state is JobState.SUCCEEDED, job.result
        assert job.result is not None
        assert job.result.pushed
        remote_branches = git("ls-remote", "--heads", url)
    assert f"refs/heads/corral/{job.id}" in remote_branches
    assert git("show", f"corral/{job.id}:pushed.txt", cwd=tmp_path / "served" / "project.git") == "over http"
    stored = json.dumps(store.get(job.id).to_dict()) + "".join(e.data for e in store.events(job.id))
    assert token not in stored
    assert token not in (pushing.dirs(job.id).repo / ".git" / "config").read_text()
