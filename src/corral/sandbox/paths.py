"""Which host paths a sandbox sees, which it may not change, and which it may not see.

All three are decided here from the spec and a look at the host, and handed to the bwrap argv
builder as plain data (``Layout``):

- system: ``/usr`` and ``/etc`` read-only, and ``/bin``, ``/lib``... as the host has them
  (symlinks on merged-/usr systems);
- protected: files inside the workspace that become code outside it (git hooks and config, shell
  rc files, editor and agent settings). Those that exist are bound read-only onto themselves and
  their parent directories are pinned (bound onto themselves) so they cannot be renamed away.
  Nothing is ever created on the host to mask a path: one that does not exist is looked for
  again after the run, and if the sandbox created it, it is removed and reported;
- hidden: credentials and homes. Only what is bound is visible at all, so a hidden path needs a
  mask only where it lies inside something bound; a bind inside a secret is refused.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from corral.errors import UsageError, WorkspaceError
from corral.sandbox.spec import SandboxSpec

__all__ = ["Layout", "find_protected", "plan_layout", "remove_created"]

SYSTEM_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
PROTECTED_NAMES = (
    ".gitmodules",
    ".gitconfig",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".ripgreprc",
    ".mcp.json",
    ".vscode",
    ".idea",
)
PROTECTED_SUBPATHS = (".git/hooks", ".git/config", ".claude/commands", ".claude/agents")
PROTECTED_DEPTH = 3
SKIP_DIRS = frozenset({".git", "node_modules", ".venv", "__pycache__"})
HOME_SECRETS = (
    ".ssh",
    ".gnupg",
    ".aws",
    ".azure",
    ".kube",
    ".docker",
    ".netrc",
    ".git-credentials",
    ".npmrc",
    ".pypirc",
    ".config/gcloud",
    ".config/gh",
    ".claude",
    ".claude.json",
    ".local/share/corral",
)


@dataclasses.dataclass(frozen=True)
class Layout:
    """The host facts the argv is built from."""

    system: tuple[tuple[str, str | None], ...]
    """``(path, symlink target)``; target ``None`` means bind read-only."""
    protected: tuple[Path, ...]
    pinned: tuple[Path, ...]
    masks: tuple[tuple[Path, bool], ...]
    """``(path, is_dir)`` hidden under an empty read-only tmpfs or /dev/null."""


def system_entries(root: Path = Path("/")) -> tuple[tuple[str, str | None], ...]:
    entries: list[tuple[str, str | None]] = []
    for name in SYSTEM_DIRS:
        path = root / name
        if path.is_symlink():
            entries.append((f"/{name}", str(path.readlink())))
        elif path.is_dir():
            entries.append((f"/{name}", None))
    return tuple(entries)


def _walk(workspace: Path, depth: int) -> Iterator[Path]:
    """The workspace and its directories down to ``depth``, not following symlinks."""
    level = [workspace]
    for _ in range(depth + 1):
        following: list[Path] = []
        for directory in level:
            yield directory
            try:
                with os.scandir(directory) as entries:
                    following.extend(
                        Path(e.path)
                        for e in entries
                        if e.is_dir(follow_symlinks=False)
                        and e.name not in SKIP_DIRS
                        and e.name not in PROTECTED_NAMES
                        and not e.name.startswith(".claude")
                    )
            except OSError:
                continue
        level = following


def _no_symlinks(directory: Path, relative: str) -> bool:
    """Whether ``directory/relative`` exists with no symlink on the way (so a bind cannot be redirected)."""
    path = directory
    for part in relative.split("/"):
        path = path / part
        if not os.path.lexists(path) or path.is_symlink():
            return False
    return True


def find_protected(workspace: Path, depth: int = PROTECTED_DEPTH) -> frozenset[Path]:
    """Protected paths that exist now in the workspace (a ``.git`` file of a worktree included).

    Symlinks are never followed or bound: a bind through a link planted by an earlier run could
    otherwise expose whatever the link points to.
    """
    found: set[Path] = set()
    for directory in _walk(workspace, depth):
        for name in (*PROTECTED_NAMES, *PROTECTED_SUBPATHS):
            if _no_symlinks(directory, name):
                found.add(directory / name)
        git = directory / ".git"
        if git.is_file() and not git.is_symlink():
            found.add(git)
    return frozenset(found)


def _created(workspace: Path, depth: int = PROTECTED_DEPTH) -> frozenset[Path]:
    """Protected paths present now, symlinks included (a planted link counts as created)."""
    found = {
        directory / name
        for directory in _walk(workspace, depth)
        for name in (*PROTECTED_NAMES, *PROTECTED_SUBPATHS)
        if os.path.lexists(directory / name)
    }
    return frozenset(found)


def remove_created(workspace: Path, before: frozenset[Path]) -> list[Path]:
    """Remove protected paths the sandbox created; return them."""
    import shutil

    created = sorted(_created(workspace) - before)
    for path in created:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return created


def _pins(workspace: Path, protected: Iterable[Path]) -> tuple[Path, ...]:
    pins: set[Path] = set()
    for path in protected:
        for parent in path.parents:
            if parent == workspace or not parent.is_relative_to(workspace):
                break
            pins.add(parent)
    return tuple(sorted(pins, key=lambda p: (len(p.parts), p)))


def secret_paths(spec: SandboxSpec, secrets: Iterable[Path]) -> list[Path]:
    """Paths never visible: corral's own, the spec's deny list, credentials in homes, the SSH agent.

    Homes themselves (the caller's and ``/root``) are hidden by not being bound at all.
    """
    never = [*secrets, *spec.deny, *(home / name for home in (Path.home(), Path("/root")) for name in HOME_SECRETS)]
    sock = os.environ.get("SSH_AUTH_SOCK")
    if sock:
        never.append(Path(sock))
    return [p.absolute() for p in never]


def plan_layout(spec: SandboxSpec, secrets: Iterable[Path], protected: Iterable[Path]) -> Layout:
    """Check the spec's paths against the host and decide the mounts."""
    workspace = spec.workspace
    if not workspace.is_dir():
        msg = f"The workspace {workspace} does not exist or is not a directory; create it or pass another --workspace."
        raise WorkspaceError(msg)
    never = secret_paths(spec, secrets)
    for bind in (workspace, *spec.ro_binds):
        if not os.path.lexists(bind):
            msg = f"The path {bind} to bind read-only does not exist; fix the --ro value."
            raise WorkspaceError(msg)
        for secret in never:
            if bind == secret or bind.is_relative_to(secret):
                msg = (
                    f"The path {bind} lies inside {secret}, which holds secrets and is never visible in a "
                    f"sandbox; bind a directory outside it."
                )
                raise UsageError(msg)
    trees = (Path("/usr"), Path("/etc"), workspace, *spec.ro_binds)
    masks = tuple(
        (secret, secret.is_dir() and not secret.is_symlink())
        for secret in dict.fromkeys(never)
        if os.path.lexists(secret) and any(secret.is_relative_to(tree) and secret != tree for tree in trees)
    )
    protected = tuple(sorted(protected))
    return Layout(system_entries(), protected, _pins(workspace, protected), masks)
