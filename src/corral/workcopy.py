"""The copy of a directory a ``--cwd`` session works on, what the session changed in it, and keeping that.

The current directory (``.git`` included) is copied into the session's workspace; ``track.git``, a
git directory only the host sees, records the tree of the workspace before and after, so nothing
the agent writes into the copy's own ``.git`` ever runs on the host. The changes are kept as a
patch file, or as a branch of the host repository made with ``git fetch`` (its working tree is
never touched).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

from corral.errors import WorkspaceError
from corral.session import SessionDirs

__all__ = ["Changes", "changes", "copy_in", "keep_branch", "keep_patch", "snapshot"]


@dataclasses.dataclass(frozen=True)
class Changes:
    """What a ``--cwd`` session changed, as trees recorded in ``track.git``."""

    base: str
    final: str
    status: str
    """``git diff --name-status`` between the two trees."""
    stat: str

    @property
    def empty(self) -> bool:
        return self.base == self.final


def _git(dirs: SessionDirs, *args: str, index: Path | None = None) -> str:
    """Run git on ``track.git`` with the workspace as its work tree; its output."""
    from corral import gitcmd

    extra = {"GIT_DIR": str(dirs.track), "GIT_WORK_TREE": str(dirs.work)}
    if index is not None:
        extra["GIT_INDEX_FILE"] = str(index)
    env = gitcmd.environment(os.environ, extra)
    done = gitcmd.run(list(args), what=f"recording the session workspace ({args[0]})", env=env, cwd=dirs.work)
    return done.stdout.decode(errors="replace").strip()


def copy_in(source: Path, dirs: SessionDirs) -> str:
    """Copy ``source`` (``.git`` included, ``cp -a``) into the workspace; the tree it starts from."""
    done = subprocess.run(
        ["cp", "-a", "--", f"{source}/.", f"{dirs.work}/"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        msg = f"Copying {source} into the session failed: {done.stderr.strip()}; check that it is readable."
        raise WorkspaceError(msg)
    from corral import gitcmd

    gitcmd.run(
        ["init", "--quiet", "--bare", str(dirs.track)], what="recording the session", env=gitcmd.environment(os.environ)
    )
    return snapshot(dirs)


def snapshot(dirs: SessionDirs) -> str:
    """The tree of the workspace now (ignored files and ``.git`` left out)."""
    index = dirs.root / "track.index"
    _git(dirs, "add", "--all", ".", index=index)
    return _git(dirs, "write-tree", index=index)


def changes(dirs: SessionDirs, base: str) -> Changes:
    final = snapshot(dirs)
    status = _git(dirs, "diff", "--name-status", base, final) if final != base else ""
    stat = _git(dirs, "diff", "--stat", base, final) if final != base else ""
    return Changes(base, final, status, stat)


def keep_patch(dirs: SessionDirs, found: Changes, dest: Path) -> Path:
    """Write the session's changes as a patch file at ``dest`` (``git apply`` takes it)."""
    dest.write_text(_git(dirs, "diff", "--binary", found.base, found.final) + "\n")
    return dest


def keep_branch(dirs: SessionDirs, found: Changes, repo: Path, name: str) -> str:
    """Put the changes on ``corral/session-<name>`` of ``repo`` by ``git fetch``; its working tree is untouched."""
    from corral import gitcmd

    host = gitcmd.environment(os.environ)
    head = gitcmd.run(
        ["rev-parse", "--verify", "-q", "HEAD^{commit}"], what="reading HEAD", env=host, cwd=repo, ok=(0, 1)
    )
    parent = head.stdout.decode().strip()
    alternates = dirs.track / "objects" / "info" / "alternates"
    git_dir = gitcmd.run(
        ["rev-parse", "--absolute-git-dir"], what=f"finding the git directory of {repo}", env=host, cwd=repo
    )
    git_dir_path = Path(git_dir.stdout.decode().strip())
    alternates.write_text(str(git_dir_path / "objects") + "\n")
    env = {"GIT_AUTHOR_NAME": "corral", "GIT_AUTHOR_EMAIL": "corral@localhost"}
    env |= {"GIT_COMMITTER_NAME": "corral", "GIT_COMMITTER_EMAIL": "corral@localhost"}
    args = ["commit-tree", found.final, "-m", f"corral session {name}"]
    if parent:
        args += ["-p", parent]
    commit = (
        gitcmd.run(
            args, what="committing the session", env=gitcmd.environment(os.environ, {"GIT_DIR": str(dirs.track), **env})
        )
        .stdout.decode()
        .strip()
    )
    branch = f"corral/session-{name}"
    taken = gitcmd.run(
        ["rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
        what=f"reading the branches of {repo}",
        env=host,
        cwd=repo,
        ok=(0, 1),
    )
    if taken.returncode == 0:
        branch = f"{branch}-{commit[:8]}"
    track_env = gitcmd.environment(os.environ, {"GIT_DIR": str(dirs.track)})
    gitcmd.run(["update-ref", "refs/heads/session", commit], what="recording the session", env=track_env)
    gitcmd.run(
        ["fetch", "--quiet", "--no-tags", str(dirs.track), f"refs/heads/session:refs/heads/{branch}"],
        what=f"fetching the session into {repo}",
        env=host,
        cwd=repo,
    )
    return branch
