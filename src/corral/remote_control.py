"""A ``--remote-control`` session: what it reaches, what its CLI is given, and what it is refused.

Remote Control lets claude.ai and the Claude apps drive an interactive session. It needs a
claude.ai subscription login and Anthropic's own hosts, so such a session has no gateway: the
adopted login's entry is copied into the session's config dir (``claude_login``) and carried
back at the end, the CLI reaches ``REMOTE_CONTROL_HOSTS`` through corral's proxy, and its
environment loses the variables that would turn Remote Control off (see ``docs/sessions.md``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from corral.errors import UsageError

__all__ = [
    "REMOTE_API_URL",
    "REMOTE_CONTROL_HOSTS",
    "REMOTE_CONTROL_OFF",
    "adapt",
    "check",
    "login_in",
    "remote_env",
    "remote_managed_settings",
]

REMOTE_CONTROL_HOSTS: Final = ("api.anthropic.com:443", "platform.claude.com:443")
"""What a ``--remote-control`` session reaches besides the bottle's allow list, through the proxy:
the API (the model, the Remote Control bridge that claude.ai relays through, feature flags) and
the OAuth token endpoint (refreshing the login). The CLI 2.1.197 names both as its
``BASE_API_URL`` and ``TOKEN_URL``; nothing else is needed."""
REMOTE_API_URL: Final = "https://api.anthropic.com"
REMOTE_CONTROL_OFF: Final = (
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
    "DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
    "DISABLE_GROWTHBOOK",
)
"""Variables any value of which turns Remote Control off (they stop the feature-flag fetch)."""
_NOT_INSIDE: Final = (
    *REMOTE_CONTROL_OFF,
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
)
"""What a remote-control session's environment never has: the switches, a gateway, any other credential."""


def check(agent: str, env_names: tuple[str, ...], login: Path | None) -> None:
    """Refuse a remote-control session without an adopted, well-formed login, or whose agent forwards
    a variable that would turn Remote Control off or replace the login."""
    blocked = [name for name in env_names if name in _NOT_INSIDE]
    if blocked:
        msg = (
            f"The agent {agent!r} forwards {', '.join(blocked)}, which a remote-control session cannot "
            f"have (it turns Remote Control off or replaces the login); remove it from agents.{agent}.env "
            "or start without --remote-control."
        )
        raise UsageError(msg)
    from corral.claude_login import session_login

    session_login(login)


def login_in(
    home: Path, adopted: Path | None, config_dir: Path, stack: contextlib.ExitStack, notify: Callable[[str], None]
) -> None:
    """Copy the login adopted in ``adopted`` (the plan's) into ``config_dir``, and carry it back when
    ``stack`` closes (``notify`` hears how)."""
    from corral.claude_login import carry_back, session_login, write_session_login
    from corral.secrets import CredentialStore

    login = session_login(adopted)
    assert adopted is not None  # session_login refuses a session without one
    write_session_login(config_dir, login)
    stack.callback(lambda: notify(carry_back(CredentialStore(home), adopted, config_dir, login)))


def remote_env(env: Mapping[str, str]) -> dict[str, str]:
    """The CLI's environment in a remote-control session: the usual one less the variables that turn
    Remote Control off, a gateway's ``ANTHROPIC_BASE_URL`` and every credential variable (the login file
    is the credential); the other safe settings (no autoupdater, no error reports) stay."""
    return {name: value for name, value in env.items() if name not in _NOT_INSIDE}


def remote_managed_settings(managed: Mapping[str, Any]) -> dict[str, Any]:
    """The managed settings of a remote-control session: the same policy, its ``env`` less the switches,
    and ``ANTHROPIC_BASE_URL`` pinned to Anthropic's own API (which Remote Control accepts as first-party),
    so that no repository's settings can send the login's token to another host."""
    env = managed.get("env")
    kept = remote_env(env) if isinstance(env, Mapping) else {}
    return {**managed, "env": {**kept, "ANTHROPIC_BASE_URL": REMOTE_API_URL}}


def adapt(
    env: Mapping[str, str], files: Mapping[Path, bytes], managed_path: Path
) -> tuple[dict[str, str], dict[Path, bytes]]:
    """The CLI's environment and placed files of a normal session, made those of a remote-control one."""
    managed = remote_managed_settings(json.loads(files[managed_path]))
    return remote_env(env), {**files, managed_path: json.dumps(managed, indent=2).encode() + b"\n"}
