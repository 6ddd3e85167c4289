"""The container backend for real: the tests' Docker and Podman engines, their image, and gVisor where registered.

The escape suite (``tests/security``) runs its attacks on this backend too; these tests cover the
rest of a run, on each engine: output, the workspace handover, the timeout, egress through the
relay under runc and under runsc, what a killed caller leaves and who removes it, and the
sentences a missing image or runtime gets.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.egress.policy import Policy
from corral.errors import SandboxUnavailableError
from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.container import LABEL, ContainerSandbox, Engine
from corral.sandbox.spec import Limits, SandboxSpec
from corral.settings import Settings
from tests.bridged import Bridge, MakeBridge, Origins, bridges, serve_origins
from tests.tools import ENGINE_IMAGE, ENGINES, engine_containers, require_engine, require_root

pytestmark = pytest.mark.sandbox

LIMITS = Limits(memory=512 << 20, pids=128, timeout=60)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Engine:
    """Each engine, its CLI pointed at the tests' engine (docker: the private dockerd)."""
    require_root()
    require_engine(monkeypatch, request.param)
    engine: Engine = request.param
    return engine


@pytest.fixture
def sandbox(engine: Engine, settings: Settings) -> ContainerSandbox:
    return ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine)


@pytest.fixture
def origins() -> Iterator[Origins]:
    with serve_origins() as servers:
        yield servers


@pytest.fixture
def bridge(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bridge]:
    make: MakeBridge
    with bridges(settings, tmp_path, monkeypatch, {"allowed.test": ["127.0.0.1"]}) as make:
        yield make()


def containers(engine: Engine, slot: str | None = None) -> list[str]:
    """corral's containers in the engine (of one slot, if given)."""
    return engine_containers(engine, LABEL if slot is None else f"{LABEL}={slot}")


def test_output_streams_and_the_workspace_comes_back(sandbox: ContainerSandbox, workspace: Path) -> None:
    chunks: list[tuple[str, bytes]] = []
    script = "echo out; echo err >&2; id -u > made.txt; exit 3"
    result = sandbox.run(
        SandboxSpec(("sh", "-c", script), workspace, limits=LIMITS), on_output=lambda s, c: chunks.append((s, c))
    )
    assert (result.reason, result.exit_code) == ("exited", 3)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert b"".join(c for s, c in chunks if s == "stdout") == b"out\n"
    slot = int(result.sandbox_id.removeprefix("s"))
    assert (workspace / "made.txt").read_text().strip() == str(sandbox.settings.sandbox_uid_base + slot)
    assert (workspace / "made.txt").stat().st_uid == 0  # handed back to the workspace's owner
    assert containers(sandbox.engine, result.sandbox_id) == []


def test_the_timeout_kills_the_container(sandbox: ContainerSandbox, workspace: Path) -> None:
    result = sandbox.run(SandboxSpec(("sleep", "600"), workspace, limits=Limits(timeout=2)))
    assert (result.reason, result.exit_code) == ("timeout", 124)
    assert result.duration < 30
    assert containers(sandbox.engine, result.sandbox_id) == []


def test_a_placed_file_is_read_only_inside(sandbox: ContainerSandbox, workspace: Path) -> None:
    dest = Path("/etc/claude-code/managed-settings.json")
    script = f"cat {dest}; echo x >> {dest} 2>/dev/null || echo refused"
    result = sandbox.run(SandboxSpec(("sh", "-c", script), workspace, files={dest: b"{}\n"}, limits=LIMITS))
    assert result.stdout == b"{}\nrefused\n"


