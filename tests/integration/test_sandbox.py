"""The bubblewrap sandbox for real: what it runs, what it returns, and what it leaves behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.cgroups import CgroupDriver, migration_ms
from corral.sandbox.spec import Limits, RunResult, SandboxSpec
from corral.settings import Settings
from tests.tools import require_root

pytestmark = pytest.mark.sandbox


def sh(script: str, workspace: Path, **kwargs: object) -> SandboxSpec:
    return SandboxSpec(("sh", "-c", script), workspace, **kwargs)  # type: ignore[arg-type]


def test_runs_and_reports(sandbox: BwrapSandbox, workspace: Path) -> None:
    result = sandbox.run(sh("echo out; echo err >&2; exit 3", workspace))
    assert (result.exit_code, result.reason, result.signal) == (3, "exited", None)
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert 0 < result.duration < 5
    assert result.sandbox_id.startswith("s")


def test_signal_is_reported(sandbox: BwrapSandbox, workspace: Path) -> None:
    result = sandbox.run(sh("kill -TERM $$", workspace))
    assert (result.exit_code, result.signal, result.signal_name, result.reason) == (143, 15, "SIGTERM", "exited")


def test_output_streams_as_it_arrives(sandbox: BwrapSandbox, workspace: Path) -> None:
    seen: list[tuple[float, str, bytes]] = []
    start = time.monotonic()
    result = sandbox.run(
        sh("echo first; sleep 0.5; echo second >&2", workspace),
        on_output=lambda stream, chunk: seen.append((time.monotonic() - start, stream, chunk)),
    )
    assert [(s, c) for _, s, c in seen] == [("stdout", b"first\n"), ("stderr", b"second\n")]
    assert seen[0][0] < seen[1][0] - 0.3  # the first line arrived before the command slept
    assert result.ok


def test_output_is_kept_bounded(settings: Settings, workspace: Path) -> None:
    small = Settings(home=settings.home, output_limit=4096)
    result = BwrapSandbox(small).run(sh("head -c 100000 /dev/zero | tr '\\0' x", workspace))
    assert len(result.stdout) == 4096
    assert result.stdout_dropped == 100000 - 4096


def test_environment_is_only_what_is_named(
    sandbox: BwrapSandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOST_ONLY_SECRET", "leak")
    result = sandbox.run(SandboxSpec(("env",), workspace, env={"GREETING": "hi"}))
    env = dict(line.split("=", 1) for line in result.stdout.decode().splitlines())
    assert env.pop("PWD") == str(workspace)  # set by bwrap for --chdir
    assert env == {"GREETING": "hi", "PATH": env["PATH"], "HOME": "/home/sandbox", "TMPDIR": "/tmp", "LANG": "C.UTF-8"}


def test_workspace_is_writable_and_given_back(sandbox: BwrapSandbox, workspace: Path) -> None:
    (workspace / "existing.txt").write_text("before\n")
    owner = (workspace.stat().st_uid, workspace.stat().st_gid)
    result = sandbox.run(sh("echo after >> existing.txt && mkdir -p d && echo new > d/new.txt && id -u", workspace))
    assert result.ok, result.stderr
    assert result.stdout == b"1000\n"
    assert (workspace / "existing.txt").read_text() == "before\nafter\n"
    assert (workspace / "d/new.txt").read_text() == "new\n"
    for path in (workspace, workspace / "existing.txt", workspace / "d", workspace / "d/new.txt"):
        assert (path.stat().st_uid, path.stat().st_gid) == owner


def test_runs_as_an_unprivileged_host_uid_when_root(sandbox: BwrapSandbox, workspace: Path) -> None:
    require_root()
    uids: list[int] = []
    result = sandbox.run(
        sh("sleep 0.2", workspace), on_start=lambda proc: uids.append(Path(f"/proc/{proc.pid}").stat().st_uid)
    )
    assert result.ok
    assert uids[0] >= sandbox.settings.sandbox_uid_base


def test_a_private_workspace_is_staged_in_the_calling_thread_without_touching_the_host(
    sandbox: BwrapSandbox, tmp_path: Path
) -> None:
    """A workspace below a 0700 directory is bound through a private mount namespace of the thread
    that starts bwrap; the thread comes back to the host's namespace and working directory, and no
    staging mount ever shows in the host's mount table."""
    require_root()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    workspace = private / "ws"
    workspace.mkdir()
    (workspace / "in.txt").write_text("seen\n")
    host_ns = os.readlink("/proc/self/ns/mnt")
    mounts_before = Path("/proc/self/mountinfo").read_text()
    seen: dict[str, object] = {}

    def run() -> None:
        cwd = os.getcwd()
        seen["result"] = sandbox.run(sh("cat in.txt && echo out > out.txt", workspace))
        seen["ns"] = os.readlink("/proc/thread-self/ns/mnt")
        seen["cwd"] = (cwd, os.getcwd())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    result = seen["result"]
    assert isinstance(result, RunResult)
    assert result.ok, result.stderr
    assert result.stdout == b"seen\n"
    assert (workspace / "out.txt").read_text() == "out\n"
    assert seen["ns"] == host_ns
    cwd_before, cwd_after = seen["cwd"]  # type: ignore[misc]
    assert cwd_after == cwd_before
    assert Path("/proc/self/mountinfo").read_text() == mounts_before
    assert not any((sandbox.settings.runtime / "stage").iterdir())


def test_cwd_inside(sandbox: BwrapSandbox, workspace: Path) -> None:
    (workspace / "src").mkdir()
    result = sandbox.run(SandboxSpec(("pwd",), workspace, cwd=workspace / "src"))
    assert result.stdout.decode().strip() == str(workspace / "src")


