"""The job model: states and their one transition rule, options, results, events.

Pure data, no I/O: every class is a frozen dataclass whose ``to_dict()`` is JSON-safe
(datetimes as ISO 8601 UTC strings ending in ``Z``, tuples as lists) and whose ``from_dict()``
reads it back.
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Self

from corral.errors import ConflictError, UsageError

__all__ = [
    "ENDED",
    "MAX_KEY",
    "TERMINAL",
    "Event",
    "Job",
    "JobOptions",
    "JobResult",
    "JobState",
    "Usage",
    "new_job",
    "next_state",
    "utc_now",
]


class JobState(enum.StrEnum):
    """Where a job is in its life; see ``next_state`` for the ways between them."""

    QUEUED = "queued"
    PREPARING = "preparing"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
"""The states a job never leaves (``interrupted`` is not one: the job may be queued again)."""

ENDED: frozenset[JobState] = TERMINAL | {JobState.INTERRUPTED}
"""The states in which no runner works on the job (an interrupted one waits to be queued again)."""

MAX_KEY = 200
"""The longest idempotency key."""

_NEXT: Mapping[JobState, tuple[JobState, ...]] = {
    JobState.QUEUED: (JobState.PREPARING, JobState.CANCELLED, JobState.FAILED, JobState.INTERRUPTED),
    JobState.PREPARING: (
        JobState.RUNNING,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.INTERRUPTED,
    ),
    JobState.RUNNING: (
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.INTERRUPTED,
    ),
    JobState.INTERRUPTED: (JobState.QUEUED, JobState.FAILED, JobState.CANCELLED),
}


def next_state(current: JobState, new: JobState) -> JobState:
    """``new`` if a job in ``current`` may move to it; otherwise raise ``ConflictError``."""
    allowed = _NEXT.get(current, ())
    if new in allowed:
        return new
    if current in TERMINAL:
        msg = f"Job state cannot go from {current} to {new}: the job has ended."
    else:
        choices = ", ".join(str(state) for state in allowed[:-1]) + f" or {allowed[-1]}"
        msg = f"Job state cannot go from {current} to {new}: from {current} it can go to {choices}."
    raise ConflictError(msg)


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        msg = f"The time {value.isoformat()} has no timezone; corral keeps every time in UTC."
        raise UsageError(msg)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value).astimezone(UTC)


def _plain(value: Any) -> Any:
    """``value`` as JSON-safe data."""
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)}
    return value


def _known(cls: type[Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` as a dict, refusing keys that are not fields of ``cls``."""
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        msg = f"{cls.__name__} has no field {unknown[0]!r}; its fields are: {', '.join(sorted(names))}."
        raise UsageError(msg)
    return dict(data)


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        msg = f"The option {name} must be a list of strings, not {value!r}."
        raise UsageError(msg)
    return tuple(value)