def test_egress_goes_through_the_proxy_and_nowhere_else(
    sandbox: ContainerSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    target = f"127.0.0.1:{origins.http}"
    script = (
        f"curl -sS http://{target}/through; "
        f"curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{origins.other}/denied; echo; "
        f"curl -sS --noproxy '*' http://{target}/direct 2>&1 | head -c 40"
    )
    with bridge.door(Policy([target])) as door:
        result = sandbox.run(SandboxSpec(("sh", "-c", script), workspace, egress=door.path, limits=LIMITS))
    lines = result.stdout.decode().splitlines()
    assert result.ok, result.stderr
    assert [seen["requestline"] for seen in origins.seen] == ["GET /through HTTP/1.1"]
    assert lines[1] == "403"
    assert lines[2].startswith("curl: (7)")  # a direct connection finds no route
    assert ("allow", target) in bridge.decisions(door)


CALLER = """
import sys
from pathlib import Path
from corral.sandbox.container import ContainerSandbox
from corral.sandbox.spec import SandboxSpec
from corral.settings import Settings
home, workspace, image, engine = sys.argv[1:]
sandbox = ContainerSandbox(Settings(home=Path(home)), image=image, engine=engine)
sandbox.run(SandboxSpec(("sh", "-c", "trap '' TERM; sleep 600"), Path(workspace)))
"""


@pytest.mark.parametrize("next_run", ["container", "bubblewrap"])
def test_a_killed_callers_container_is_reaped_by_the_next_run(
    sandbox: ContainerSandbox, workspace: Path, settings: Settings, next_run: str
) -> None:
    """The caller is SIGKILLed mid-run: the engine keeps its container running until the next run reaps it.

    Its command ignores SIGTERM, so a reaper that asks it to stop first (as podman's rm does) waits.
    """
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, str(settings.home), str(workspace), ENGINE_IMAGE, sandbox.engine],
    )
    try:
        deadline = time.monotonic() + 60
        while not (left := containers(sandbox.engine)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left, "the caller never started its container"
    finally:
        caller.kill()
        caller.wait()
    time.sleep(0.5)
    assert containers(sandbox.engine) == left  # nobody removed it
    started = time.monotonic()
    if next_run == "bubblewrap":  # the next run of the slot may be any backend's
        result = BwrapSandbox(settings).run(SandboxSpec(("true",), workspace))
    else:
        result = sandbox.run(SandboxSpec(("true",), workspace))
    assert result.ok
    assert time.monotonic() - started < 8  # removed at once, not after the engine's 10 s stop timeout
    assert containers(sandbox.engine) == []
    assert workspace.stat().st_uid == 0  # the workspace went back to its owner too


HOG = "hog = [bytes([1]) * (1 << 20) for _ in range(1024)]"


def test_an_oom_kill_is_told_and_leaves_no_note_in_the_callers_directory(
    sandbox: ContainerSandbox, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel kills a memory hog: the run says so (podman's conmon notes it in its CLI's working directory)."""
    caller = tmp_path / "caller"
    caller.mkdir()
    monkeypatch.chdir(caller)
    result = sandbox.run(SandboxSpec(("python3", "-c", HOG), workspace, limits=Limits(memory=64 << 20, timeout=30)))
    assert (result.reason, result.exit_code, result.signal) == ("oom", 137, 9)
    assert list(caller.iterdir()) == []
    killed = sandbox.run(SandboxSpec(("sh", "-c", "kill -9 $$"), workspace, limits=Limits(memory=64 << 20)))
    assert (killed.reason, killed.exit_code) == ("killed", 137)  # a SIGKILL of its own is no OOM


def test_a_missing_image_gets_a_sentence(engine: Engine, settings: Settings, workspace: Path) -> None:
    sandbox = ContainerSandbox(settings, image="corral-no-such-image:1", engine=engine)
    with pytest.raises(
        SandboxUnavailableError, match=rf"The image 'corral-no-such-image:1' is not in the {engine} engine"
    ):
        sandbox.run(SandboxSpec(("true",), workspace))


def test_runsc_runs_the_command_under_gvisor(engine: Engine, settings: Settings, workspace: Path) -> None:
    """gVisor answers system calls with its own kernel (which reports itself as Linux 4.4.0)."""
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine, runtime="runsc")
    assert sandbox.runtime_registered("runsc")
    assert not sandbox.runtime_registered("corral-no-such-runtime")
    result = sandbox.run(SandboxSpec(("sh", "-c", "uname -r; id -u; echo hi > made.txt"), workspace, limits=LIMITS))
    assert result.ok, result.stderr
    uname, uid = result.stdout.decode().split()
    assert uname == "4.4.0"
    assert int(uid) == settings.sandbox_uid_base + int(result.sandbox_id.removeprefix("s"))
    assert (workspace / "made.txt").read_text() == "hi\n"
    assert containers(sandbox.engine, result.sandbox_id) == []


PROBE = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
def outcome(result):
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]
print("ptrace", outcome(libc.ptrace(0, 0, 0, 0)))  # PTRACE_TRACEME
print("unshare", outcome(libc.unshare(0x10000000)))  # CLONE_NEWUSER
keyctl = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
print("keyctl", outcome(libc.syscall(keyctl, 0, -3, 0)))  # the session keyring's id
socket.socket(socket.AF_UNIX).close()
print("af_unix", "ok")
"""


def test_runsc_applies_corrals_seccomp_rules_inside_gvisor(engine: Engine, settings: Settings, workspace: Path) -> None:
    """gVisor's own kernel would let an unprivileged user ptrace itself and create a user namespace;
    corral's rules deny them inside gVisor too (AF_UNIX stays allowed there, for the relay)."""
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine, runtime="runsc")
    assert sandbox.gvisor_loads_seccomp()
    result = sandbox.run(SandboxSpec(("python3", "-c", PROBE), workspace, limits=LIMITS))
    assert result.ok, result.stderr
    seen = dict(line.split() for line in result.stdout.decode().splitlines())
    assert seen == {"ptrace": "EPERM", "unshare": "EPERM", "keyctl": "EPERM", "af_unix": "ok"}


def test_runsc_without_oci_seccomp_is_refused_before_anything_starts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker passes runtime flags only from runsc's registration: without --oci-seccomp there,
    gVisor would ignore corral's profile, so corral refuses and says how to register it."""
    require_root()
    require_engine(monkeypatch, "docker")
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine="docker", runtime="runsc")
    runtimes = {"runc": {"path": "runc"}, "runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--platform=ptrace"]}}
    real_cli = sandbox.cli

    def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        if args[:1] == ("info",):
            return subprocess.CompletedProcess(args, 0, json.dumps(runtimes), "")
        return real_cli(*args, check=check)

    sandbox.cli = cli  # type: ignore[assignment]
    assert not sandbox.gvisor_loads_seccomp()
    with pytest.raises(SandboxUnavailableError, match=r"without --oci-seccomp.*runsc install -- --oci-seccomp"):
        sandbox.check_engine()
    runtimes["runsc"]["runtimeArgs"] = ["--platform=ptrace", "--oci-seccomp"]
    assert sandbox.gvisor_loads_seccomp()


