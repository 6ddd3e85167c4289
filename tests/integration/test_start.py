"""``corral start`` for real: tmux drives it with the real Claude Code CLI against the stand-in API.

The stand-in answers only requests carrying the real key, so an answer on screen proves the
gateway put it there (the sandbox has a placeholder). After the session: no process, mount,
proxy socket or session file is left.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.claude import claude_bin
from tests.gitserver import git
from tests.standin_api import StandinAPI
from tests.tools import ENGINE_IMAGE, ENGINES, engine_containers, engine_env, require, require_engine, require_root

pytestmark = pytest.mark.sandbox

REAL_KEY = "sk-ant-api03-REAL-KEY-start-" + "y" * 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api() -> Iterator[StandinAPI]:
    with StandinAPI(required_auth=("x-api-key", REAL_KEY)) as server:
        yield server


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[list[str]]:
    require_root()
    for tool in ("bwrap", "socat", "tmux", "git"):
        require(tool)
    base = ["tmux", "-S", str(tmp_path / "tmux.sock")]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, check=False)


def start_argv(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "corral"), "start", *args]


def screen(tmux: list[str]) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", "-t", "s"], capture_output=True, text=True, check=True).stdout


def wait_for(tmux: list[str], text: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        shown = screen(tmux)
        if text in shown:
            return shown
        time.sleep(0.2)
    pytest.fail(f"{text!r} never appeared on the screen; it shows:\n{screen(tmux)}")


def type_line(tmux: list[str], text: str) -> None:
    subprocess.run([*tmux, "send-keys", "-t", "s", "-l", text], check=True)
    time.sleep(0.5)
    subprocess.run([*tmux, "send-keys", "-t", "s", "Enter"], check=True)


def leftovers(home: Path, runtime: Path, marker: str) -> list[str]:
    """What a session could leave: processes naming its home, mounts, proxy sockets, session files."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and "tmux" not in cmdline:
                found.append(f"process {proc.name}: {cmdline}")
    found += [f"mount {line}" for line in Path("/proc/self/mounts").read_text().splitlines() if str(home) in line]
    sessions = home / "sessions"
    found += [f"file {p}" for p in sessions.iterdir()] if sessions.exists() else []
    proxy = runtime / "proxy"
    found += [f"socket {p}" for p in proxy.glob("session-*.sock")] if proxy.exists() else []
    return found


