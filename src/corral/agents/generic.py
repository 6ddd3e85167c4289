"""Any agent CLI: a command-line template, plain-text output, and the exit code as the verdict.

Each template item may contain ``{prompt}``, replaced by the prompt as it is (one argument, never
through a shell). A template without ``{prompt}`` gets the prompt on stdin.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from corral.agents.base import AgentRequest, Invocation, Outcome, Reason
from corral.agents.events import AgentEvent, Text, clip
from corral.errors import UsageError
from corral.sandbox.spec import SANDBOX_HOME

__all__ = ["GenericAgent"]

PLACEHOLDER: Final = "{prompt}"
TAIL_LINES: Final = 10
"""Last output lines kept as the summary."""


class GenericAgent:
    """Runs ``argv_template`` with the prompt substituted; every output line is a ``Text`` event."""

    def __init__(self, argv_template: Sequence[str], name: str = "generic", *, ro_binds: Sequence[Path] = ()) -> None:
        if not argv_template or not argv_template[0]:
            msg = "The agent command is empty; give the program to run, e.g. ['aider', '--message', '{prompt}']."
            raise UsageError(msg)
        self.argv_template = tuple(argv_template)
        self.name = name
        self.ro_binds = tuple(ro_binds)
        """Host paths the program needs inside, read-only (its install directory when outside the system dirs)."""

    def invocation(self, request: AgentRequest) -> Invocation:
        if "\0" in request.prompt:
            msg = "The prompt contains a NUL character, which no command line can carry; remove it."
            raise UsageError(msg)
        argv = tuple(item.replace(PLACEHOLDER, request.prompt) for item in self.argv_template)
        in_argv = any(PLACEHOLDER in item for item in self.argv_template)
        env = {
            **request.env,
            "HOME": SANDBOX_HOME,
            "TERM": "dumb",
            "LANG": "C.UTF-8",
            "TMPDIR": str(request.tmp_dir),
            "ANTHROPIC_BASE_URL": request.base_url,
            **request.credential_env,
        }
        stdin = None if in_argv else request.prompt.encode()
        return Invocation(argv=argv, env=env, files={}, ro_binds=self.ro_binds, stdin=stdin)

    def prepare(self, request: AgentRequest, host_config_dir: Path) -> None:
        """Nothing to seed: a generic agent keeps its own state."""

    def parse(self, line: bytes) -> tuple[AgentEvent, ...]:
        return (Text(line.decode("utf-8", "replace").rstrip("\r")),)

    def outcome(self, events: Sequence[AgentEvent], exit_code: int | None) -> Outcome:
        lines = [e.line for e in events if isinstance(e, Text) and e.line.strip()]
        tail = clip("\n".join(lines[-TAIL_LINES:]), 4000)
        if exit_code == 0:
            return Outcome(True, "completed", tail or f"{self.name} finished and printed nothing.")
        reason: Reason
        if exit_code is None:
            reason, what = "crashed", "was lost without an exit code"
        elif not lines:
            reason, what = "no_output", f"exited with code {exit_code}"
        else:
            reason, what = "agent_error", f"exited with code {exit_code}"
        head = f"{self.name} {what}" + ("." if not tail else ":")
        return Outcome(False, reason, f"{head}\n{tail}" if tail else head)