def test_runsc_egress_goes_through_the_relay_inside(
    engine: Engine, settings: Settings, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """gVisor has its own network stack: the relay runs inside, on the proxy socket mounted in."""
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine, runtime="runsc")
    target = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy([target])) as door:
        result = sandbox.run(
            SandboxSpec(("curl", "-sS", f"http://{target}/gvisor"), workspace, egress=door.path, limits=LIMITS)
        )
    assert result.ok, result.stderr
    assert [seen["requestline"] for seen in origins.seen] == ["GET /gvisor HTTP/1.1"]


def test_an_unregistered_runtime_is_refused_before_anything_starts(
    engine: Engine, settings: Settings, workspace: Path
) -> None:
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine, runtime="runsc")
    sandbox.runtime_registered = lambda runtime: False  # type: ignore[method-assign]
    with pytest.raises(SandboxUnavailableError, match=rf"runsc is not registered with the {engine} engine; install it"):
        sandbox.run(SandboxSpec(("true",), workspace))


def test_podman_runs_without_a_containers_conf_and_the_rlimits_follow_the_limits(
    settings: Settings, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Podman's default rlimits exceed a host's lower hard limits; corral sets its own instead."""
    import resource

    require_root()
    require_engine(monkeypatch, "podman")
    monkeypatch.delenv("CONTAINERS_CONF")
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, engine="podman")
    script = "ulimit -n; grep 'Max processes' /proc/self/limits"
    result = sandbox.run(SandboxSpec(("sh", "-c", script), workspace, limits=Limits(pids=100, timeout=60)))
    assert (result.reason, result.exit_code) == ("exited", 0), result.stderr
    nofile, nproc = result.stdout.decode().splitlines()
    assert int(nofile) == min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 1 << 20)
    assert nproc.split()[2:4] == ["100", "100"]
