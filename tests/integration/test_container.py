"""The container backend for real: the tests' Docker engine, its image, and gVisor where it is registered.

The escape suite (``tests/security``) runs its attacks on this backend too; these tests cover the
rest of a run: output, the workspace handover, the timeout, egress through the relay under runc
and under runsc, what a killed caller leaves and who removes it, and the sentences a missing
image or runtime gets.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.egress.policy import Policy
from corral.errors import SandboxUnavailableError
from corral.sandbox.container import LABEL, ContainerSandbox
from corral.sandbox.spec import Limits, SandboxSpec
from corral.settings import Settings
from tests.bridged import Bridge, MakeBridge, Origins, bridges, serve_origins
from tests.tools import ENGINE_IMAGE, require_engine, require_root

pytestmark = pytest.mark.sandbox

LIMITS = Limits(memory=512 << 20, pids=128, timeout=60)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> None:
    require_root()
    require_engine(monkeypatch)


@pytest.fixture
def docker(engine: None, settings: Settings) -> ContainerSandbox:
    return ContainerSandbox(settings, image=ENGINE_IMAGE)


@pytest.fixture
def origins() -> Iterator[Origins]:
    with serve_origins() as servers:
        yield servers


@pytest.fixture
def bridge(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Bridge]:
    make: MakeBridge
    with bridges(settings, tmp_path, monkeypatch, {"allowed.test": ["127.0.0.1"]}) as make:
        yield make()


def containers(slot: str | None = None) -> list[str]:
    """corral's containers in the engine (of one slot, if given)."""
    label = LABEL if slot is None else f"{LABEL}={slot}"
    listed = subprocess.run(
        ["docker", "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return listed.stdout.split()


def test_output_streams_and_the_workspace_comes_back(docker: ContainerSandbox, workspace: Path) -> None:
    chunks: list[tuple[str, bytes]] = []
    script = "echo out; echo err >&2; id -u > made.txt; exit 3"
    result = docker.run(
        SandboxSpec(("sh", "-c", script), workspace, limits=LIMITS), on_output=lambda s, c: chunks.append((s, c))
    )
    assert (result.reason, result.exit_code) == ("exited", 3)
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")
    assert b"".join(c for s, c in chunks if s == "stdout") == b"out\n"
    slot = int(result.sandbox_id.removeprefix("s"))
    assert (workspace / "made.txt").read_text().strip() == str(docker.settings.sandbox_uid_base + slot)
    assert (workspace / "made.txt").stat().st_uid == 0  # handed back to the workspace's owner
    assert containers(result.sandbox_id) == []


def test_the_timeout_kills_the_container(docker: ContainerSandbox, workspace: Path) -> None:
    result = docker.run(SandboxSpec(("sleep", "600"), workspace, limits=Limits(timeout=2)))
    assert (result.reason, result.exit_code) == ("timeout", 124)
    assert result.duration < 30
    assert containers(result.sandbox_id) == []


def test_a_placed_file_is_read_only_inside(docker: ContainerSandbox, workspace: Path) -> None:
    dest = Path("/etc/claude-code/managed-settings.json")
    script = f"cat {dest}; echo x >> {dest} 2>/dev/null || echo refused"
    result = docker.run(SandboxSpec(("sh", "-c", script), workspace, files={dest: b"{}\n"}, limits=LIMITS))
    assert result.stdout == b"{}\nrefused\n"


def test_egress_goes_through_the_proxy_and_nowhere_else(
    docker: ContainerSandbox, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    target = f"127.0.0.1:{origins.http}"
    script = (
        f"curl -sS http://{target}/through; "
        f"curl -sS -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{origins.other}/denied; echo; "
        f"curl -sS --noproxy '*' http://{target}/direct 2>&1 | head -c 40"
    )
    with bridge.door(Policy([target])) as door:
        result = docker.run(SandboxSpec(("sh", "-c", script), workspace, egress=door.path, limits=LIMITS))
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
home, workspace, image = sys.argv[1:]
ContainerSandbox(Settings(home=Path(home)), image=image).run(SandboxSpec(("sleep", "600"), Path(workspace)))
"""


def test_a_killed_callers_container_is_reaped_by_the_next_run(
    docker: ContainerSandbox, workspace: Path, settings: Settings
) -> None:
    """The caller is SIGKILLed mid-run: the engine keeps its container running until the next run reaps it."""
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, str(settings.home), str(workspace), ENGINE_IMAGE],
    )
    try:
        deadline = time.monotonic() + 60
        while not (left := containers()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left, "the caller never started its container"
    finally:
        caller.kill()
        caller.wait()
    time.sleep(0.5)
    assert containers() == left  # nobody removed it
    result = docker.run(SandboxSpec(("true",), workspace))
    assert result.ok
    assert containers() == []
    assert workspace.stat().st_uid == 0  # the workspace went back to its owner too


def test_a_missing_image_gets_a_sentence(engine: None, settings: Settings, workspace: Path) -> None:
    sandbox = ContainerSandbox(settings, image="corral-no-such-image:1")
    with pytest.raises(
        SandboxUnavailableError, match=r"The image 'corral-no-such-image:1' is not in the docker engine"
    ):
        sandbox.run(SandboxSpec(("true",), workspace))


def test_runsc_runs_the_command_under_gvisor(engine: None, settings: Settings, workspace: Path) -> None:
    """gVisor answers system calls with its own kernel (which reports itself as Linux 4.4.0)."""
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, runtime="runsc")
    assert sandbox.runtime_registered("runsc")
    result = sandbox.run(SandboxSpec(("sh", "-c", "uname -r; id -u; echo hi > made.txt"), workspace, limits=LIMITS))
    assert result.ok, result.stderr
    uname, uid = result.stdout.decode().split()
    assert uname == "4.4.0"
    assert int(uid) == settings.sandbox_uid_base + int(result.sandbox_id.removeprefix("s"))
    assert (workspace / "made.txt").read_text() == "hi\n"
    assert containers(result.sandbox_id) == []


def test_runsc_egress_goes_through_the_relay_inside(
    engine: None, settings: Settings, workspace: Path, bridge: Bridge, origins: Origins
) -> None:
    """gVisor has its own network stack: the relay runs inside, on the proxy socket mounted in."""
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, runtime="runsc")
    target = f"127.0.0.1:{origins.http}"
    with bridge.door(Policy([target])) as door:
        result = sandbox.run(
            SandboxSpec(("curl", "-sS", f"http://{target}/gvisor"), workspace, egress=door.path, limits=LIMITS)
        )
    assert result.ok, result.stderr
    assert [seen["requestline"] for seen in origins.seen] == ["GET /gvisor HTTP/1.1"]


def test_an_unregistered_runtime_is_refused_before_anything_starts(
    engine: None, settings: Settings, workspace: Path
) -> None:
    sandbox = ContainerSandbox(settings, image=ENGINE_IMAGE, runtime="runsc")
    sandbox.runtime_registered = lambda runtime: False  # type: ignore[method-assign]
    with pytest.raises(SandboxUnavailableError, match=r"runsc is not registered with the docker engine; install it"):
        sandbox.run(SandboxSpec(("true",), workspace))