def assert_clean(home: Path) -> None:
    runtime = Path("/run/corral")
    deadline = time.monotonic() + 10
    while leftovers(home, runtime, str(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(home, runtime, str(home)) == []


def session_env(tmp_path: Path, api: StandinAPI) -> dict[str, str]:
    return {
        "CORRAL_HOME": str(tmp_path / "home"),
        "CORRAL_ANTHROPIC_BASE_URL": api.url,
        "CORRAL_CLAUDE_BIN": str(claude_bin()),
        "ANTHROPIC_API_KEY": REAL_KEY,
        "CLAUDE_CODE_MAX_RETRIES": "0",
        "PYTHONPATH": str(ROOT / "src"),
        **engine_env("docker"),
        **engine_env("podman"),
    }


def launch(tmux: list[str], cwd: Path, env: dict[str, str], *args: str) -> None:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    command = f"cd {shlex.quote(str(cwd))} && env {exports} {shlex.join(start_argv(*args))}; echo CORRAL-EXIT=$?"
    subprocess.run([*tmux, "new-session", "-d", "-s", "s", "-x", "150", "-y", "50", command], check=True)
    subprocess.run([*tmux, "set-option", "-t", "s", "remain-on-exit", "on"], check=True)


BOTTLES = {"bwrap": "", **{e: f'backend = "{e}"\nimage = "{ENGINE_IMAGE}"\n' for e in ENGINES}}


@pytest.fixture(params=sorted(BOTTLES))
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each backend of a bottle (docker and podman: the tests' engine and image)."""
    if request.param in ENGINES:
        require_engine(monkeypatch, request.param)
    return str(request.param)


def containers(engine: str) -> list[str]:
    """corral's containers in the tests' ``engine`` (each session removes its own)."""
    return engine_containers(engine, "corral.slot")


def test_interactive_session_answers_and_leaves_nothing(
    tmp_path: Path, api: StandinAPI, tmux: list[str], backend: str
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text(f'[agents.coder]\nbottle = "dev"\n\n[bottles.dev]\n{BOTTLES[backend]}')
    env = session_env(tmp_path, api)
    launch(tmux, project, env, "coder", "--yes")
    shown = wait_for(tmux, "remote control:")
    assert "session coder," in shown
    wait_for(tmux, "bypass permissions on")
    home = Path(env["CORRAL_HOME"])
    assert (home / "sessions" / "coder" / "box" / "work").is_dir()
    type_line(tmux, "SAY the stand-in says hi")
    wait_for(tmux, "\u25cf the stand-in says hi")  # the answer's bullet, not the echo of the prompt
    answers = [r for r in api.requests if r.path.startswith("/v1/messages")]
    assert answers, "the CLI never reached the stand-in"
    assert all(r.headers.get("x-api-key") == REAL_KEY for r in answers)
    type_line(tmux, "/exit")
    shown = wait_for(tmux, "CORRAL-EXIT=")
    assert "CORRAL-EXIT=0" in shown
    assert_clean(home)
    if backend in ENGINES:
        assert containers(backend) == []


def test_cwd_session_keeps_a_patch_and_never_writes_the_host_tree(
    tmp_path: Path, api: StandinAPI, tmux: list[str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text('[agents.coder]\nbottle = "dev"\n\n[bottles.dev]\n')
    (project / "README").write_text("hello\n")
    git("init", "-q", "-b", "main", cwd=project)
    git("add", "-A", cwd=project)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first", cwd=project)
    before = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    env = session_env(tmp_path, api)
    launch(tmux, project, env, "coder", "--yes", "--cwd")
    wait_for(tmux, "bypass permissions on")
    type_line(tmux, "WRITE made.txt made in the session")
    wait_for(tmux, "DONE", timeout=90)
    type_line(tmux, "/exit")
    shown = wait_for(tmux, "CORRAL-EXIT=")
    assert "CORRAL-EXIT=0" in shown
    patch = tmp_path / "corral-session-coder.patch"
    assert patch.is_file(), shown
    assert "made in the session" in patch.read_text()
    after = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    assert after == before  # the host tree is untouched
    applied = subprocess.run(["git", "apply", "--check", str(patch)], cwd=project, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    assert_clean(Path(env["CORRAL_HOME"]))


def test_killed_cli_is_reaped_by_the_next_start(tmp_path: Path, api: StandinAPI, tmux: list[str], backend: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "corral.toml").write_text(f'[agents.coder]\nbottle = "dev"\n\n[bottles.dev]\n{BOTTLES[backend]}')
    env = session_env(tmp_path, api)
    launch(tmux, project, env, "coder", "--yes")
    wait_for(tmux, "bypass permissions on")
    home = Path(env["CORRAL_HOME"])
    lock = home / "sessions" / "coder.lock"
    pid = int(lock.read_text())
    os.kill(pid, 9)
    wait_for(tmux, "CORRAL-EXIT=")
    assert (home / "sessions" / "coder").is_dir()  # a leftover, its lock free
    if backend in ENGINES:
        assert containers(backend) != []  # the engine keeps it running: only the next start can remove it
    done = subprocess.run(
        [*start_argv("coder", "--dry-run")], cwd=project, env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0
    assert "session coder," in done.stdout  # the leftover does not hold the name
    done = subprocess.run(
        [*start_argv("coder")],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert "Not launched." in done.stdout  # no terminal to ask on: not launched, but leftovers reaped
    assert_clean(home)
    if backend in ENGINES:
        assert containers(backend) == []
