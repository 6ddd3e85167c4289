"""Claude Code, run headless: ``claude -p PROMPT --output-format stream-json --verbose``.

Measured with the pinned CLI (2.1.197) against a stand-in API:

- ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1`` keeps every request on ``ANTHROPIC_BASE_URL``;
  without it the CLI calls api.anthropic.com directly, with the credential.
- A repository's ``.claude/settings.json`` ``env`` overrides the process environment, so
  ``ANTHROPIC_BASE_URL`` and the traffic switches are also set in the managed settings, which
  nothing in the repository can override. Their deny rules hold even in ``bypassPermissions``
  mode. The repository's hooks are left alone: they run inside the sandbox.
- A non-root user needs no ``IS_SANDBOX`` for ``bypassPermissions``.
- With ``-p`` a prompt argument is joined with whatever stdin holds (after waiting 3 s for it),
  and piped stdin is capped at 10 MiB: a prompt goes on stdin only when it cannot be an argument.
- Without ``projects[cwd].hasTrustDialogAccepted`` the CLI drops the repository's
  ``permissions.allow`` rules and complains on stderr; ``prepare`` seeds it.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from corral.agents.base import AgentRequest, Invocation, Outcome
from corral.agents.claude_stream import classify, parse_line
from corral.agents.events import AgentEvent
from corral.errors import AgentError, CredentialsError, UsageError
from corral.sandbox.spec import SANDBOX_HOME

__all__ = [
    "APPEND_PROMPT_FILE",
    "DEFAULT_DENY",
    "MANAGED_SETTINGS_PATH",
    "PERMISSION_MODES",
    "ClaudeCodeAgent",
    "build_argv",
    "build_env",
    "managed_settings",
    "resolve_cli",
    "seed_state",
]

MANAGED_SETTINGS_PATH: Final = Path("/etc/claude-code/managed-settings.json")
APPEND_PROMPT_FILE: Final = "corral-append-system-prompt.md"
STATE_FILE: Final = ".claude.json"
PERMISSION_MODES: Final = ("acceptEdits", "auto", "bypassPermissions", "default", "dontAsk", "plan")
CREDENTIAL_NAMES: Final = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN")
DEFAULT_DENY: Final = ("Bash(git push *)",)
"""Pushing is corral's job, on the host, with the bot token; the rule also matches a bare ``git push``."""
OFFLINE_ENV: Final = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
}
ARGV_PROMPT_LIMIT: Final = 100_000
"""Bytes of prompt passed as an argument; Linux refuses a single argument over 128 KiB."""
STDIN_PROMPT_LIMIT: Final = 10 * 1024 * 1024
"""The CLI's cap on piped stdin, in JavaScript characters (UTF-16 code units)."""
_STATE_READ_LIMIT: Final = 16 * 1024 * 1024
_MODEL = re.compile(r"[A-Za-z0-9][\w.:/@\[\]-]*", re.ASCII)


