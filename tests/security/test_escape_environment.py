"""Escape attempts on the host's environment: secrets in variables the sandbox was not given."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.settings import Settings
from tests.security.attack import Attacker

pytestmark = pytest.mark.sandbox

SECRET = "sk-ant-host-only-5f2a"
CORRAL = str(Path(sys.executable).with_name("corral"))


def test_host_environment_is_not_in_any_process(attacker: Attacker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attacker reads the environment of every process it can see, init (/proc/1/environ) included."""
    monkeypatch.setenv("HOST_API_KEY", SECRET)
    setup = """
        environs = {p: open(f'/proc/{p}/environ', 'rb').read().decode() for p in os.listdir('/proc') if p.isdigit()}
    """
    result = attacker.evaluate("environs", setup=setup, env={"VISIBLE": "yes"})
    assert len(result) == 2  # the sandbox's init and the attacker
    assert all(SECRET not in environ and "HOST_API_KEY" not in environ for environ in result.values())
    assert all("VISIBLE=yes" in environ.split("\0") for environ in result.values())


@pytest.fixture
def secret_stdin(tmp_path: Path) -> Iterator[None]:
    """The caller's stdin (fd 0) is a host file holding a secret, as a service's stdin may be anything."""
    secret = tmp_path / "stdin-secret"
    secret.write_text(SECRET)
    saved = os.dup(0)
    fd = os.open(secret, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    try:
        yield
    finally:
        os.dup2(saved, 0)
        os.close(saved)


def test_caller_descriptors_are_not_inherited(attacker: Attacker, secret_stdin: None) -> None:
    """The attacker reads the descriptors it was started with, hoping for the caller's stdin or other open files."""
    setup = "fds = sorted(int(fd) for fd in os.listdir('/proc/self/fd'))"
    result = attacker.evaluate("[fds, os.readlink('/proc/self/fd/0'), os.read(0, 100).decode()]", setup=setup)
    assert result == [[0, 1, 2, 3], "/dev/null", ""]  # 3 is the listing's own


def test_cli_passes_only_the_variables_it_names(settings: Settings, workspace: Path) -> None:
    """The attacker hopes the CLI passes more than the one variable named with --env."""
    env = {**os.environ, "CORRAL_HOME": str(settings.home), "NAMED_TOKEN": "named", "HOST_API_KEY": SECRET}
    command = ["sh", "-c", "tr '\\0' '\\n' < /proc/1/environ; echo; env"]
    done = subprocess.run(
        [
            CORRAL,
            "sandbox",
            "run",
            "--workspace",
            str(workspace),
            "--env",
            "NAMED_TOKEN",
            "--timeout",
            "10s",
            "--",
            *command,
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    names = {line.split("=", 1)[0] for line in done.stdout.decode().splitlines() if "=" in line}
    assert names == {"NAMED_TOKEN", "PATH", "HOME", "TMPDIR", "LANG", "PWD"}
    assert b"NAMED_TOKEN=named\n" in done.stdout
    assert SECRET.encode() not in done.stdout
