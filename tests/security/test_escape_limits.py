"""Escape attempts against the host's resources and against the end of a run: exhaust, outlive, outwait."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from corral.sandbox.base import SandboxBackend
from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.process import Supervised
from corral.sandbox.spec import Limits, RunResult
from corral.settings import Settings
from tests.security.attack import Attacker, sandbox_cgroups, sandbox_processes, slot_is_held
from tests.tools import require_root

pytestmark = pytest.mark.sandbox

CORRAL = str(Path(sys.executable).with_name("corral"))


def processes_of(settings: Settings, result: RunResult) -> list[int]:
    """Live host processes still running as the uid of the sandbox that gave ``result``."""
    uid = settings.sandbox_uid_base + int(result.sandbox_id.removeprefix("s"))
    return [pid for pid, owner in sandbox_processes(settings).items() if owner == uid]


def group_of(sandbox: SandboxBackend, launcher_pid: int, settings: Settings) -> Path:
    """The pids cgroup of the sandbox that ``launcher_pid`` started (bwrap, or the engine's CLI)."""
    if not isinstance(sandbox, BwrapSandbox):
        return container_group(settings)
    bwrap_pid = launcher_pid
    base = sandbox.driver.bases["pids"]
    children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    for group in sandbox_cgroups(sandbox.driver):
        if group.parent == base and set(children) & set((group / "cgroup.procs").read_text().split()):
            return group
    raise AssertionError(f"the sandbox of bwrap {bwrap_pid} is in no sandbox pids cgroup")


def container_group(settings: Settings, timeout: float = 10.0) -> Path:
    """The pids cgroup of the container now running as a sandbox uid (the engine made it; v1 here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in sandbox_processes(settings):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
                    _, controllers, path = line.split(":", 2)
                    if "pids" in controllers.split(","):
                        return Path("/sys/fs/cgroup/pids") / path.lstrip("/")
        time.sleep(0.01)
    raise AssertionError("no container process ran as a sandbox uid")


FORK_BOMB = """\
import errno, os, time
told = False
while True:  # every process forks for ever, so the tree stays at the limit
    try:
        if os.fork() == 0:
            told = False
    except OSError as err:
        if not told:
            told = bool(os.write(2, errno.errorcode[err.errno].encode() + b"\\n"))
        time.sleep(0.01)
"""


def test_fork_bomb_is_held_at_the_pids_limit(attacker: Attacker, sandbox: SandboxBackend, settings: Settings) -> None:
    """The attacker runs a fork bomb, to starve the host of processes."""
    require_root()
    limit = 32
    started: list[Supervised] = []
    ready = threading.Event()

    def on_start(proc: Supervised) -> None:
        started.append(proc)
        ready.set()

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            attacker.run,
            "python3",
            "-c",
            FORK_BOMB,
            limits=Limits(pids=limit, memory=256 << 20, timeout=2),
            on_start=on_start,
        )
        assert ready.wait(5)
        group = group_of(sandbox, started[0].pid, settings)
        peak, host_forks = 0, []
        while not running.done():
            try:
                peak = max(peak, int((group / "pids.current").read_text()))
            except (OSError, ValueError):
                pass  # the group goes away at the end
            host_forks.append(subprocess.run(["true"], timeout=5).returncode)
            time.sleep(0.05)
        result = running.result()
    assert (result.reason, result.exit_code) == ("timeout", 124)
    assert set(result.stderr.split()) == {b"EAGAIN"}  # fork failed for lack of pids, nothing else
    assert peak == limit  # it ran into the limit, and never past it
    assert len(host_forks) > 10
    assert set(host_forks) == {0}  # the host could fork all along
    assert not group.exists()


def test_memory_hog_is_killed_at_the_limit(attacker: Attacker) -> None:
    """The attacker allocates far more memory than its limit."""
    require_root()
    limit = 64 << 20
    result = attacker.python(
        "hog = [bytes([1]) * (1 << 20) for _ in range(1024)]", limits=Limits(memory=limit, timeout=20)
    )
    assert (result.reason, result.exit_code, result.signal) == ("oom", 137, 9)
    if attacker.backend == "bwrap":  # the engine removes a container's cgroup with it: no peak to read
        assert result.peak_memory is not None
        assert limit // 2 < result.peak_memory <= limit


def test_tmpfs_hog_is_killed_at_the_limit(attacker: Attacker) -> None:
    """The attacker fills /tmp (a tmpfs, so RAM) far past its memory limit."""
    require_root()
    limit = 64 << 20
    result = attacker.run(
        "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=256", limits=Limits(memory=limit, timeout=20)
    )
    assert (result.reason, result.exit_code) == ("oom", 137)
    if attacker.backend == "bwrap":
        assert result.peak_memory is not None
        assert result.peak_memory <= limit


@pytest.mark.parametrize(
    "script",
    [
        pytest.param("sleep 1000 & sleep 1000", id="output-open"),
        pytest.param("exec >&- 2>&-; sleep 1000 & sleep 1000", id="output-closed"),
    ],
)
def test_sleeping_past_the_timeout_kills_the_whole_tree(attacker: Attacker, settings: Settings, script: str) -> None:
    """The attacker sleeps past its timeout, with a background child that would outlive its parent (and, the
    second time, with its output closed, so that no end of output betrays it)."""
    require_root()
    result = attacker.run("sh", "-c", script, limits=Limits(timeout=1))
    assert (result.reason, result.exit_code) == ("timeout", 124)
    assert 1.0 <= result.duration < 2.0
    assert processes_of(settings, result) == []


def test_background_children_die_with_the_command(attacker: Attacker, settings: Settings) -> None:
    """The attacker leaves children behind when its command exits: one holding stdout open, one daemonized."""
    require_root()
    script = "(setsid sleep 1001 </dev/null >/dev/null 2>&1 &); sleep 1000 & echo started; exit 3"
    result = attacker.run("sh", "-c", script, limits=Limits(timeout=20))
    assert (result.reason, result.exit_code, result.stdout) == ("exited", 3, b"started\n")
    assert result.duration < 2  # not held open until the timeout by the child's copy of stdout
    assert processes_of(settings, result) == []


def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def uid_running(settings: Settings, command: bytes) -> int | None:
    """The sandbox uid of a live process whose command line is ``command`` (NUL-separated)."""
    for pid, uid in sandbox_processes(settings).items():
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes() == command:
                return uid
        except OSError:
            continue
    return None


def test_sandbox_dies_with_a_killed_caller_and_its_leftovers_are_reaped(settings: Settings, tmp_path: Path) -> None:
    """The caller (corral sandbox run) is SIGKILLed mid-run, so none of its cleanup runs: the sandbox must die
    with it, and the next run in that slot must remove what it left (cgroups, the workspace's hand-over)."""
    require_root()
    env = {**os.environ, "CORRAL_HOME": str(settings.home)}
    workspace = tmp_path / "killed-ws"
    workspace.mkdir()
    sleep = b"sleep\x00987.654\x00"  # an argument no other sleep on this host has
    corral = subprocess.Popen(
        [CORRAL, "sandbox", "run", "--workspace", str(workspace), "--timeout", "60s", "--", "sleep", "987.654"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_for(lambda: uid_running(settings, sleep), 10), "the sandboxed sleep never started"
        uid = uid_running(settings, sleep)
        assert uid is not None
        assert workspace.stat().st_uid == uid  # handed to the sandbox uid for the run
        os.kill(corral.pid, signal.SIGKILL)
    finally:
        corral.kill()
        corral.wait()
    assert wait_for(lambda: uid not in sandbox_processes(settings).values(), 2), "the sandbox outlived its caller"

    index = uid - settings.sandbox_uid_base
    slot = f"s{index}"
    after = subprocess.run(
        [CORRAL, "sandbox", "run", "--", "true"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=30
    )
    assert after.returncode == 0, after.stderr
    left = [group for group in sandbox_cgroups(BwrapSandbox(settings).driver) if group.name == slot]
    assert left == [] or slot_is_held(settings, index)  # unless another sandbox holds the slot right now
    assert workspace.stat().st_uid == 0  # the killed run's hand-over of the workspace was undone