def resolve_cli(path: Path) -> Path:
    """The real executable behind ``path`` (npm's ``.bin/claude`` is a symlink to it).

    When npm ran without install scripts, ``bin/claude.exe`` is a stub and the binary sits in
    the platform package beside it (``@anthropic-ai/claude-code-linux-x64/claude``).
    """
    real = path.resolve()
    if not real.is_file():
        msg = f"The Claude Code CLI {path} does not exist; install it or set CORRAL_CLAUDE_BIN to its path."
        raise AgentError(msg)
    if _is_elf(real) or real.parent.name != "bin":
        return real
    for candidate in sorted(real.parent.parent.parent.glob("claude-code-*/claude")):
        if _is_elf(candidate):
            return candidate.resolve()
    return real


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _check(request: AgentRequest) -> None:
    """Refuse a request the CLI would misread, with a sentence that says the fix."""
    if not request.prompt.strip():
        msg = "The prompt is empty; say what the agent should do."
        raise UsageError(msg)
    if _js_length(request.prompt) > STDIN_PROMPT_LIMIT:
        msg = (
            f"The prompt is {len(request.prompt)} characters; Claude Code reads at most 10 MiB, "
            "so put the material in a file of the repository and name it in the prompt."
        )
        raise UsageError(msg)
    if request.permission_mode not in PERMISSION_MODES:
        msg = f"The permission mode {request.permission_mode!r} is unknown; use one of {', '.join(PERMISSION_MODES)}."
        raise UsageError(msg)
    if request.max_turns is not None and request.max_turns < 1:
        msg = f"max_turns is {request.max_turns}; give a number of turns of at least 1, or none for no limit."
        raise UsageError(msg)
    if request.max_budget_usd is not None and not 0 < request.max_budget_usd < math.inf:
        msg = f"max_budget_usd is {request.max_budget_usd}; give a positive amount of dollars, or none for no limit."
        raise UsageError(msg)
    if request.model is not None and not _MODEL.fullmatch(request.model):
        msg = f"The model name {request.model!r} is malformed; use an alias such as 'sonnet' or a full model id."
        raise UsageError(msg)
    if request.resume_session is not None:
        try:
            uuid.UUID(request.resume_session)
        except ValueError:
            msg = (
                f"The session to resume {request.resume_session!r} is not a session id "
                "(the UUID in the first run's init event)."
            )
            raise UsageError(msg) from None
    if not request.base_url.startswith(("http://", "https://")):
        msg = f"The API base URL {request.base_url!r} is not an http(s) URL; point it at the job's gateway."
        raise UsageError(msg)
    unknown = sorted(set(request.credential_env) - set(CREDENTIAL_NAMES))
    if unknown:
        msg = (
            f"credential_env names {', '.join(unknown)}, which is not a credential variable; "
            f"use one of {', '.join(CREDENTIAL_NAMES)}."
        )
        raise UsageError(msg)
    if not request.credential_env:
        msg = f"The agent has no credential; give it a placeholder in one of {', '.join(CREDENTIAL_NAMES)}."
        raise CredentialsError(msg)


