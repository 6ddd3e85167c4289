"""``corral start --remote-control`` for real, in the bubblewrap sandbox, with a stand-in for the CLI.

The real CLI would call api.anthropic.com (no test sends traffic anywhere but 127.0.0.1), so
``CORRAL_CLAUDE_BIN`` names a small Python script instead. It reports from inside what it was given
(its argv, the login file and its mode, the variables that must be absent, the managed settings,
whether the host's login is visible) and then does what the CLI does on a refresh: it rewrites the
login, or, for the hostile cases, leaves something that is not a login. The adopted login is made
up (``sk-ant-oat01-`` plus random text), never a real credential.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from secrets import token_urlsafe
from typing import Any

import pytest

from corral.remote_control import REMOTE_API_URL, REMOTE_CONTROL_OFF
from tests.integration.test_start import ROOT, assert_clean, launch, start_argv, tmux, wait_for
from tests.tools import IN_CI

__all__ = ["tmux"]  # the fixture, shared with test_start

pytestmark = pytest.mark.sandbox

ABSENT = (
    *REMOTE_CONTROL_OFF,
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "CLAUDE_CODE_OAUTH_TOKEN",
)

STANDIN = """\
#!{python}
import json, os, sys
path = os.path.join(os.environ["CLAUDE_CONFIG_DIR"], ".credentials.json")
data = json.load(open(path))
info = os.stat(path)
managed = json.load(open("/etc/claude-code/managed-settings.json"))
report = {{
    "argv": sys.argv[1:],
    "login": data,
    "mode": info.st_mode & 0o777,
    "owned": info.st_uid == os.getuid(),
    "set": [name for name in {absent!r} if name in os.environ],
    "managed_env": managed["env"],
    "host_login_visible": os.path.exists({host_login!r}),
}}
print("RC-REPORT " + json.dumps(report))
mode = {mode!r}
if mode == "refresh":
    entry = data["claudeAiOauth"]
    entry.update(accessToken={access!r}, refreshToken={refresh!r}, expiresAt=entry["expiresAt"] + 3600000)
    entry["injected"] = "not copied back"
    data["mcpOAuth"] = {{"evil": {{"accessToken": "x"}}}}
    with open(path + ".new", "w") as fh:
        json.dump(data, fh)
    os.replace(path + ".new", path)
elif mode == "garbage":
    with open(path, "w") as fh:
        json.dump({{"claudeAiOauth": {{"accessToken": 5, "refreshToken": [], "expiresAt": "soon"}}}}, fh)
elif mode == "symlink":
    os.unlink(path)
    os.symlink("/etc/hostname", path)
