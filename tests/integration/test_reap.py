"""What a killed caller leaves behind is removed by the next start."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.spec import Limits, SandboxSpec
from tests.tools import require_root

pytestmark = pytest.mark.sandbox

SLOT = 250  # far above what concurrent test runs use


def test_reap_removes_cgroups_processes_staging_and_gives_the_workspace_back(
    sandbox: BwrapSandbox, workspace: Path
) -> None:
    require_root()
    runtime = sandbox.settings.runtime
    uid = sandbox.settings.sandbox_uid_base + SLOT
    # What a caller killed mid-run leaves: a group with a live process in it, a staging entry,
    # a workspace owned by the sandbox uid, and the slot's record of whom to give it back to.
    group = sandbox.driver.create(f"s{SLOT}", Limits(pids=8))
    orphan = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: _join(group.procs_files()))
    (runtime / "stage" / f"s{SLOT}" / "0").mkdir(parents=True, exist_ok=True)
    (workspace / "made-inside.txt").write_text("x")
    for path in (workspace, workspace / "made-inside.txt"):
        os.chown(path, uid, uid)
    (runtime / "slots").mkdir(parents=True, exist_ok=True)
    (runtime / "slots" / f"{SLOT}.lock").write_text(
        json.dumps({"pid": 1, "workspace": str(workspace), "owner": [0, 0], "uid": uid})
    )
    try:
        reaped = sandbox.reap()
        assert f"cgroups of s{SLOT}" in reaped
        assert f"ownership of {workspace}" in reaped
        assert orphan.wait(timeout=5) == -9
        assert not any(d.exists() for d in group.dirs)
        assert not (runtime / "stage" / f"s{SLOT}").exists()
        assert workspace.stat().st_uid == 0
        assert (workspace / "made-inside.txt").stat().st_uid == 0
        assert sandbox.reap() == []  # nothing twice
    finally:
        orphan.kill()
        orphan.wait()


def test_a_busy_slot_is_left_alone(sandbox: BwrapSandbox, workspace: Path) -> None:
    """A concurrent run holds its slot; reaping never touches it."""
    require_root()
    seen: list[list[str]] = []
    result = sandbox.run(
        SandboxSpec(("sleep", "0.3"), workspace),
        on_start=lambda proc: seen.append(BwrapSandbox(sandbox.settings).reap()),
    )
    assert result.ok
    assert seen == [[]]


def _join(procs_files: tuple[Path, ...]) -> None:
    for procs in procs_files:
        procs.write_text("0")
