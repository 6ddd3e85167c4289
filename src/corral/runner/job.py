"""One job from stored to finished: checkout, gateway, sandboxed agent, commit, result.

``JobRunner.submit`` checks the input and stores the job as ``queued`` before anything else;
``JobRunner.run`` takes it through ``preparing`` (its own checkout of the repository on branch
``corral/<id>``, the API gateway holding the real credential, an egress door that allows the
job's domains and the gateway), ``running`` (the agent in the sandbox; every line it prints is
appended to the job's event log as it arrives, watched for silence and for a slow start) and
its end (changes committed on the job branch, the diff and the result stored, the branch pushed
when asked). Whatever happens, the job and its log stay stored.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from corral.agents.base import Agent, AgentRequest, Outcome
from corral.agents.events import AgentEvent, LineSplitter
from corral.errors import CorralError, UsageError
from corral.gitcache import GitCache, check_ref, check_url, mask_url
from corral.jobs.models import Job, JobOptions, JobResult, JobState, new_job
from corral.jobs.store import JobStore
from corral.runner.watchdog import Watchdog
from corral.sandbox.base import SandboxBackend
from corral.sandbox.spec import Limits, RunResult, SandboxSpec
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.egress.gateway import Gateway

__all__ = ["JobDirs", "JobRunner", "Listener", "find_claude"]

AGENTS = ("claude-code",)


class Listener:
    """What a caller sees of a running job; override what you show."""

    def state(self, job: Job) -> None:
        """The job moved to ``job.state``."""

    def agent(self, event: AgentEvent, tokens: int) -> None:
        """The agent reported ``event``; ``tokens`` the job used so far (metered by the gateway)."""


@dataclasses.dataclass(frozen=True)
class JobDirs:
    """A job's directory on the host: the sandbox's writable tree, kept for follow-ups and inspection."""

    root: Path
    """The sandbox's workspace: everything below is the job's."""

    @property
    def repo(self) -> Path:
        return self.root / "repo"

    @property
    def config(self) -> Path:
        """The agent's own configuration and transcripts (``CLAUDE_CONFIG_DIR``)."""
        return self.root / "agent"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