def _js_length(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _prompt_on_stdin(prompt: str) -> bool:
    """Whether the prompt cannot be an argument: an option-like start, a NUL, or too long."""
    return prompt.startswith("-") or "\0" in prompt or len(prompt.encode()) > ARGV_PROMPT_LIMIT


def build_argv(binary: Path, request: AgentRequest) -> tuple[tuple[str, ...], bytes | None]:
    """The command line of ``request`` and the bytes for stdin (``None`` when the prompt is an argument)."""
    _check(request)
    stdin = request.prompt.encode() if _prompt_on_stdin(request.prompt) else None
    argv = [str(binary), "-p", *(() if stdin is not None else (request.prompt,))]
    argv += ["--output-format", "stream-json", "--verbose", "--permission-mode", request.permission_mode]
    if request.max_turns is not None:
        argv += ["--max-turns", str(request.max_turns)]
    if request.max_budget_usd is not None:
        argv += ["--max-budget-usd", repr(float(request.max_budget_usd))]
    if request.model is not None:
        argv += ["--model", request.model]
    if request.append_system_prompt is not None:
        argv += ["--append-system-prompt-file", str(request.config_dir / APPEND_PROMPT_FILE)]
    if request.resume_session is not None:
        argv += ["--resume", request.resume_session]
    return tuple(argv), stdin


def build_env(request: AgentRequest) -> dict[str, str]:
    """The whole environment of the CLI: private dirs, no outside traffic, the gateway and the placeholder."""
    _check(request)
    return {
        **request.env,
        "HOME": SANDBOX_HOME,
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "CLAUDE_CONFIG_DIR": str(request.config_dir),
        "CLAUDE_CODE_TMPDIR": str(request.tmp_dir),
        "TMPDIR": str(request.tmp_dir),
        **OFFLINE_ENV,
        "ANTHROPIC_BASE_URL": request.base_url,
        **request.credential_env,
    }


def managed_settings(request: AgentRequest, deny: Sequence[str] = DEFAULT_DENY) -> dict[str, Any]:
    """The policy at ``MANAGED_SETTINGS_PATH``: it outranks every settings file of the repository."""
    return {
        "permissions": {"defaultMode": request.permission_mode, "deny": list(deny)},
        "env": {**OFFLINE_ENV, "ANTHROPIC_BASE_URL": request.base_url},
        "skipDangerousModePermissionPrompt": True,
    }


def seed_state(existing: Mapping[str, Any], request: AgentRequest) -> dict[str, Any]:
    """The CLI's ``.claude.json`` with onboarding done and ``cwd`` trusted, keeping what was there."""
    state = dict(existing)
    state["hasCompletedOnboarding"] = True
    state.setdefault("theme", "dark")
    projects = state.get("projects")
    projects = dict(projects) if isinstance(projects, Mapping) else {}
    entry = projects.get(str(request.cwd))
    entry = dict(entry) if isinstance(entry, Mapping) else {}
    entry.update(hasTrustDialogAccepted=True, hasCompletedProjectOnboarding=True)
    projects[str(request.cwd)] = entry
    state["projects"] = projects
    key = request.credential_env.get("ANTHROPIC_API_KEY")
    if key:  # interactive sessions ask before using a key from the environment; it is only the placeholder
        responses = state.get("customApiKeyResponses")
        responses = dict(responses) if isinstance(responses, Mapping) else {}
        approved = [item for item in responses.get("approved") or () if isinstance(item, str)]
        if key[-20:] not in approved:
            approved.append(key[-20:])
        responses.update(approved=approved, rejected=list(responses.get("rejected") or ()))
        state["customApiKeyResponses"] = responses
    return state


def _read_state(path: Path) -> dict[str, Any]:
    """The existing state file, or ``{}`` if it is missing, not a regular file, a symlink, or not JSON."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > _STATE_READ_LIMIT:
            return {}
        try:
            data = json.loads(fh.read())
        except ValueError:
            return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """Replace ``path`` atomically, never writing through a symlink the agent may have left there."""
    tmp = path.with_name(f".{path.name}.corral-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ClaudeCodeAgent:
    """Anthropic's Claude Code CLI, in print mode with stream-json output."""

    name = "claude-code"

    def __init__(self, bin_path: Path, *, deny: Sequence[str] = DEFAULT_DENY) -> None:
        self.binary = resolve_cli(bin_path)
        self.deny = tuple(deny)

    def invocation(self, request: AgentRequest) -> Invocation:
        argv, stdin = build_argv(self.binary, request)
        settings = json.dumps(managed_settings(request, self.deny), indent=2).encode() + b"\n"
        return Invocation(
            argv=argv,
            env=build_env(request),
            files={MANAGED_SETTINGS_PATH: settings},
            ro_binds=(self.binary.parent,),
            stdin=stdin,
        )

    def prepare(self, request: AgentRequest, host_config_dir: Path) -> None:
        """Seed the state file and the appended system prompt; new files take the directory's owner."""
        _check(request)
        host_config_dir.mkdir(parents=True, exist_ok=True)
        info = host_config_dir.stat()
        owner = (info.st_uid, info.st_gid) if os.geteuid() == 0 else None
        state_path = host_config_dir / STATE_FILE
        state = seed_state(_read_state(state_path), request)
        _write(state_path, json.dumps(state, indent=2).encode() + b"\n", owner)
        append_path = host_config_dir / APPEND_PROMPT_FILE
        if request.append_system_prompt is not None:
            _write(append_path, request.append_system_prompt.encode(), owner)
        else:
            append_path.unlink(missing_ok=True)

    def parse(self, line: bytes) -> tuple[AgentEvent, ...]:
        return parse_line(line)

    def outcome(self, events: Sequence[AgentEvent], exit_code: int | None) -> Outcome:
        return classify(events, exit_code)
