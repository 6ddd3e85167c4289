"""``corral auth`` as a user runs it: a real process, secrets on stdin, and no value in any output or file.

The subprocess tests run the real entry point and need ``auth_app`` registered in ``corral.cli.app``;
the ``CliRunner`` tests call ``auth_app`` in process.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli import auth
from corral.cli.auth import auth_app, describe, read_secret
from corral.errors import CredentialsError, UsageError
from corral.secrets import CredentialStore
from corral.settings import get_settings
from tests.unit.test_secrets import NO_CREDENTIAL, api_key, oauth_token, write_login

CORRAL = str(Path(sys.executable).with_name("corral"))


class Corral:
    """Runs ``corral auth ...`` with a private CORRAL_HOME and a clean environment; keeps every output."""

    def __init__(self, tmp_path: Path) -> None:
        self.home = tmp_path / "corral-home"
        self.cwd = tmp_path
        self.env = {"PATH": os.environ["PATH"], "CORRAL_HOME": str(self.home), "HOME": str(tmp_path / "user")}
        self.outputs: list[str] = []

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [CORRAL, "auth", *args],
            input=stdin,
            env={**self.env, **(env or {})},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.outputs += [proc.stdout, proc.stderr]
        return proc

    def status(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        proc = self("status", "--json", env=env)
        report: dict[str, Any] = json.loads(proc.stdout)
        assert proc.returncode == (0 if report["configured"] else 11), proc.stderr
        return report

    def files(self, *, besides: set[Path]) -> dict[Path, bytes]:
        """Every file under CORRAL_HOME but ``besides``."""
        return {p: p.read_bytes() for p in self.home.rglob("*") if p.is_file() and p not in besides}

    def assert_nowhere(self, value: str, besides: set[Path] | None = None) -> None:
        assert self.outputs
        for text in self.outputs:
            assert value not in text
        for path, content in self.files(besides=besides or set()).items():
            assert value.encode() not in content, path


@pytest.fixture
def corral(tmp_path: Path) -> Corral:
    return Corral(tmp_path)


def test_set_token_from_stdin_then_status(corral: Corral) -> None:
    token = oauth_token()
    proc = corral("set-token", stdin=f"{token}\n")
    assert proc.returncode == 0, proc.stderr
    assert "Stored the OAuth token in" in proc.stdout

    text = corral("status")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ["credential: OAuth token (oauth_token), from stored token", "git token:  none"]
    report = corral.status()
    assert (report["configured"], report["kind"], report["source"]) == (True, "oauth_token", "stored token")
    assert CredentialStore(corral.home).claude_file.read_text().count(token) == 1
    corral.assert_nowhere(token, besides={CredentialStore(corral.home).claude_file})


def test_no_credential_exits_11_with_the_sentence(corral: Corral) -> None:
    proc = corral("status")
    assert (proc.returncode, proc.stderr) == (11, f"Error: {NO_CREDENTIAL}\n")
    assert proc.stdout.splitlines() == ["credential: none", "git token:  none"]
    report = corral.status()
    assert (report["configured"], report["error"]) == (False, NO_CREDENTIAL)


def test_the_environment_is_the_fallback(corral: Corral) -> None:
    key, git = api_key(), token_hex(20)
    report = corral.status(env={"ANTHROPIC_API_KEY": key, "CORRAL_GIT_TOKEN": git})
    assert (report["kind"], report["source"]) == ("api_key", "environment ANTHROPIC_API_KEY")
    assert (report["git_token"], report["git_token_source"]) == (True, "CORRAL_GIT_TOKEN")
    corral.assert_nowhere(key)
    corral.assert_nowhere(git)


def test_import_claude_dir_is_read_again_at_every_status(corral: Corral, tmp_path: Path) -> None:
    first, refresh = oauth_token(), "sk-ant-ort01-" + token_hex(24)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=5)
    write_login(tmp_path / "claude", first, expires, refresh)
    proc = corral("import-claude-dir", str(tmp_path / "claude"))
    assert proc.returncode == 0, proc.stderr
    assert f"Adopted the Claude Code login in {tmp_path / 'claude'}" in proc.stdout
    assert f"expires at {expires.isoformat()}" in proc.stdout

    report = corral.status()
    assert (report["source"], report["expires_at"]) == (f"claude login at {tmp_path / 'claude'}", expires.isoformat())
    assert 4.9 < report["hours_remaining"] <= 5

    second = oauth_token()
    write_login(tmp_path / "claude", second, expires + timedelta(hours=3))  # claude refreshed it on the host
    assert corral.status()["expires_at"] == (expires + timedelta(hours=3)).isoformat()
    for value in (first, second, refresh):
        corral.assert_nowhere(value)  # not even in the credentials file: it holds a reference


def test_an_expired_login_fails_status_with_the_fix(corral: Corral, tmp_path: Path) -> None:
    expired = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    write_login(tmp_path / "claude", oauth_token(), expired)
    proc = corral("import-claude-dir", str(tmp_path / "claude"))
    assert proc.returncode == 0
    assert f"Warning: its access token expired at {expired.isoformat()}" in proc.stderr
    status = corral("status")
    assert status.returncode == 11
    assert f"expired at {expired.isoformat()}; run `claude` once" in status.stderr
    assert "ago)" in status.stdout


def test_import_of_a_directory_without_a_login_exits_11(corral: Corral, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = corral("import-claude-dir", str(tmp_path / "empty"))
    assert proc.returncode == 11
    assert proc.stderr.startswith(f"Error: There is no Claude Code login in {tmp_path / 'empty'}")
    assert not (corral.home / "credentials" / "claude.json").exists()


def test_logout_forgets_token_and_git_token(corral: Corral) -> None:
    token, git = oauth_token(), token_hex(20)
    assert corral("set-token", stdin=token).returncode == 0
    assert corral("set-git-token", stdin=f"{git}\n").returncode == 0
    assert corral.status()["git_token_source"] == "stored"
    store = CredentialStore(corral.home)
    corral.assert_nowhere(git, besides={store.git_file})

    proc = corral("logout", env={"ANTHROPIC_API_KEY": api_key()})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "Still used from the environment: ANTHROPIC_API_KEY."
    assert corral("status").returncode == 11
    assert list(store.directory.iterdir()) == []
    for value in (token, git):
        corral.assert_nowhere(value)


def test_login_hints_at_setup_token(corral: Corral) -> None:
    key = api_key()
    proc = corral("login", stdin=key)
    assert proc.returncode == 0, proc.stderr
    assert "`claude setup-token`" in proc.stderr
    assert "Stored the API key" in proc.stdout
    corral.assert_nowhere(key, besides={CredentialStore(corral.home).claude_file})


@pytest.mark.parametrize("command", ["set-token", "login", "set-git-token"])
def test_a_secret_on_the_command_line_is_refused_without_echo(corral: Corral, command: str) -> None:
    token = oauth_token()
    for args in ([token], [f"--token={token}"], ["--kind", "oauth_token", token]):
        if command == "set-git-token" and "--kind" in args:
            continue
        proc = corral(command, *args)
        assert proc.returncode == 2
        assert "takes no secret on the command line" in proc.stderr
    corral.assert_nowhere(token)
    assert not (corral.home / "credentials").exists()


@pytest.mark.parametrize(
    ("stdin", "args", "message"),
    [
        ("", [], "No token was given on stdin"),
        ("sk-ant-oat01-a\nsk-ant-oat01-b\n", [], "on one line"),
        ("ghp_" + "x" * 36, [], "pass --kind oauth_token or --kind api_key"),
        (oauth_token(), ["--kind", "api_key"], "by its prefix, but --kind api_key was given"),
    ],
)
def test_bad_input_is_refused_with_exit_2(corral: Corral, stdin: str, args: list[str], message: str) -> None:
    proc = corral("set-token", *args, stdin=stdin)
    assert proc.returncode == 2
    assert message in proc.stderr
    for line in stdin.split():
        corral.assert_nowhere(line)


def read_screen(fd: int, until: bytes | None, timeout: float) -> bytes:
    """What the terminal shows, up to ``until``, the end of the other side, or ``timeout``."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every copy of the other side is closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_a_token_typed_at_a_terminal_is_not_echoed(corral: Corral) -> None:
    """At a terminal set-token prompts with echo off; the token never appears on the screen."""
    token = oauth_token()
    master, slave = pty.openpty()

    def take_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    with subprocess.Popen(
        [CORRAL, "auth", "set-token"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=corral.env,
        cwd=corral.cwd,
        preexec_fn=take_the_terminal,  # the test runs no threads
    ) as proc:
        try:
            os.close(slave)
            screen = read_screen(master, b"(not shown): ", timeout=20)
            os.write(master, f"{token}\n".encode())
            stdout, stderr = proc.communicate(timeout=30)
            screen += read_screen(master, None, timeout=5)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
    assert proc.returncode == 0, stderr
    assert b"Claude token (not shown): " in screen
    assert token.encode() not in screen + stdout + stderr
    credential = CredentialStore(corral.home).load()
    assert credential is not None
    assert credential.secret.reveal() == token


# --- in process: auth_app through CliRunner, and the pure helpers ---------------------------------


@pytest.fixture
def runner_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "corral-home"
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "CORRAL_GIT_TOKEN", "CORRAL_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CORRAL_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def test_auth_app_in_process(runner_home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    token, git = oauth_token(), token_hex(20)
    missing = runner.invoke(auth_app, ["status"])
    assert isinstance(missing.exception, CredentialsError)
    assert missing.exception.exit_code == 11

    results = [
        runner.invoke(auth_app, ["set-token"], input=f"{token}\n"),
        runner.invoke(auth_app, ["set-git-token"], input=git),
        runner.invoke(auth_app, ["status"]),
        runner.invoke(auth_app, ["status", "--json"]),
    ]
    assert [r.exit_code for r in results] == [0, 0, 0, 0], [r.output for r in results]
    assert json.loads(results[3].stdout)["git_token_source"] == "stored"
    refused = runner.invoke(auth_app, ["set-token", token])
    assert isinstance(refused.exception, UsageError)

    write_login(tmp_path / "claude", oauth_token(), None)
    adopted = runner.invoke(auth_app, ["import-claude-dir", str(tmp_path / "claude")])
    out = runner.invoke(auth_app, ["logout"])
    assert (adopted.exit_code, out.exit_code) == (0, 0), adopted.output + out.output
    assert f"The Claude Code login in {tmp_path / 'claude'} itself is untouched" in out.stdout
    for result in [missing, *results, refused, adopted, out]:
        assert token not in result.output
        assert git not in result.output
    assert list((runner_home / "credentials").iterdir()) == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_read_secret_prompts_at_a_terminal_and_reads_pipes(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt: prompts.append(prompt) or "typed\n")
    assert read_secret("Token: ", Terminal("ignored")) == "typed\n"
    assert prompts == ["Token: "]
    assert read_secret("Token: ", io.StringIO("piped\n")) == "piped\n"
    assert prompts == ["Token: "]
    with pytest.raises(UsageError, match="No token was given on stdin"):
        read_secret("Token: ", io.StringIO(" \n"))
    with pytest.raises(UsageError, match="longer than 65536 characters"):
        read_secret("Token: ", io.StringIO("x" * (auth.SECRET_LIMIT + 1)))


def test_describe_status_reports() -> None:
    base = {"kind": None, "hours_remaining": None, "git_token_source": None}
    assert describe(base) == ["credential: none", "git token:  none"]
    adopted = {
        "kind": "oauth_token",
        "source": "claude login at /srv/claude",
        "expires_at": "2026-03-04T05:06:07+00:00",
        "hours_remaining": -1.25,
        "git_token_source": "CORRAL_GIT_TOKEN",
    }
    assert describe(adopted) == [
        "credential: OAuth token (oauth_token), from claude login at /srv/claude",
        "expires:    2026-03-04T05:06:07+00:00 (1.2 hours ago)",
        "git token:  from CORRAL_GIT_TOKEN",
    ]
    assert describe({**adopted, "hours_remaining": 7.5})[1].endswith("(in 7.5 hours)")