print("RC-DONE")
"""


def joined(tmux: list[str]) -> str:
    """The screen with wrapped lines joined (the report line is long)."""
    done = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-t", "s"], capture_output=True, text=True, check=True)
    return done.stdout


def report_of(tmux: list[str]) -> dict[str, Any]:
    wait_for(tmux, "RC-DONE")
    line = next(row for row in joined(tmux).splitlines() if row.startswith("RC-REPORT "))
    report: dict[str, Any] = json.loads(line.removeprefix("RC-REPORT "))
    return report


def sandbox_python() -> str:
    """The system's python3, which the sandbox sees (a virtualenv's may live in a hidden home)."""
    path = "/usr/bin/python3"
    if not os.access(path, os.X_OK):
        if IN_CI:
            pytest.fail(f"{path} is missing; the stand-in CLI needs the system python3 (CI=true never skips)")
        pytest.skip(f"{path} is missing")
    return path


def made_up_login(directory: Path) -> dict[str, Any]:
    """A made-up adopted login (with an MCP token beside it that must stay on the host)."""
    data = {
        "claudeAiOauth": {
            "accessToken": "sk-ant-oat01-" + token_urlsafe(24),
            "refreshToken": "sk-ant-ort01-" + token_urlsafe(24),
            "expiresAt": int(time.time() * 1000) + 3600 * 1000,
            "scopes": ["user:inference", "user:profile", "user:sessions:claude_code"],
            "subscriptionType": "max",
            "rateLimitTier": "default_claude_max_20x",
        },
        "mcpOAuth": {"docs": {"accessToken": "mcp-" + token_urlsafe(12)}},
    }
    directory.mkdir(mode=0o700)
    path = directory / ".credentials.json"
    path.write_text(json.dumps(data))
    path.chmod(0o600)
    return data


def setup(tmp_path: Path, mode: str, fresh: tuple[str, str] = ("", "")) -> tuple[Path, dict[str, str], Path]:
    """The project, the environment of ``corral start`` and the adopted login's directory."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text('[agents.coder]\nbottle = "dev"\n\n[bottles.dev]\nallow = ["pypi.org"]\n')
    login = tmp_path / "login"
    made_up_login(login)
    standin = tmp_path / "standin" / "claude"
    standin.parent.mkdir()
    text = STANDIN.format(
        python=sandbox_python(),
        absent=ABSENT,
        host_login=str(login),
        mode=mode,
        access=fresh[0],
        refresh=fresh[1],
    )
    standin.write_text(text)
    standin.chmod(0o755)
    env = {
        "CORRAL_HOME": str(tmp_path / "home"),
        "CORRAL_CLAUDE_BIN": str(standin),
        "PYTHONPATH": str(ROOT / "src"),
    }
    adopted = subprocess.run(
        [str(Path(sys.executable).parent / "corral"), "auth", "import-claude-dir", str(login)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert adopted.returncode == 0, adopted.stderr
    return project, env, login


def test_the_session_runs_on_the_copied_login_and_its_refresh_comes_back(tmp_path: Path, tmux: list[str]) -> None:
    fresh = ("sk-ant-oat01-" + token_urlsafe(24), "sk-ant-ort01-" + token_urlsafe(24))
    project, env, login = setup(tmp_path, "refresh", fresh)
    host_file = login / ".credentials.json"
    given = json.loads(host_file.read_text())
    launch(tmux, project, env, "coder", "--yes", "--remote-control")
    plan = wait_for(tmux, "remote control:")
    assert "ON: the session uses your claude.ai login" in plan
    report = report_of(tmux)
    argv = report["argv"]
    assert argv[argv.index("--remote-control") + 1] == "coder"
    assert report["login"] == {"claudeAiOauth": given["claudeAiOauth"]}  # the login entry, no MCP token
    assert report["mode"] == 0o600
    assert report["owned"] is True
    assert report["set"] == []
    assert report["managed_env"]["ANTHROPIC_BASE_URL"] == REMOTE_API_URL
    assert not set(REMOTE_CONTROL_OFF) & set(report["managed_env"])
    assert report["host_login_visible"] is False
    shown = wait_for(tmux, "CORRAL-EXIT=")
    assert "CORRAL-EXIT=0" in shown
    assert "carried it back to" in joined(tmux)
    back = json.loads(host_file.read_text())
    entry = back["claudeAiOauth"]
    assert (entry["accessToken"], entry["refreshToken"]) == fresh
    assert entry["expiresAt"] == given["claudeAiOauth"]["expiresAt"] + 3600 * 1000
    assert "injected" not in entry
    assert back["mcpOAuth"] == given["mcpOAuth"]  # the host's own entries stay, nothing else comes in
    assert stat.S_IMODE(host_file.stat().st_mode) == 0o600
    home = Path(env["CORRAL_HOME"])
    assert list(home.rglob(".credentials.json")) == []  # the copy went with the session
    assert_clean(home)


@pytest.mark.parametrize("mode", ["garbage", "symlink"])
def test_a_bad_login_left_by_the_session_is_refused(tmp_path: Path, tmux: list[str], mode: str) -> None:
    project, env, login = setup(tmp_path, mode)
    before = (login / ".credentials.json").read_bytes()
    launch(tmux, project, env, "coder", "--yes", "--remote-control")
    report_of(tmux)
    shown = wait_for(tmux, "CORRAL-EXIT=")
    assert "CORRAL-EXIT=0" in shown
    said = joined(tmux)
    assert "The login the session left is not a valid claude.ai login" in said
    assert "as it was" in said
    assert (login / ".credentials.json").read_bytes() == before
    home = Path(env["CORRAL_HOME"])
    assert list(home.rglob(".credentials.json")) == []
    assert_clean(home)


def test_without_an_adopted_login_it_refuses_before_asking(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text('[agents.coder]\nbottle = "dev"\n\n[bottles.dev]\n')
    env = {**os.environ, "CORRAL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        start_argv("coder", "--remote-control"),
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        check=False,
    )
    assert done.returncode == 11, done.stderr
    assert "remote control: ON, but no claude.ai login is adopted" in done.stdout
    assert "run `corral auth import-claude-dir ~/.claude`" in done.stderr
    assert "launch this agent?" not in done.stdout + done.stderr
    assert "Not launched." not in done.stdout  # refused before the question, not answered no
    assert not (tmp_path / "home" / "sessions").exists() or not any((tmp_path / "home" / "sessions").iterdir())
