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
import functools
import os
import re
from collections.abc import Iterable
from pathlib import Path

from corral.errors import UsageError, WorkspaceError
from corral.sandbox.spec import SandboxSpec

__all__ = ["Layout", "find_protected", "plan_layout", "present", "remove_created"]

SYSTEM_DIRS = ("usr", "etc", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
PROTECTED_NAMES = frozenset(
    {
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
    }
)
PROTECTED_IN = {
    ".git": frozenset(
        {"hooks", "config", "config.worktree", "commondir", "modules", "worktrees", "objects/info/alternates"}
    ),
    ".claude": frozenset({"commands", "agents"}),
}
"""Protected entries inside these directories (``.git/hooks``...); ``objects/info/alternates`` names
where git reads objects from (a job's checkout borrows the mirror's), so host git must not be led elsewhere."""
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


@functools.cache
def system_entries(root: Path = Path("/")) -> tuple[tuple[str, str | None], ...]:
    entries: list[tuple[str, str | None]] = []
    for name in SYSTEM_DIRS:
        path = root / name
        if path.is_symlink():
            entries.append((f"/{name}", str(path.readlink())))
        elif path.is_dir():
            entries.append((f"/{name}", None))
    return tuple(entries)


def _listing(directory: Path) -> dict[str, os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return {entry.name: entry for entry in entries}
    except OSError:
        return {}


def _through_real_dirs(path: Path, workspace: Path) -> bool:
    """Whether ``path`` exists and every directory between the workspace and it is a real one (no link)."""
    parent = path.parent
    while parent != workspace:
        if parent.is_symlink() or not parent.is_dir() or not parent.is_relative_to(workspace):
            return False
        parent = parent.parent
    return os.path.lexists(path)


def _hooks_path(directory: Path) -> Path | None:
    """The directory ``core.hooksPath`` in ``directory/.git/config`` names (husky and the like), if any."""
    try:
        text = (directory / ".git" / "config").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^\s*hookspath\s*=\s*(.+?)\s*$", text, re.IGNORECASE | re.MULTILINE)
    if match is None:
        return None
    value = Path(match[1].strip('"')).expanduser()
    return value if value.is_absolute() else directory / value


def present(workspace: Path, depth: int = PROTECTED_DEPTH) -> frozenset[Path]:
    """Protected paths present now, reached without following links (a link itself counts).

    One listing per directory, down to ``depth`` directories, never into a link, ``.git`` or
    ``node_modules``. This is the snapshot compared before and after a run; ``.git`` counts in
    every form, since a ``.git`` the sandbox made would hand host git a config and hooks of its
    choosing.
    """
    found: set[Path] = set()
    level = [workspace]
    for _ in range(depth + 1):
        deeper: list[Path] = []
        for directory in level:
            entries = _listing(directory)
            found.update(directory / name for name in PROTECTED_NAMES.intersection(entries))
            if ".git" in entries:
                found.add(directory / ".git")
            for name, inside in PROTECTED_IN.items():
                if name in entries and entries[name].is_dir(follow_symlinks=False):
                    found.update(directory / name / child for child in inside.intersection(_listing(directory / name)))
                    found.update(
                        directory / name / child
                        for child in inside
                        if "/" in child and _through_real_dirs(directory / name / child, directory / name)
                    )
            if ".git" in entries and entries[".git"].is_dir(follow_symlinks=False):
                hooks = _hooks_path(directory)
                if hooks is not None and _through_real_dirs(hooks, workspace):
                    found.add(hooks)
            deeper.extend(
                Path(entry.path)
                for name, entry in entries.items()
                if name not in SKIP_DIRS
                and name not in PROTECTED_NAMES
                and name not in PROTECTED_IN
                and entry.is_dir(follow_symlinks=False)
            )
        level = deeper
    return frozenset(found)


def find_protected(workspace: Path, snapshot: frozenset[Path] | None = None) -> frozenset[Path]:
    """Protected paths to bind read-only: real files and directories only, never through a link.

    ``snapshot`` is what ``present`` found, when the caller has it already.

    Where a protected path is a link to somewhere in the workspace (a hooks directory kept in the
    tree), the link's target is protected instead; a link elsewhere leads outside what is bound.
    A ``.git`` directory itself stays writable (objects, refs, the index); its dangerous parts are
    in the lists.
    """
    found: set[Path] = set()
    for path in present(workspace) if snapshot is None else snapshot:
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if target.is_relative_to(workspace) and target != workspace and target.exists():
                found.add(target)
        elif not (path.name == ".git" and path.is_dir()):
            found.add(path)
    return frozenset(found)


def remove_created(workspace: Path, before: frozenset[Path]) -> list[Path]:
    """Remove protected paths the sandbox created; return them. Never follows a link: a link is unlinked."""
    import shutil

    created = sorted(present(workspace) - before)
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


@functools.cache
def _home_secrets(home: Path, ssh_agent: str | None) -> tuple[Path, ...]:
    """Credentials in ``home`` and root's home, and the SSH agent socket, resolved (cached per value)."""
    found = [base / name for base in (home, Path("/root")) for name in HOME_SECRETS]
    if ssh_agent:
        found.append(Path(ssh_agent))
    return tuple(Path(os.path.realpath(p)) for p in found)


def secret_paths(spec: SandboxSpec, secrets: Iterable[Path]) -> list[Path]:
    """Paths never visible: corral's own, the spec's deny list, credentials in homes, the SSH agent.

    Homes themselves (the caller's and ``/root``) are hidden by not being bound at all.
    """
    own = (Path(os.path.realpath(p)) for p in (*secrets, *spec.deny))
    return [*own, *_home_secrets(Path.home(), os.environ.get("SSH_AUTH_SOCK"))]


def _within(path: str, tree: str) -> bool:
    """Whether ``path`` is ``tree`` or below it (resolved absolute paths, compared as text)."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def plan_layout(
    spec: SandboxSpec, secrets: Iterable[Path], protected: Iterable[Path], shared: Iterable[Path] = ()
) -> Layout:
    """Check the spec's paths against the host and decide the mounts.

    ``shared`` are trees inside a secret that may still be bound (corral's job checkouts and git
    mirrors live in its home, next to its credentials).
    """
    workspace = spec.workspace
    if not workspace.is_dir():
        msg = f"The workspace {workspace} does not exist or is not a directory; create it or pass another --workspace."
        raise WorkspaceError(msg)
    never = {str(path): path for path in secret_paths(spec, secrets)}
    for bind in (workspace, *spec.ro_binds):
        if not os.path.lexists(bind):
            msg = f"The path {bind} to bind read-only does not exist; fix the --ro value."
            raise WorkspaceError(msg)
        if any(_within(str(bind), str(tree)) for tree in shared):
            continue
        for secret in never:
            if _within(str(bind), secret):
                msg = (
                    f"The path {bind} lies inside {secret}, which holds secrets and is never visible in a "
                    f"sandbox; bind a directory outside it."
                )
                raise UsageError(msg)
    trees = [str(tree) for tree in (Path("/usr"), Path("/etc"), workspace, *spec.ro_binds)]
    masks = tuple(
        (path, path.is_dir() and not path.is_symlink())
        for secret, path in never.items()
        if any(secret != tree and _within(secret, tree) for tree in trees) and os.path.lexists(path)
    )
    protected = tuple(sorted(protected))
    return Layout(system_entries(), protected, _pins(workspace, protected), masks)
