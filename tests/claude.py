"""The real Claude Code CLI in tests: where it is, a clean offline environment, one run.

The environment is the one measured in ``research/claude-code-cli-offline.md``: nothing of the
surrounding session (keys, proxies, ``CLAUDECODE``) leaks in, ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``
keeps the CLI from calling anything but ``ANTHROPIC_BASE_URL``, and its config, home and
temporary files stay under a scratch directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.tools import IN_CI

__all__ = ["ClaudeRun", "claude_bin", "offline_env", "run_claude"]

ROOT = Path(__file__).resolve().parent.parent


def claude_bin() -> Path:
    """``CORRAL_CLAUDE_BIN``, else the pinned CLI the Makefile installs; fails in CI when missing, else skips."""
    named = os.environ.get("CORRAL_CLAUDE_BIN")
    path = Path(named) if named else ROOT / "tools" / "claude-code" / "node_modules" / ".bin" / "claude"
    if not path.exists():
        if IN_CI:
            pytest.fail(f"the Claude Code CLI is not at {path}; `make test` must install it (CI=true never skips)")
        pytest.skip(f"the Claude Code CLI is not at {path}")
    return path


def offline_env(base_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The whole environment of an offline CLI run against ``base_url``, with ``home`` as its scratch.

    ``extra`` adds the credential (``ANTHROPIC_API_KEY="..."``) and anything else (``IS_SANDBOX="1"``).
    """
    config, tmp = home / "config", home / "tmp"
    config.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "CLAUDE_CONFIG_DIR": str(config),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        "TMPDIR": str(tmp),
        "ANTHROPIC_BASE_URL": base_url,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        **extra,
    }


@dataclasses.dataclass(frozen=True)
class ClaudeRun:
    """One finished ``claude -p`` run: its exit code, its stream-json events, its stderr."""

    returncode: int
    events: list[dict[str, Any]]
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The ``result`` event (the run's last word); fails the test when there is none."""
        found = [event for event in self.events if event.get("type") == "result"]
        assert found, f"the CLI printed no result event (exit {self.returncode}); stderr: {self.stderr[-2000:]}"
        return found[-1]


def run_claude(prompt: str, *, cwd: Path, env: dict[str, str], timeout: float = 60.0) -> ClaudeRun:
    """Run ``claude -p PROMPT`` with stream-json output and skipped permissions, stdin from /dev/null."""
    argv = [str(claude_bin()), "-p", prompt, "--output-format", "stream-json", "--verbose"]
    argv.append("--dangerously-skip-permissions")
    done = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
    )
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return ClaudeRun(done.returncode, events, done.stderr)