class _Record:
    """A frozen dataclass that turns into JSON-safe data and back; ``from_dict`` refuses unknown keys."""

    def to_dict(self) -> dict[str, Any]:
        return dict(_plain(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return cls(**_known(cls, data))


@dataclasses.dataclass(frozen=True)
class JobOptions(_Record):
    """How the agent of one job runs; ``None`` means the setting's default."""

    model: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    timeout: float | None = None
    """Wall-clock limit of the agent run in seconds."""
    allow_domains: tuple[str, ...] = ()
    """Domains the job may reach on top of the ones every job may reach."""
    permission_mode: str | None = None
    append_system_prompt: str | None = None
    push: bool = False
    """Whether to push the job branch to the remote when the job ends."""
    env: tuple[str, ...] = ()
    """``NAME=VALUE`` variables for the agent on top of the ones corral sets (which win)."""
    command: tuple[str, ...] = ()
    """The argv template of the ``generic`` agent; ``{prompt}`` in an item is replaced by the prompt."""

    def __post_init__(self) -> None:
        if self.max_turns is not None and (
            isinstance(self.max_turns, bool) or not isinstance(self.max_turns, int) or self.max_turns < 1
        ):
            msg = f"The option max_turns must be a whole number of 1 or more, not {self.max_turns!r}."
            raise UsageError(msg)
        for name in ("max_budget_usd", "timeout"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf")
            ):
                msg = f"The option {name} must be a number greater than 0, not {value!r}."
                raise UsageError(msg)
        for name in ("model", "permission_mode"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                msg = f"The option {name} must be a non-empty string or left out, not {value!r}."
                raise UsageError(msg)
        object.__setattr__(self, "allow_domains", _strings("allow_domains", self.allow_domains))
        object.__setattr__(self, "env", _strings("env", self.env))
        object.__setattr__(self, "command", _strings("command", self.command))
        for item in self.env:
            name, equals, _ = item.partition("=")
            if not equals or not name.isidentifier():
                msg = f"The variable {item.split('=')[0]!r} must be given as NAME=VALUE with NAME a plain name."
                raise UsageError(msg)

    def env_vars(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.env)


@dataclasses.dataclass(frozen=True)
class Usage(_Record):
    """Tokens an agent used, as the Messages API counts them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(*(getattr(self, field.name) + getattr(other, field.name) for field in dataclasses.fields(Usage)))


@dataclasses.dataclass(frozen=True)
class JobResult(_Record):
    """How a job ended. ``reason`` says why: ``completed``, ``agent_error``, ``usage_limit``,
    ``max_turns``, ``max_budget``, ``timeout``, ``idle_timeout``, ``startup_timeout``,
    ``cancelled``, ``interrupted``, ``crashed``, ``setup_failed``."""

    is_error: bool
    reason: str
    summary: str = ""
    subtype: str | None = None
    session_id: str | None = None
    num_turns: int | None = None
    cost_usd: float | None = None
    usage: Usage = Usage()
    duration_ms: int | None = None
    exit_code: int | None = None
    branch: str | None = None
    commit: str | None = None
    diff: str = ""
    files_changed: tuple[str, ...] = ()
    pushed: bool = False
    usage_limit_resets_at: datetime | None = None
    violations: tuple[str, ...] = ()
    """Egress and sandbox violations seen during the run, one sentence each."""
    base: str | None = None
    """The commit ``diff`` starts from (a follow-up's is its parent's)."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        values = _known(cls, data)
        values["usage"] = Usage.from_dict(values.get("usage") or {})
        values["files_changed"] = tuple(values.get("files_changed", ()))
        values["violations"] = tuple(values.get("violations", ()))
        values["usage_limit_resets_at"] = _time(values.get("usage_limit_resets_at"))
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Job(_Record):
    """One prompt run by one agent against one repository."""

    id: str
    prompt: str
    repo: str
    ref: str | None
    agent: str
    options: JobOptions
    state: JobState
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: str | None = None
    """Why the job failed, when corral itself (not the agent) could not run it."""
    session_id: str | None = None
    owner: str | None = None
    """The runner that claimed the job last (``host-pid``, or the id the runner was given)."""
    heartbeat_at: datetime | None = None
    """When the owner last said it is still running the job."""
    attempts: int = 0
    """How many times the job was started."""
    parent_id: str | None = None
    """The job this one follows up: it runs in the parent's checkout and resumes its session."""
    idempotency_key: str | None = None
    """The caller's key: submitting twice with it gives the same job."""

    @property
    def branch(self) -> str:
        """The branch the job's changes are committed on."""
        return f"corral/{self.id}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        values = _known(cls, data)
        values["options"] = JobOptions.from_dict(values.get("options") or {})
        values["state"] = JobState(values["state"])
        for name in ("created_at", "updated_at", "started_at", "finished_at", "heartbeat_at"):
            values[name] = _time(values.get(name))
        result = values.get("result")
        values["result"] = None if result is None else JobResult.from_dict(result)
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Event(_Record):
    """One entry of a job's append-only log. ``kind`` is ``state``, ``agent`` (one raw
    stream-json line, verbatim), ``stderr`` or ``note``; ``seq`` counts 1, 2, 3... per job."""

    job_id: str
    seq: int
    at: datetime
    kind: str
    data: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        values = _known(cls, data)
        values["at"] = _time(values["at"])
        return cls(**values)


def new_job(
    prompt: str,
    repo: str,
    *,
    ref: str | None = None,
    agent: str = "claude-code",
    options: JobOptions = JobOptions(),
    parent_id: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A new ``queued`` job with a fresh id (16 lowercase hex characters)."""
    if not prompt.strip():
        msg = "The prompt is empty; say what the agent should do."
        raise UsageError(msg)
    if not repo.strip():
        msg = "The repository is empty; give the URL of the repository the agent should work on."
        raise UsageError(msg)
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_KEY:
        msg = f"The idempotency key must be 1 to {MAX_KEY} characters, not {len(idempotency_key)}; send a shorter one."
        raise UsageError(msg)
    now = utc_now()
    return Job(
        id=secrets.token_hex(8),
        prompt=prompt,
        repo=repo,
        ref=ref,
        agent=agent,
        options=options,
        state=JobState.QUEUED,
        created_at=now,
        updated_at=now,
        parent_id=parent_id,
        idempotency_key=idempotency_key,
    )
