"""The request and response bodies of the API, as pydantic models (the edges; frozen dataclasses inside).

Request bodies of the ``/v1/`` API forbid unknown fields. The seed's ``POST /execute`` body
ignores them: the old runner's clients send what they always sent, and a field corral does not
know must not break them (see ``docs/api.md``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Credential",
    "DiffSummary",
    "EgressRequest",
    "ErrorBody",
    "ErrorResponse",
    "ExecuteRequest",
    "ExecuteResponse",
    "Health",
    "Healthz",
    "JobList",
    "JobRequest",
    "JobView",
    "MessageRequest",
    "OAuthStatus",
    "Ready",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(_Strict):
    code: str = Field(description="A stable machine-readable code: `not_found`, `conflict`, `unauthorized`...")
    message: str = Field(description="A sentence that names the bad value and says the fix.")


class ErrorResponse(_Strict):
    """The one shape of every error the API answers."""

    error: ErrorBody


# -- the seed contract ---------------------------------------------------------------------------


class ExecuteRequest(BaseModel):
    """``POST /execute``, as the old runner's clients send it; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, description="What the agent should do.")
    repo_url: str = Field(min_length=1, description="The git repository to work on.")
    timeout_ms: int | None = Field(default=None, gt=0, description="Wall-clock limit of the agent in milliseconds.")


class DiffSummary(_Strict):
    files_changed: list[str]
    insertions: int
    deletions: int


class ExecuteResponse(_Strict):
    """How the job of ``POST /execute`` ended."""

    job_id: str
    state: str
    success: bool
    result: str = Field(description="The agent's final text, or the error in its words.")
    reason: str | None
    branch: str | None
    commit: str | None
    diff_summary: DiffSummary
    cost_usd: float | None
    usage: dict[str, int]
    duration_ms: int | None
    error: str | None


class Credential(_Strict):
    configured: bool
    expired: bool
    expires_at: str | None
    hours_remaining: float | None


class Health(_Strict):
    status: Literal["healthy", "degraded"]
    timestamp: str
    oauth: Credential


class OAuthStatus(Credential):
    kind: str | None
    source: str | None
    error: str | None = Field(description="Why the credential is not usable, as a sentence; null when it is.")


# -- health of the runner ------------------------------------------------------------------------


class Healthz(_Strict):
    """What Coder's metadata scripts read."""

    status: Literal["ok", "draining"]
    runner_id: str
    version: str
    capacity: int
    active_sessions: int
    draining: bool
    last_poll_age_ms: int


class Ready(_Strict):
    status: Literal["ready"]


# -- the jobs API --------------------------------------------------------------------------------


class JobRequest(_Strict):
    """``POST /v1/jobs``: every option of ``corral run``."""

    prompt: str = Field(min_length=1)
    repo: str = Field(min_length=1, description="The git repository (URL).")
    ref: str | None = Field(default=None, description="Branch, tag or commit (default: the remote's HEAD).")
    agent: str = Field(default="claude-code", description="`claude-code` or `generic` (with `command`).")
    model: str | None = None
    max_turns: int | None = Field(default=None, ge=1)
    max_budget_usd: float | None = Field(default=None, gt=0)
    timeout: float | str | None = Field(default=None, description="Seconds, or a duration such as `30m`.")
    allow_domains: list[str] = Field(default_factory=list)
    push: bool = False
    env: list[str] = Field(default_factory=list, description="`NAME=VALUE` items for the agent's environment.")
    command: list[str] = Field(default_factory=list, description="The generic agent's argv template.")


class MessageRequest(_Strict):
    """``POST /v1/jobs/{id}/messages``: a follow-up prompt in the job's session."""

    prompt: str = Field(min_length=1)


class EgressRequest(_Strict):
    """``PATCH /v1/jobs/{id}/egress``: the job's allowlist from now on."""

    allow: list[str]


class JobView(BaseModel):
    """A job as ``Job.to_dict()`` gives it (``docs/jobs.md`` describes its ``result``)."""

    model_config = ConfigDict(extra="allow")

    id: str
    prompt: str
    repo: str
    ref: str | None
    agent: str
    options: dict[str, Any]
    state: str
    created_at: str
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    session_id: str | None = None


class JobList(_Strict):
    jobs: list[JobView]
    next_offset: int | None = Field(description="The `offset` of the next page; null on the last one.")
