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

import contextlib
import dataclasses
import os
import shutil
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from corral.agents.base import Agent, AgentRequest, Outcome
from corral.agents.events import AgentEvent, LineSplitter
from corral.errors import ConflictError, CorralError, UsageError
from corral.gitcache import Checkout, GitCache, check_ref, check_url, mask_url
from corral.jobs.models import Job, JobOptions, JobResult, JobState, Usage, new_job, utc_now
from corral.jobs.store import JobStore
from corral.runner.heartbeat import HEARTBEAT, Heartbeat
from corral.runner.watchdog import Watchdog
from corral.sandbox.base import SandboxBackend
from corral.sandbox.spec import Limits, RunResult, SandboxSpec
from corral.settings import Settings

if TYPE_CHECKING:
    from corral.egress.door import Door
    from corral.egress.gateway import Gateway
    from corral.egress.thread import ProxyThread

__all__ = ["JobDirs", "JobRunner", "Listener", "default_owner", "find_claude"]

AGENTS = ("claude-code", "generic")


def default_owner() -> str:
    """This process as a job owner: ``<hostname>-<pid>``."""
    return f"{socket.gethostname()}-{os.getpid()}"


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
        owner: str | None = None,
        heartbeat: float = HEARTBEAT,
    ) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner or default_owner()
        """Who claims the jobs this runner runs (stored as ``Job.owner``)."""
        self.heartbeat = Heartbeat(store, heartbeat)
        self.environ = os.environ if environ is None else environ
        if sandbox is None:
            from corral.sandbox.bwrap import BwrapSandbox

            sandbox = BwrapSandbox(settings)
        self.sandbox = sandbox
        self.git = GitCache(
            settings.home / "git",
            allow_local=settings.git_allow_local,
            author=settings.git_author,
            refresh_interval=settings.git_refresh_interval,
        )
        self._cancels: dict[str, threading.Event] = {}
        self._interrupted: set[str] = set()
        self._doors: dict[str, tuple[Door, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def submit(
        self,
        prompt: str,
        repo: str,
        *,
        ref: str | None = None,
        agent: str = "claude-code",
        options: JobOptions | None = None,
        parent_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Check the input and store the job as ``queued``; nothing runs yet.

        With an ``idempotency_key`` already stored, the job stored with it is returned instead.
        """
        check_url(repo, allow_local=self.settings.git_allow_local)
        if ref is not None:
            check_ref(ref)
        options = options or JobOptions()
        check_agent(agent, options)
        if options.allow_domains:
            from corral.egress.policy import Policy

            Policy(allow=options.allow_domains)  # a bad pattern is refused before the job is stored
        job = new_job(
            prompt, repo, ref=ref, agent=agent, options=options, parent_id=parent_id, idempotency_key=idempotency_key
        )
        return self.store.add(job, log=(("state", job.state.value),))

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

    def interrupt(self, job_id: str) -> bool:
        """Stop a job this runner is running, as ``interrupted`` (its log and checkout kept); whether it was running."""
        with self._lock:
            running = self._cancels.get(job_id)
            if running is None:
                return False
            self._interrupted.add(job_id)
        running.set()
        return True

    def running(self) -> list[str]:
        """The ids of the jobs this runner is running now."""
        with self._lock:
            return list(self._cancels)

    def set_egress(self, job_id: str, allow: Sequence[str]) -> Job:
        """Replace the allowlist of a job running here, live, and store it in the job's options."""
        from corral.egress.policy import Policy

        policy = Policy(allow=allow)  # a bad pattern is refused before anything changes
        with self._lock:
            found = self._doors.get(job_id)
        if found is None:
            job = self.store.get(job_id)
            why = "it is not running" if job.state is not JobState.RUNNING else "it was started without network"
            msg = f"The allowlist of job {job_id!r} cannot change now: {why}; start a new job with allow_domains."
            raise ConflictError(msg)
        door, always = found
        if door.endpoint is None:
            msg = f"The egress door of job {job_id!r} is closed; the job is ending."
            raise ConflictError(msg)
        door.endpoint.set_policy(Policy(allow=(*policy.allow, *always)))
        job = self.store.get(job_id)
        job = self.store.update(job_id, options=dataclasses.replace(job.options, allow_domains=tuple(allow)))
        self.store.append_event(job_id, "note", f"egress allowlist set to: {', '.join(allow) or '(nothing)'}")
        return job

    def run(self, job_id: str, listener: Listener | None = None) -> Job:
        """Run a job to its end and return it as stored: a ``queued`` one, or one this runner claimed."""
        listener = listener or Listener()
        with self._lock:
            cancel = self._cancels.setdefault(job_id, threading.Event())
        job = self.store.get(job_id)
        try:
            with self.heartbeat.beating(job_id):
                if job.state is JobState.PREPARING and job.owner == self.owner:
                    listener.state(job)  # the claim moved it and logged the move
                else:
                    job = self._move(
                        job,
                        JobState.PREPARING,
                        listener=listener,
                        owner=self.owner,
                        heartbeat_at=utc_now(),
                        attempts=job.attempts + 1,
                    )
                with self._mounted(job):
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
            with self._lock:
                self._cancels.pop(job_id, None)
                self._interrupted.discard(job_id)

    @contextmanager
    def _mounted(self, job: Job) -> Iterator[None]:
        """Unmount the job's checkout when the job is done with it (an overlay one is mounted while in use)."""
        try:
            yield
        finally:
            self.git.detach(self.dirs(self._root(job).id).repo)

    def _run(self, job: Job, listener: Listener, cancel: threading.Event) -> Job:
        from corral.egress.door import Door
        from corral.egress.policy import Policy

        dirs = self.dirs(self._root(job).id)
        for directory in (dirs.root, dirs.config, dirs.tmp):
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        checkout, resume = self._checkout(job, dirs)
        agent = self._agent(job)
        options = job.options
        with contextlib.ExitStack() as stack:
            door: Door | None = None
            gateway: Gateway | None = None
            if job.agent != "generic" or options.allow_domains:  # no network at all when nothing is allowed
                from corral.egress.thread import ProxyThread

                proxy = stack.enter_context(ProxyThread())
                gateway = self._gateway(job, proxy, stack)
                always = () if gateway is None else (gateway.url.removeprefix("http://"),)
                policy = Policy(allow=(*options.allow_domains, *always))
                door = stack.enter_context(Door(self.settings.runtime, policy, proxy=proxy, name=f"job-{job.id}"))
                with self._lock:
                    self._doors[job.id] = (door, always)
                stack.callback(self._forget_door, job.id)
            request = AgentRequest(
                prompt=job.prompt,
                cwd=dirs.repo,
                config_dir=dirs.config,
                tmp_dir=dirs.tmp,
                base_url="" if gateway is None else gateway.url,
                credential_env={} if gateway is None else {gateway.credential.env_name: gateway.placeholder.reveal()},
                model=options.model,
                max_turns=options.max_turns,
                max_budget_usd=options.max_budget_usd,
                permission_mode=options.permission_mode or self.settings.permission_mode,
                append_system_prompt=options.append_system_prompt,
                resume_session=resume,
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
                egress=None if door is None else door.socket,
                limits=Limits(
                    memory=self.settings.memory,
                    pids=self.settings.pids,
                    cpus=self.settings.cpus,
                    timeout=options.timeout or self.settings.job_timeout,
                ),
            )
            job = self._move(job, JobState.RUNNING, listener=listener)
            run, events, stopped = self._supervise(job, agent, spec, listener, cancel, gateway, invocation.stdin)
            if door is not None:
                run = door.with_violations(run)
        if stopped == "cancelled" and job.id in self._interrupted:
            stopped = "interrupted"
        outcome = agent.outcome(events, None if run.reason == "killed" else run.exit_code)
        state, reason = _verdict(run, stopped, outcome)
        commit, diff = self.git.finish(checkout, _commit_message(job))
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
            usage=Usage() if gateway is None else gateway.usage,
            duration_ms=round(run.duration * 1000),
            exit_code=run.exit_code,
            branch=checkout.branch,
            commit=commit or checkout.base,
            diff=diff.text,
            files_changed=diff.files,
            pushed=pushed,
            usage_limit_resets_at=outcome.usage_limit_resets_at,
            violations=tuple(str(v) for v in run.violations),
            base=checkout.base,
        )
        return self._move(job, state, listener=listener, result=result, session_id=outcome.session_id)

    def _supervise(
        self,
        job: Job,
        agent: Agent,
        spec: SandboxSpec,
        listener: Listener,
        cancel: threading.Event,
        gateway: Gateway | None,
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
                listener.agent(event, 0 if gateway is None else gateway.usage.total)

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

    def _root(self, job: Job) -> Job:
        """The first job of a chain of follow-ups: the one whose directory they all share."""
        while job.parent_id is not None:
            job = self.store.get(job.parent_id)
        return job

    def _checkout(self, job: Job, dirs: JobDirs) -> tuple[Checkout, str | None]:
        """The job's checkout and the session to resume: the parent's for a follow-up, else a fresh one."""
        if job.parent_id is not None:
            parent = self.store.get(job.parent_id)
            if parent.result is None or parent.result.branch is None or not dirs.repo.is_dir():
                msg = f"The job {parent.id!r} that job {job.id!r} follows up left no checkout to continue in."
                raise ConflictError(msg)
            base = parent.result.base or parent.result.commit or ""
            self.store.append_event(
                job.id, "note", f"continuing in the checkout of {parent.id} on {parent.result.branch}"
            )
            checkout = Checkout(dirs.repo, parent.result.branch, base, self.git.mirror(job.repo))
            self.git.attach(checkout.path)
            return checkout, parent.session_id
        if dirs.repo.exists():  # an earlier attempt was interrupted: start again from a clean checkout
            self.store.append_event(job.id, "note", "removing the checkout of an earlier attempt")
            self.git.remove(Checkout(dirs.repo, job.branch, "", dirs.repo))
        self.store.append_event(job.id, "note", f"checking out {mask_url(job.repo)} {job.ref or '(default branch)'}")
        return self.git.checkout(job.repo, job.ref, job.id, dirs.repo), None

    def _gateway(self, job: Job, proxy: ProxyThread, stack: contextlib.ExitStack) -> Gateway | None:
        """The API gateway holding the real credential, for agents that call the Anthropic API; closed by ``stack``."""
        if job.agent == "generic":
            return None
        from corral.egress.gateway import Gateway
        from corral.secrets import resolve_credential

        gateway = Gateway(self.settings.anthropic_base_url, resolve_credential(self.settings.home, self.environ))
        proxy.call(gateway.start())
        stack.callback(lambda: proxy.call(gateway.aclose()))
        return gateway

    def _forget_door(self, job_id: str) -> None:
        with self._lock:
            self._doors.pop(job_id, None)

    def _agent(self, job: Job) -> Agent:
        if job.agent == "generic":
            from corral.agents.generic import GenericAgent

            return GenericAgent(job.options.command)
        from corral.agents.claude_code import ClaudeCodeAgent

        return ClaudeCodeAgent(find_claude(self.settings))

    def _move(self, job: Job, state: JobState, *, listener: Listener | None = None, **changes: object) -> Job:
        job = self.store.update(job.id, state=state, log=(("state", state.value),), **changes)
        if listener is not None:
            listener.state(job)
        return job


def check_agent(agent: str, options: JobOptions) -> None:
    """Refuse an unknown agent, a generic one without a command, a command for any other."""
    if agent not in AGENTS:
        msg = f"The agent {agent!r} is unknown; choose one of: {', '.join(AGENTS)}."
        raise UsageError(msg)
    if agent == "generic" and not options.command:
        msg = "The generic agent needs its command line in the option command, e.g. ['aider', '--message', '{prompt}']."
        raise UsageError(msg)
    if agent != "generic" and options.command:
        msg = f"The option command is for the generic agent only; drop it, or choose 'generic' instead of {agent!r}."
        raise UsageError(msg)


_STOPPED = {
    "cancelled": "Cancelled.",
    "interrupted": "Interrupted: corral was stopping.",
    "timeout": "Stopped at the job's time limit.",
    "idle_timeout": "Stopped: the agent printed nothing for too long.",
    "startup_timeout": "Stopped: the agent did not start in time.",
}


def _verdict(run: RunResult, stopped: str | None, outcome: Outcome) -> tuple[JobState, str]:
    """The job's end state and reason: a watchdog or the time limit first, then the agent's own result."""
    if stopped == "cancelled":
        return JobState.CANCELLED, "cancelled"
    if stopped == "interrupted":
        return JobState.INTERRUPTED, "interrupted"
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
