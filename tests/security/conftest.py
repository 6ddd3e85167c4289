"""Fixtures of the escape tests: an attacker, and a check that no run leaves anything behind."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.spec import RunResult
from corral.settings import Settings
from tests.security.attack import Attacker, host_mounts, leftovers

LEFTOVER_GRACE = 3.0
"""Seconds a killed tree may take to disappear (die-with-parent is asynchronous)."""


@pytest.fixture
def attacker(sandbox: BwrapSandbox, workspace: Path) -> Attacker:
    return Attacker(sandbox, workspace)


@pytest.fixture(autouse=True)
def nothing_left_behind(sandbox: BwrapSandbox, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After every attack: no process or cgroup of the slots its sandboxes ran in, and no new host mount.

    Only this test's slots are looked at, so that sandboxes other test runs start meanwhile do not count.
    """
    used: set[int] = set()
    run = BwrapSandbox.run

    def recording_run(self: BwrapSandbox, *args: Any, **kwargs: Any) -> RunResult:
        result = run(self, *args, **kwargs)
        used.add(int(result.sandbox_id.removeprefix("s")))
        return result

    monkeypatch.setattr(BwrapSandbox, "run", recording_run)
    mounts = host_mounts()
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE
    while (left := leftovers(settings, sandbox.driver, used)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == set(), f"left behind on the host: {sorted(left)}"
    assert host_mounts() - mounts == set()
