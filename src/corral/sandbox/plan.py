"""What every backend decides around a run: the spec with real host paths, the mounts (secrets
hidden, protected paths read-only), and afterwards the protected paths the run created."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from corral.sandbox import paths
from corral.sandbox.spec import SandboxSpec, Violation
from corral.settings import Settings

__all__ = ["plan_run", "real_paths", "remove_created", "secret_trees", "shared_trees"]


def secret_trees(settings: Settings) -> list[Path]:
    """What no sandbox may see: corral's home and runtime, and a Claude login adopted from elsewhere."""
    found = [settings.home, settings.runtime]
    if (settings.home / "credentials" / "claude.json").exists():
        from corral.secrets import CredentialStore

        adopted = CredentialStore(settings.home).adopted_dir()
        found += [adopted] if adopted is not None else []
    return found


def shared_trees(settings: Settings) -> list[Path]:
    """The trees of corral's home that sandboxes may be given: job and session directories, git mirrors."""
    home = Path(os.path.realpath(settings.home))
    return [home / "jobs", home / "git", home / "sessions"]


def plan_run(spec: SandboxSpec, settings: Settings) -> tuple[SandboxSpec, frozenset[Path], paths.Layout]:
    """What every backend decides before a run: the spec with real paths, the protected entries the
    workspace has now (to find those the run creates), and the mounts."""
    spec = real_paths(spec)
    before = paths.present(spec.workspace)
    protected = paths.find_protected(spec.workspace, before)
    return spec, before, paths.plan_layout(spec, secret_trees(settings), protected, shared_trees(settings))


def remove_created(workspace: Path, before: frozenset[Path]) -> tuple[Violation, ...]:
    """Remove the protected paths the run created in ``workspace``; each is a violation to report."""
    return tuple(
        Violation("protected-path", str(path), "created inside the sandbox; removed after the run")
        for path in paths.remove_created(workspace, before)
    )


def real_paths(spec: SandboxSpec) -> SandboxSpec:
    """The spec with every host path resolved, so links and ``..`` cannot dodge a comparison."""

    def real(path: Path) -> Path:
        return Path(os.path.realpath(path))

    return dataclasses.replace(
        spec,
        workspace=real(spec.workspace),
        cwd=real(spec.cwd) if spec.cwd is not None else None,
        ro_binds=tuple(map(real, spec.ro_binds)),
        deny=tuple(map(real, spec.deny)),
    )
