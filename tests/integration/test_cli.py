"""``corral`` as a user runs it: a real process, real exit codes, sentences on stderr."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from corral.settings import Settings
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox

CORRAL = str(Path(sys.executable).with_name("corral"))


def corral(
    *args: str, home: Path, extra_env: dict[str, str] | None = None, timeout: float = 60, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    require("bwrap")
    env = {"PATH": os.environ["PATH"], "CORRAL_HOME": str(home), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(
        [CORRAL, *args],
        env={**env, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_passes_exit_code_and_output(home: Path, tmp_path: Path) -> None:
    proc = corral(
        "sandbox", "run", "--workspace", str(tmp_path), "--", "sh", "-c", "echo hi; echo oops >&2; exit 7", home=home
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, "hi\n", "oops\n")


def test_default_workspace_is_fresh_and_removed(home: Path) -> None:
    proc = corral("sandbox", "run", "--", "sh", "-c", "pwd; ls -A | wc -l", home=home)
    where, count = proc.stdout.split()
    assert count == "0"
    assert where.startswith("/tmp/corral-ws-")
    assert not Path(where).exists()


def test_stdin_reaches_the_command(home: Path) -> None:
    proc = corral("sandbox", "run", "--", "tr", "a-z", "A-Z", home=home, input="shout\n")
    assert proc.stdout == "SHOUT\n"


def test_env_by_name_and_value(home: Path) -> None:
    proc = corral(
        "sandbox",
        "run",
        "--env",
        "CORRAL_TEST_NAMED",
        "--env",
        "B=2",
        "--",
        "sh",
        "-c",
        'echo "$CORRAL_TEST_NAMED $B $CORRAL_HOME"',
        home=home,
        extra_env={"CORRAL_TEST_NAMED": "from-host"},
    )
    assert proc.stdout == "from-host 2 \n"  # CORRAL_HOME is set on the host, but not named


def test_timeout_exits_124_with_a_reason(home: Path) -> None:
    proc = corral("sandbox", "run", "--timeout", "0.5s", "--", "sleep", "30", home=home)
    assert proc.returncode == 124
    assert "timed out after 0." in proc.stderr
    assert "whole process tree was killed" in proc.stderr


def test_oom_exits_137_with_a_reason(home: Path) -> None:
    require_root()
    hog = "b=[]\nwhile True: b.append(bytearray(8<<20))"
    proc = corral("sandbox", "run", "--memory", "64M", "--", "python3", "-c", hog, home=home)
    assert proc.returncode == 137
    assert "out of memory: the sandbox reached its 64M limit and was killed." in proc.stderr


def test_created_protected_path_is_reported(home: Path, tmp_path: Path) -> None:
    proc = corral(
        "sandbox", "run", "-w", str(tmp_path), "--", "sh", "-c", "mkdir .vscode && echo '{}' > .mcp.json", home=home
    )
    assert proc.returncode == 0
    assert "<sandbox_violations>" in proc.stderr
    assert f"protected-path {tmp_path / '.mcp.json'}: created inside the sandbox; removed after the run" in proc.stderr
    assert not (tmp_path / ".vscode").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bogus", "--", "true"], 2, "No such option '--bogus'"),
        (["--memory", "lots", "--", "true"], 4, "Error: The memory limit 'lots' is not a size; write it like 512M"),
        (["--pids", "many", "--", "true"], 4, "Error: The pids limit 'many' is not a whole number"),
        (["--timeout", "soon", "--", "true"], 4, "Error: The timeout 'soon' is not a duration"),
        (["--cpus", "0", "--", "true"], 4, "Error: The cpu share '0' must be between 0 and 4096 cores"),
        (["--workspace", "/nonexistent/ws", "--", "true"], 5, "Error: The workspace /nonexistent/ws does not exist"),
        (["--ro", "/nonexistent/data", "--", "true"], 5, "Error: The path /nonexistent/data to bind read-only"),
        (["--", "no-such-tool"], 127, "Error: The command 'no-such-tool' does not exist inside the sandbox"),
        (["--env", "1BAD=x", "--", "true"], 2, "Error: The environment name '1BAD'"),
        (["--env", "CORRAL_SURELY_UNSET", "--", "true"], 2, "Error: The variable CORRAL_SURELY_UNSET is not set"),
        ([], 2, "Missing argument 'COMMAND...'"),
        (["--allow-domain", "*.com", "--", "true"], 6, "Error: The egress pattern '*.com' covers the whole"),
        (["--allow-domain", "https://x.com", "--", "true"], 6, "has a scheme; write the host alone"),
        (["--allow-domain", "x.com:70000", "--", "true"], 6, "has port 70000, outside 1-65535"),
        (["--allow-domain", "", "--", "true"], 6, "An egress pattern is empty"),
        (["--allow-domain", "x.com", "--audit-log", "/proc/nope/a.jsonl", "--", "true"], 7, "Cannot open the audit"),
        (["--deny-domain", "x.com", "--", "true"], 2, "--deny-domain and --audit-log need at least one --allow-domain"),
    ],
)
def test_bad_input_gets_one_sentence_and_a_distinct_code(home: Path, args: list[str], code: int, message: str) -> None:
    proc = corral("sandbox", "run", *args, home=home)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_egress_input_starts_nothing(home: Path, tmp_path: Path) -> None:
    """A bad pattern is refused before any sandbox, relay or socket exists."""
    marker = tmp_path / "ran"
    proc = corral(
        "sandbox", "run", "--allow-domain", "ok.example", "--allow-domain", "*", "--", "touch", str(marker), home=home
    )
    assert proc.returncode == 6
    assert not marker.exists()


def test_audit_verify(home: Path, tmp_path: Path) -> None:
    missing = corral("audit", "verify", str(tmp_path / "none.jsonl"), home=home)
    assert missing.returncode == 2
    assert "does not exist or is not a file" in missing.stderr


def test_a_secret_dir_cannot_be_bound(home: Path) -> None:
    (home / "credentials").mkdir(parents=True)
    proc = corral("sandbox", "run", "--ro", str(home / "credentials"), "--", "true", home=home)
    assert proc.returncode == 2
    assert "which holds secrets and is never visible in a sandbox" in proc.stderr


def test_bad_settings_are_reported(home: Path, tmp_path: Path) -> None:
    (tmp_path / "corral.toml").write_text("[settings]\nmemroy = '1G'\n")
    proc = corral("sandbox", "run", "--", "true", home=home, cwd=tmp_path)
    assert proc.returncode == 3
    assert "Error: The setting 'memroy' in" in proc.stderr


def test_doctor_probes_for_real(home: Path) -> None:
    proc = corral("doctor", home=home)
    assert proc.returncode == 0, proc.stdout
    for name in (
        "bubblewrap",
        "seccomp",
        "user namespaces",
        "network namespace",
        "no capabilities",
        "seccomp filter",
        "egress relay",
        "egress bridge",
    ):
        assert f"ok   {name}" in proc.stdout
    if os.geteuid() == 0:  # with cgroups: the migration is timed, fast ("ok") or with its fix ("warn")
        assert re.search(r"^(ok  |warn) cgroup migration +\d+\.\d ms to move a process", proc.stdout, re.MULTILINE)
    assert "sandboxes can run here." in proc.stdout


def test_doctor_fails_with_the_remedy_when_bwrap_is_missing(home: Path, tmp_path: Path) -> None:
    proc = corral("doctor", home=home, extra_env={"CORRAL_BWRAP": str(tmp_path / "no-bwrap")})
    assert proc.returncode == 1
    assert "FAIL bubblewrap" in proc.stdout
    assert "apt-get install --no-install-recommends bubblewrap" in proc.stdout


def test_version(home: Path) -> None:
    from corral import __version__

    assert corral("version", home=home).stdout.strip() == __version__


def test_doctor_reports_the_container_engine(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container engine is never required: doctor says whether it answers and whether gVisor is there."""
    from corral.doctor import _probe_engine
    from tests.tools import require_engine

    require_engine(monkeypatch)
    check = _probe_engine(settings, "docker")
    assert (check.ok, check.required) == (True, False)
    assert check.detail.startswith("server ")
    assert check.detail.endswith("; runsc registered")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    check = _probe_engine(settings, "docker")
    assert (check.ok, check.detail, check.remedy) == (
        False,
        "the engine does not answer",
        "start it, or point DOCKER_HOST at it",
    )