def test_no_cgroup_is_left_after_runs(sandbox: BwrapSandbox, workspace: Path) -> None:
    require_root()
    used = set()
    for _ in range(3):
        result = sandbox.run(sh("true", workspace, limits=Limits(memory=64 << 20, pids=16)))
        assert result.ok
        used.add(result.sandbox_id)
    # other sandboxes may run at the same time; none of the slots these runs used keeps a group
    assert [d for name in used for d in sandbox.driver.group(name).dirs if d.exists()] == []


def test_the_migration_probe_moves_a_real_process_and_leaves_no_group(sandbox: BwrapSandbox) -> None:
    require_root()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = sandbox.driver.group(f"probe-{gone.pid}")  # what a killed doctor left
    assert stale.pids is not None
    stale.pids.mkdir(parents=True)
    delay = migration_ms(sandbox.driver, idle=0.02, samples=2)
    assert not stale.pids.exists()
    assert delay is not None
    assert 0 < delay < 1000
    probe = sandbox.driver.group(f"probe-{os.getpid()}")
    assert [d for d in probe.dirs if d.exists()] == []
    assert migration_ms(CgroupDriver(0, {}, "no hierarchy")) is None


def test_limits_unavailable_are_reported_not_silent(settings: Settings, workspace: Path) -> None:
    unavailable = CgroupDriver(0, {}, "the cgroup v1 memory and pids hierarchies are not writable by this user")
    result = BwrapSandbox(settings, driver=unavailable).run(sh("true", workspace, limits=Limits(memory=64 << 20)))
    assert result.ok
    assert not result.limits_enforced
    assert (
        result.limits_note
        == "limits not enforced: the cgroup v1 memory and pids hierarchies are not writable by this user"
    )


def test_peak_memory_is_measured(sandbox: BwrapSandbox, workspace: Path) -> None:
    require_root()
    result = sandbox.run(
        SandboxSpec(
            ("python3", "-c", "x = bytearray(48 << 20); print(len(x))"), workspace, limits=Limits(memory=256 << 20)
        )
    )
    assert result.ok, result.stderr
    assert result.peak_memory is not None
    assert result.peak_memory > 48 << 20


def test_cpu_share_is_enforced(sandbox: BwrapSandbox, workspace: Path) -> None:
    require_root()
    busy = "import time\nt=time.time()\nwhile time.time()-t<1: pass\nimport os; print(os.times().user)"
    result = sandbox.run(SandboxSpec(("python3", "-c", busy), workspace, limits=Limits(cpus=0.2)))
    assert result.ok, result.stderr
    assert float(result.stdout) < 0.5  # 1 s of wall-clock at a 20 % share


def test_a_missing_egress_socket_is_refused_before_anything_starts(sandbox: BwrapSandbox, workspace: Path) -> None:
    from corral.errors import UsageError

    with pytest.raises(UsageError, match="is not a listening proxy socket"):
        sandbox.run(sh("touch started", workspace, egress=workspace.parent / "no.sock"))
    assert not (workspace / "started").exists()


def test_a_failure_after_spawn_leaves_no_sandbox_running(
    sandbox: BwrapSandbox, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the bridge fails while the command waits on its gate, the sandbox is killed, not let loose."""
    import socket

    from corral.errors import SandboxError
    from corral.sandbox import bridge

    require_root()

    def broken(relay: object, timeout: float = 5.0) -> None:
        raise SandboxError("the relay did not start (test)")

    monkeypatch.setattr(bridge, "wait_listening", broken)
    path = sandbox.settings.runtime / "proxy" / "failure-test.sock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    started: list[int] = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        with pytest.raises(SandboxError, match="did not start"):
            sandbox.run(sh("touch started; sleep 30", workspace, egress=path), on_start=lambda p: started.append(p.pid))
    path.unlink()
    assert started == []  # the command never got going
    assert not (workspace / "started").exists()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert b"failure-test.sock" not in cmdline  # no relay left
            assert cmdline != b"sleep\x0030\x00"  # the command's sleep, not any other one


def test_files_are_placed_inside_read_only_and_not_on_the_host(sandbox: BwrapSandbox, workspace: Path) -> None:
    etc_dir = Path("/etc/ssl")  # exists on every Debian host; inside, a fresh directory hides its contents
    spec = sh(
        f"cat {etc_dir}/corral-test.json /tmp/deep/x.txt; ls {etc_dir}; echo > {etc_dir}/more || echo refused",
        workspace,
        files={etc_dir / "corral-test.json": b'{"a": 1}\n', Path("/tmp/deep/x.txt"): b"x" * 100_000 + b"\n"},
    )
    result = sandbox.run(spec)
    lines = result.stdout.decode().splitlines()
    assert lines[0] == '{"a": 1}'
    assert lines[1] == "x" * 100_000
    assert lines[2:] == ["corral-test.json", "refused"]
    assert not (etc_dir / "corral-test.json").exists()


def test_interrupt_reaches_the_command_and_not_only_bwrap(sandbox: BwrapSandbox, workspace: Path) -> None:
    import signal
    import threading

    require_root()  # the tree is found through the sandbox's cgroup
    spec = sh("trap 'echo got INT; exit 3' INT; echo ready; sleep 20 & wait", workspace)

    def later(process: object) -> None:
        threading.Timer(0.5, lambda: process.interrupt(signal.SIGINT, "cancelled")).start()  # type: ignore[attr-defined]

    started = time.monotonic()
    result = sandbox.run(spec, on_start=later)
    assert result.stdout == b"ready\ngot INT\n"
    assert time.monotonic() - started < 5