class JobRunner:
    """Submits and runs jobs in this process, with the host's sandbox and egress proxy."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        sandbox: SandboxBackend | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.environ = os.environ if environ is None else environ
        if sandbox is None:
            from corral.sandbox.bwrap import BwrapSandbox

            sandbox = BwrapSandbox(settings)
        self.sandbox = sandbox
        self.git = GitCache(settings.home / "git", allow_local=settings.git_allow_local, author=settings.git_author)
        self._cancels: dict[str, threading.Event] = {}

    def submit(
        self,
        prompt: str,
        repo: str,
        *,
        ref: str | None = None,
        agent: str = "claude-code",
        options: JobOptions | None = None,
    ) -> Job:
        """Check the input and store the job as ``queued``; nothing runs yet."""
        check_url(repo, allow_local=self.settings.git_allow_local)
        if ref is not None:
            check_ref(ref)
        if agent not in AGENTS:
            msg = f"The agent {agent!r} is unknown; choose one of: {', '.join(AGENTS)}."
            raise UsageError(msg)
        if options is not None and options.allow_domains:
            from corral.egress.policy import Policy

            Policy(allow=options.allow_domains)  # a bad pattern is refused before the job is stored
        job = self.store.add(new_job(prompt, repo, ref=ref, agent=agent, options=options or JobOptions()))
        self.store.append_event(job.id, "state", job.state.value)
        return job

    def dirs(self, job_id: str) -> JobDirs:
        return JobDirs(self.settings.home / "jobs" / job_id)

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a running one is interrupted (SIGINT, SIGTERM, SIGKILL), a queued one never starts."""
        running = self._cancels.get(job_id)
        if running is not None:
            running.set()
            return self.store.get(job_id)
        return self._move(
            self.store.get(job_id), JobState.CANCELLED, result=_ended("cancelled", "Cancelled before it ran.")
        )

    def run(self, job_id: str, listener: Listener | None = None) -> Job:
        """Run a queued job to its end and return it as stored."""
        listener = listener or Listener()
        cancel = self._cancels.setdefault(job_id, threading.Event())
        job = self.store.get(job_id)
        try:
            job = self._move(job, JobState.PREPARING, listener=listener)
            return self._run(job, listener, cancel)
        except CorralError as err:
            self.store.append_event(job_id, "note", str(err))
            job = self.store.get(job_id)
            if job.state in (JobState.PREPARING, JobState.RUNNING):
                job = self._move(
                    job, JobState.FAILED, listener=listener, error=str(err), result=_ended("setup_failed", str(err))
                )
            return job
        except BaseException:
            self._move(self.store.get(job_id), JobState.INTERRUPTED, listener=listener, error="corral was stopped")
            raise
        finally:
            self._cancels.pop(job_id, None)

    def _run(self, job: Job, listener: Listener, cancel: threading.Event) -> Job:
        from corral.egress.door import Door
        from corral.egress.gateway import Gateway
        from corral.egress.policy import Policy
        from corral.egress.thread import ProxyThread
        from corral.secrets import resolve_credential

        credential = resolve_credential(self.settings.home, self.environ)
        dirs = self.dirs(job.id)
        for directory in (dirs.root, dirs.config, dirs.tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store.append_event(job.id, "note", f"checking out {mask_url(job.repo)} {job.ref or '(default branch)'}")
        checkout = self.git.checkout(job.repo, job.ref, job.id, dirs.repo)
        agent = self._agent(job.agent)
        options = job.options
        gateway = Gateway(self.settings.anthropic_base_url, credential)
        with ProxyThread() as proxy:
            proxy.call(gateway.start())
            try:
                policy = Policy(allow=(*options.allow_domains, gateway.url.removeprefix("http://")))
                with Door(self.settings.runtime, policy, proxy=proxy, name=f"job-{job.id}") as door:
                    request = AgentRequest(
                        prompt=job.prompt,
                        cwd=dirs.repo,
                        config_dir=dirs.config,
                        tmp_dir=dirs.tmp,
                        base_url=gateway.url,
                        credential_env={credential.env_name: gateway.placeholder.reveal()},
                        model=options.model,
                        max_turns=options.max_turns,
                        max_budget_usd=options.max_budget_usd,
                        permission_mode=options.permission_mode or self.settings.permission_mode,
                        append_system_prompt=options.append_system_prompt,
                        env=options.env_vars(),
                    )
                    agent.prepare(request, dirs.config)
                    invocation = agent.invocation(request)
                    for dest in invocation.files:
                        _mount_point(dest)
                    spec = SandboxSpec(
                        command=invocation.argv,
                        workspace=dirs.root,
                        cwd=dirs.repo,
                        ro_binds=(checkout.mirror, *invocation.ro_binds),
                        env=invocation.env,
                        files=invocation.files,
                        egress=door.socket,
                        limits=Limits(
                            memory=self.settings.memory,
                            pids=self.settings.pids,
                            cpus=self.settings.cpus,
                            timeout=options.timeout or self.settings.job_timeout,
                        ),
                    )
                    job = self._move(job, JobState.RUNNING, listener=listener)
                    run, events, stopped = self._supervise(
                        job, agent, spec, listener, cancel, gateway, invocation.stdin
                    )
                    run = door.with_violations(run)
            finally:
                proxy.call(gateway.aclose())
        outcome = agent.outcome(events, None if run.reason == "killed" else run.exit_code)
        state, reason = _verdict(run, stopped, outcome)
        commit = self.git.commit(checkout, _commit_message(job))
        diff = self.git.diff(checkout)
        pushed = False
        if options.push and state is JobState.SUCCEEDED:
            from corral.secrets import CredentialStore

            self.git.push(checkout, job.repo, CredentialStore(self.settings.home).git_token(self.environ))
            pushed = True
        result = JobResult(
            is_error=state is not JobState.SUCCEEDED,
            reason=reason,
            summary=outcome.summary if reason == outcome.reason else f"{_STOPPED[reason]} {outcome.summary}".strip(),
            subtype=outcome.subtype,
            session_id=outcome.session_id,
            num_turns=outcome.num_turns,
            cost_usd=outcome.cost_usd,
            usage=gateway.usage,
            duration_ms=round(run.duration * 1000),
            exit_code=run.exit_code,
            branch=checkout.branch,
            commit=commit or checkout.base,
            diff=diff.text,
            files_changed=diff.files,
            pushed=pushed,
            usage_limit_resets_at=outcome.usage_limit_resets_at,
            violations=tuple(str(v) for v in run.violations),
        )
        return self._move(job, state, listener=listener, result=result, session_id=outcome.session_id)

    def _supervise(
        self,
        job: Job,
        agent: Agent,
        spec: SandboxSpec,
        listener: Listener,
        cancel: threading.Event,
        gateway: Gateway,
        stdin: bytes | None,
    ) -> tuple[RunResult, list[AgentEvent], str | None]:
        """Run the agent, logging each line as it arrives, under the idle, startup and cancel watchdogs."""
        events: list[AgentEvent] = []
        splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        watchdog = Watchdog(cancel, idle=self.settings.idle_timeout, startup=self.settings.startup_timeout)

        def record(stream: str, line: bytes) -> None:
            text = line.decode("utf-8", "replace")
            if stream == "stderr":
                self.store.append_event(job.id, "stderr", text)
                return
            self.store.append_event(job.id, "agent", text)
            for event in agent.parse(line):
                events.append(event)
                listener.agent(event, gateway.usage.total)

        def on_output(stream: str, chunk: bytes) -> None:
            watchdog.heard(started=stream == "stdout")
            for line in splitters[stream].feed(chunk):
                record(stream, line)

        with _stdin(stdin) as fd:
            run = self.sandbox.run(spec, on_output=on_output, stdin=fd, on_start=watchdog.watch)
        watchdog.stop()
        for stream, splitter in splitters.items():
            for line in splitter.flush():
                record(stream, line)
        return run, events, watchdog.fired

    def _agent(self, name: str) -> Agent:
        from corral.agents.claude_code import ClaudeCodeAgent

        return ClaudeCodeAgent(find_claude(self.settings))

    def _move(self, job: Job, state: JobState, *, listener: Listener | None = None, **changes: object) -> Job:
        job = self.store.update(job.id, state=state, **changes)
        self.store.append_event(job.id, "state", state.value)
        if listener is not None:
            listener.state(job)
        return job


_STOPPED = {
    "cancelled": "Cancelled.",
    "timeout": "Stopped at the job's time limit.",
    "idle_timeout": "Stopped: the agent printed nothing for too long.",
    "startup_timeout": "Stopped: the agent did not start in time.",
}


def _verdict(run: RunResult, stopped: str | None, outcome: Outcome) -> tuple[JobState, str]:
    """The job's end state and reason: a watchdog or the time limit first, then the agent's own result."""
    if stopped == "cancelled":
        return JobState.CANCELLED, "cancelled"
    if stopped is not None:
        return JobState.TIMED_OUT, stopped
    if run.reason == "timeout":
        return JobState.TIMED_OUT, "timeout"
    return (JobState.SUCCEEDED if outcome.succeeded else JobState.FAILED), outcome.reason


def _ended(reason: str, summary: str) -> JobResult:
    return JobResult(is_error=True, reason=reason, summary=summary)


def _commit_message(job: Job) -> str:
    first = job.prompt.strip().splitlines()[0] if job.prompt.strip() else "job"
    title = first if len(first) <= 60 else first[:57] + "..."
    return f"corral: {title}\n\nJob {job.id}, run by {job.agent}.\n"


@contextmanager
def _stdin(data: bytes | None) -> Iterator[int | None]:
    """An fd to read ``data`` from (of any size: an anonymous file, not a pipe), or ``None`` for /dev/null."""
    if data is None:
        yield None
        return
    fd = os.memfd_create("corral-stdin")
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


def _mount_point(dest: Path) -> None:
    """A file the agent needs in a system directory (``/etc/claude-code``) needs that directory on the host."""
    if dest.parent.is_relative_to("/etc") and not dest.parent.exists():
        dest.parent.mkdir(mode=0o755, parents=True)


def find_claude(settings: Settings) -> Path:
    """The Claude Code CLI: ``CORRAL_CLAUDE_BIN``, else the pinned one ``make`` installs, else ``claude`` on PATH."""
    from corral.errors import AgentError

    if settings.claude_bin:
        found = shutil.which(settings.claude_bin)
        if found is None:
            msg = f"CORRAL_CLAUDE_BIN names {settings.claude_bin!r}, which is not an executable; fix the setting."
            raise AgentError(msg)
        return Path(found)
    pinned = Path(__file__).resolve().parents[3] / "tools" / "claude-code" / "node_modules" / ".bin" / "claude"
    if os.access(pinned, os.X_OK):
        return pinned
    found = shutil.which("claude")
    if found is None:
        msg = "The Claude Code CLI is not installed; run `make claude`, or set CORRAL_CLAUDE_BIN to its path."
        raise AgentError(msg)
    return Path(found)
