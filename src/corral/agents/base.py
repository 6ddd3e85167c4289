"""The shape every agent has: what it is asked (``AgentRequest``), how it is run (``Invocation``),
how it ended (``Outcome``), and the ``Agent`` protocol that ties them to its typed events.

The runner builds an ``Invocation`` from a request, runs it in a sandbox, feeds every stdout
line to ``parse`` as it arrives (keeping the raw line verbatim), and asks ``outcome`` at the end
with all the events in order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, Protocol, get_args

from corral.jobs.models import Usage

if TYPE_CHECKING:
    from corral.agents.events import AgentEvent

__all__ = ["REASONS", "Agent", "AgentRequest", "Invocation", "Outcome", "Reason"]

Reason = Literal[
    "completed",
    "agent_error",
    "api_error",
    "usage_limit",
    "max_turns",
    "max_budget",
    "interrupted",
    "crashed",
    "no_output",
]
"""Why a run ended. ``interrupted``: stopped by SIGINT/SIGTERM before its result (``--resume`` continues it)."""

REASONS: Final[tuple[str, ...]] = get_args(Reason)


@dataclasses.dataclass(frozen=True)
class AgentRequest:
    """One prompt for an agent. Paths are as seen inside the sandbox (host paths bound at the same path)."""

    prompt: str
    cwd: Path
    config_dir: Path
    """The agent's private state (Claude Code's ``CLAUDE_CONFIG_DIR``); writable inside."""
    tmp_dir: Path
    base_url: str
    """Where the agent's API requests go: the job's gateway, reached through the sandbox relay."""
    credential_env: Mapping[str, str]
    """The placeholder credential, e.g. ``{"ANTHROPIC_API_KEY": "<placeholder>"}``; never the real one."""
    model: str | None = None
    max_turns: int | None = None
    max_budget_usd: float | None = None
    permission_mode: str = "bypassPermissions"
    append_system_prompt: str | None = None
    resume_session: str | None = None
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Extra variables for the agent (``CLAUDE_CODE_MAX_RETRIES``...); the ones corral sets win."""
    """The session id of an earlier run on the same job, to continue it with this prompt."""


@dataclasses.dataclass(frozen=True)
class Invocation:
    """How to start an agent in a sandbox: nothing is inherited that is not named here."""

    argv: tuple[str, ...]
    env: dict[str, str]
    files: Mapping[Path, bytes]
    """Read-only files the sandbox places at these paths inside (e.g. Claude Code's managed settings)."""
    ro_binds: tuple[Path, ...]
    """Host paths the agent needs visible read-only at the same path (the CLI's real directory)."""
    stdin: bytes | None = None
    """Bytes to write to the agent's stdin, then close it; ``None`` means an empty stdin (``/dev/null``)."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How an agent run ended, decided from its events and exit code."""

    succeeded: bool
    reason: Reason
    summary: str
    """One paragraph for people: the agent's answer, or what went wrong."""
    subtype: str | None = None
    session_id: str | None = None
    num_turns: int | None = None
    cost_usd: float | None = None
    """The agent's own estimate of what the run cost, not billing data."""
    usage: Usage = dataclasses.field(default_factory=Usage)
    duration_ms: int | None = None
    usage_limit_resets_at: datetime | None = None


class Agent(Protocol):
    """An agent CLI corral can run. Implementations: ``ClaudeCodeAgent``, ``GenericAgent``."""

    name: str

    def invocation(self, request: AgentRequest) -> Invocation:
        """The command line, environment and files that run ``request``; pure, starts nothing."""
        ...

    def prepare(self, request: AgentRequest, host_config_dir: Path) -> None:
        """Seed ``host_config_dir`` (bound at ``request.config_dir`` inside) before the run."""
        ...

    def parse(self, line: bytes) -> tuple[AgentEvent, ...]:
        """The events of one stdout line (without its newline), in order; never raises on bad output."""
        ...

    def outcome(self, events: Sequence[AgentEvent], exit_code: int | None) -> Outcome:
        """How the run ended; ``exit_code`` is ``None`` when the process was not reaped (killed, lost)."""
        ...
