"""Fixtures of the escape tests: an attacker on every backend, and a check that no run leaves anything behind.

Every test that uses the ``sandbox`` (or the ``attacker``) runs once per backend: bubblewrap, and
Docker and Podman with the tests' engines. A test about one backend's own machinery says so with
``@pytest.mark.backends("bwrap")``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox.base import SandboxBackend
from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.container import LABEL, ContainerSandbox
from corral.sandbox.spec import RunResult
from corral.settings import Settings
from tests.security.attack import Attacker, host_mounts, leftovers
from tests.tools import ENGINE_IMAGE, engine_containers, require, require_engine

BACKENDS = ("bwrap", "docker", "podman")
LEFTOVER_GRACE = 3.0
"""Seconds a killed tree may take to disappear (die-with-parent is asynchronous)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("backends")
        metafunc.parametrize("backend", marker.args if marker else BACKENDS)


@pytest.fixture
def sandbox(backend: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> SandboxBackend:
    if backend in ("docker", "podman", "runsc"):
        engine = "podman" if backend == "podman" else "docker"
        require_engine(monkeypatch, engine)
        runtime = "runsc" if backend == "runsc" else "runc"
        return ContainerSandbox(settings, image=ENGINE_IMAGE, engine=engine, runtime=runtime)
    require("bwrap")
    return BwrapSandbox(settings)


@pytest.fixture
def attacker(sandbox: SandboxBackend, workspace: Path) -> Attacker:
    return Attacker(sandbox, workspace)


@pytest.fixture(autouse=True)
def nothing_left_behind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every attack: no process, cgroup or container of the slots its sandboxes ran in, and no new host mount.

    Only this test's slots are looked at, so that sandboxes other test runs start meanwhile do not count.
    """
    if "sandbox" not in request.fixturenames:
        yield
        return
    settings: Settings = request.getfixturevalue("settings")
    backend = request.getfixturevalue("backend")
    engine = None if backend == "bwrap" else "podman" if backend == "podman" else "docker"
    used: set[int] = set()
    for backend in (BwrapSandbox, ContainerSandbox):
        monkeypatch.setattr(backend, "run", _recording(backend.run, used))
    mounts = host_mounts()
    yield
    driver = BwrapSandbox(settings).driver
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (
        left := leftovers(settings, driver, used) | (_containers(engine, used) if engine else set())
    ) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == set(), f"left behind on the host: {sorted(left)}"
    assert host_mounts() - mounts == set()


def _recording(run: Any, used: set[int]) -> Any:
    def recording_run(self: Any, *args: Any, **kwargs: Any) -> RunResult:
        result: RunResult = run(self, *args, **kwargs)
        used.add(int(result.sandbox_id.removeprefix("s")))
        return result

    return recording_run


def _containers(engine: str, slots: set[int]) -> set[str]:
    """Containers of the given slots that still exist in ``engine`` (each run removes its own)."""
    return {f"container {name}" for slot in sorted(slots) for name in engine_containers(engine, f"{LABEL}=s{slot}")}
