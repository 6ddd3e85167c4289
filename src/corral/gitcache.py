"""The git cache: one bare mirror per remote, and per job a checkout that borrows its objects.

``GitCache(root)`` keeps the mirrors under ``root/mirrors`` (``gitmirrors``: cloned once, then
fetched at most once per ``refresh_interval``; a ref a mirror does not have yet fetches at once).
A checkout is made like ``git clone --shared --no-checkout`` of the mirror would make it, without
its transport round trip or a git process:
what ``git init`` writes, ``objects/info/alternates`` pointing at the mirror (objects are
borrowed, never hard-linked: the sandbox's uid will own the checkout), ``origin`` set to the
credential-free URL with the mirror's branches as ``refs/remotes/origin/*`` and its tags, then
branch ``corral/<job-id>`` checked out. The sandbox must see ``Checkout.mirror`` read-only.

As root, a checkout writes none of the commit's files: it is an overlay (``gitlayers``) of a tree
prepared once per commit under ``root/trees`` (``gittrees``), with the job's ``.git`` and changes
in the checkout directory itself, which is the overlay's upper layer; ``.git/index`` starts as a
copy of the tree's ready index, so git re-hashes nothing. ``attach`` and ``detach`` mount and
unmount it around each use, ``reap`` unmounts what a killed runner left, ``remove`` unmounts
first. Where an overlay cannot be mounted (not root, or a file system that refuses it) the
checkout is a plain one as above; ``Checkout.overlay`` says which, ``fallback`` why.

Credentials: an ``https://user:token@host/...`` URL is accepted; the checkout's ``origin`` never
holds its userinfo, and ``push`` gets the token to git as the mirrors do (``gitmirrors``). Every
message masks URLs.

After the agent, ``finish`` (or ``commit`` and ``diff``) and ``push`` run git on the host over a
tree the agent wrote. Before each, ``.git`` is inspected (``gitinspect``: no symlinks, no
``commondir``, alternates at the mirror alone, only the config keys ``git clone`` writes); anything
else is refused with a ``GitError``. Every command also carries
``gitcmd.HARDENING``. ``finish`` asks ``git status`` first and skips the commit and the diff of
a job that changed nothing.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from corral.errors import GitError, RepoError, WorkspaceError
from corral.gitcmd import (
    Remote,
    check_ref,
    check_url,
    config_section,
    git,
    mask_url,
    packed_refs,
    parse_author,
    parse_status,
)
from corral.gitinspect import Inspector
from corral.gitlayers import Layers
from corral.gitmirrors import Mirrors, credentials, locked
from corral.gittrees import Tree, TreeCache
from corral.secrets import Secret

__all__ = ["Checkout", "Diff", "GitCache", "check_ref", "check_url", "mask_url"]

COMMIT = ("commit", "--quiet", "--no-verify", "--no-gpg-sign", "--cleanup=verbatim", "--allow-empty-message")
FETCH_SPEC = "+refs/heads/*:refs/remotes/origin/*"


@dataclasses.dataclass(frozen=True)
class Checkout:
    """A job's checkout: ``path`` on ``branch``, started at commit ``base``.

    It borrows its objects from ``mirror``, which a sandbox must therefore see (read-only).
    """

    path: Path
    branch: str
    base: str
    mirror: Path
    overlay: bool = False
    """Whether it was made as an overlay of a prepared tree (else every file was written)."""


@dataclasses.dataclass(frozen=True)
class Diff:
    """Everything from a checkout's base to its branch: the patch and the paths it touches."""

    text: str
    files: tuple[str, ...]


class GitCache:
    """Mirrors under ``root/mirrors`` and the checkouts made from them."""

    def __init__(
        self,
        root: Path,
        *,
        allow_local: bool = False,
        author: str = "corral <corral@localhost>",
        refresh_interval: float = 0.0,
        overlay: bool = True,
    ) -> None:
        self.root = root.absolute()
        self.author = author
        self._mirrors = Mirrors(self.mirrors, allow_local=allow_local, refresh_interval=refresh_interval)
        self.overlay = overlay
        """Whether to make overlay checkouts where they can be mounted; ``False`` writes every file."""
        self.fallback: str | None = None if overlay else "overlay checkouts are turned off"
        """Why the last checkout was a plain one; ``None`` after an overlay checkout."""
        self.trees = TreeCache(self.root / "trees")
        self.layers = Layers(self.root / "layers", self.trees)
        self._inspector = Inspector(self._list_config)
        name, email = parse_author(author)
        self._identity = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }

    @property
    def mirrors(self) -> Path:
        return self.root / "mirrors"

    def mirror(self, url: str) -> Path:
        """The fresh mirror of ``url``: cloned the first time, fetched with ``--prune`` after."""
        return self._mirrors.refresh(self._mirrors.remote(url))[0]

    def checkout(self, url: str, ref: str | None, job_id: str, dest: Path) -> Checkout:
        """Refresh the mirror (within ``refresh_interval``), then check out ``ref`` (default: HEAD) at ``dest``."""
        remote = self._mirrors.remote(url)
        if ref is not None:
            check_ref(ref)
        branch = _branch(job_id)
        dest = dest.absolute()
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            msg = f"The checkout directory {dest} exists and is not an empty directory; give a new path."
            raise WorkspaceError(msg)
        mirror, fetched = self._mirrors.refresh(remote)
        created = not dest.exists()
        tree: Tree | None = None
        try:
            with locked(mirror, exclusive=False):
                base = self._mirrors.resolve(mirror, ref, remote, final=fetched)
            if base is None:  # the mirror was not fetched just now: the ref may be newer than it
                mirror, _ = self._mirrors.refresh(remote, force=True)
            with locked(mirror, exclusive=False):
                if base is None:
                    base = self._mirrors.resolve(mirror, ref, remote, final=True)
                assert base is not None
                if self.overlay:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self.fallback = self.layers.why_not(dest)
                    if self.fallback is None:
                        tree = self.layers.create(dest, mirror, base)
                if tree is None and self.layers.find(dest) is not None:
                    self.layers.forget(dest)  # a note left by a checkout once here must not mount over this one
                self._init(dest, mirror, remote)
            if tree is None:
                what = f"checking out {base} at {dest}"
                git(["checkout", "--quiet", "-b", branch, base], what=what, repo=dest)
            else:
                _start_branch(dest / ".git", branch, base, tree.index)
        except BaseException:
            if tree is not None:
                self.layers.forget(dest)
            _discard(dest, created=created)
            raise
        return Checkout(dest, branch, base, mirror, overlay=tree is not None)

    def attach(self, path: Path) -> bool:
        """Mount the overlay checkout at ``path`` again if it is not mounted; whether it is an overlay one.

        Its tree is built again first if it was evicted. A plain checkout needs nothing: ``False``.
        """
        return self.layers.attach(path.absolute())

    def detach(self, path: Path) -> bool:
        """Unmount the overlay checkout at ``path`` (its changes stay in ``path``); whether it was mounted."""
        return self.layers.detach(path.absolute())

    def reap(self, keep: Collection[Path] = ()) -> list[Path]:
        """Unmount every overlay checkout of this cache but those at ``keep``; the paths unmounted."""
        return self.layers.reap(keep)

    def _init(self, dest: Path, mirror: Path, remote: Remote) -> None:
        """What ``clone --shared --no-checkout`` of ``mirror`` writes, with ``origin`` at ``remote.url``."""
        gitdir = dest / ".git"
        _skeleton(gitdir)
        (gitdir / "objects" / "info" / "alternates").write_text(f"{mirror / 'objects'}\n")
        refs, tags, default = self._mirrors.refs(mirror)
        config = config_section("remote.origin", [("url", remote.url), ("fetch", FETCH_SPEC)])
        if default is not None and default in refs:
            name = default.removeprefix("refs/heads/")
            config += config_section(f"branch.{name}", [("remote", "origin"), ("merge", default)])
            (gitdir / "refs" / "remotes" / "origin").mkdir(parents=True)
            (gitdir / "refs" / "remotes" / "origin" / "HEAD").write_text(f"ref: refs/remotes/origin/{name}\n")
        with (gitdir / "config").open("a") as fh:
            fh.write(config)
        packed = [(sha, "refs/remotes/origin/" + name.removeprefix("refs/heads/")) for name, sha in refs.items()]
        packed += [(sha, name) for name, sha in tags.items()]
        if default is not None and default in refs:
            packed.append((refs[default], default))
        (gitdir / "packed-refs").write_text(packed_refs(packed))

    def commit(self, checkout: Checkout, message: str) -> str | None:
        """Commit everything in the tree on the job branch; the new HEAD, or None if nothing changed.

        If the agent left HEAD elsewhere, HEAD is put back on the job branch first (the tree is
        kept as it is), so the branch always ends with what the agent left. What git wrote in
        ``.git`` is then given to the checkout's owner, so the sandbox's uid can go on working.
        """
        self._inspect(checkout, tree=True)
        try:
            return self._commit(checkout, message)
        finally:
            _give_back(checkout.path)

    def _commit(self, checkout: Checkout, message: str) -> str | None:
        target = f"refs/heads/{checkout.branch}"
        head = git(["symbolic-ref", "--quiet", "HEAD"], what="reading HEAD", repo=checkout.path, ok=(0, 1))
        if head.stdout.decode(errors="replace").strip() != target:
            if not self._exists(checkout.path, target):
                git(["update-ref", target, checkout.base], what="recreating the job branch", repo=checkout.path)
            git(["symbolic-ref", "HEAD", target], what="putting HEAD on the job branch", repo=checkout.path)
        git(["add", "--all"], what=f"adding the changes in {checkout.path}", repo=checkout.path)
        staged = git(
            ["diff", "--cached", "--quiet", "--no-ext-diff"], what="looking for changes", repo=checkout.path, ok=(0, 1)
        )
        if staged.returncode == 0:
            return None
        git(
            [*COMMIT, "-m", message],
            what=f"committing in {checkout.path}",
            repo=checkout.path,
            env=self._identity,
        )
        return self._rev(checkout.path, "HEAD")

    def finish(self, checkout: Checkout, message: str) -> tuple[str | None, Diff]:
        """``commit`` then ``diff``, with one inspection, and neither when ``git status`` shows HEAD on
        the job branch at ``base`` and nothing changed: ``(None, an empty Diff)``."""
        self._inspect(checkout, tree=True)
        status = parse_status(
            git(
                ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all", "--ignore-submodules=none"],
                what=f"looking for changes in {checkout.path}",
                repo=checkout.path,
                env={"GIT_OPTIONAL_LOCKS": "0"},  # a look only: git must not rewrite the index as root
            ).stdout
        )
        commit = None
        if status.head != checkout.branch or status.changes:
            try:
                commit = self._commit(checkout, message)
            finally:
                _give_back(checkout.path)
        elif status.oid == checkout.base:
            return None, Diff("", ())
        return commit, self._diff(checkout)

    def diff(self, checkout: Checkout) -> Diff:
        """The patch from ``base`` to the job branch, and the paths it adds, changes or deletes."""
        self._inspect(checkout)
        return self._diff(checkout)

    def _diff(self, checkout: Checkout) -> Diff:
        span = [checkout.base, f"refs/heads/{checkout.branch}", "--"]
        text = git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", *span], what="diffing", repo=checkout.path)
        names = git(
            ["diff", "--no-ext-diff", "--no-renames", "--name-only", "-z", *span],
            what="listing changed files",
            repo=checkout.path,
        )
        files = tuple(os.fsdecode(name) for name in names.stdout.split(b"\0") if name)
        return Diff(text.stdout.decode(errors="replace"), files)

    def push(self, checkout: Checkout, url: str, token: Secret | None) -> None:
        """Push the job branch to ``url``; a token reaches git only through ``GIT_ASKPASS``."""
        remote = self._mirrors.remote(url)
        self._inspect(checkout)
        ref = f"refs/heads/{checkout.branch}"
        with credentials(remote, token) as (env, secrets):
            git(
                ["push", "--quiet", "--no-verify", "--", remote.url, f"{ref}:{ref}"],
                what=f"pushing {checkout.branch} to {remote.url}",
                repo=checkout.path,
                local=remote.local,
                env=env,
                secrets=secrets,
            )

    def remove(self, checkout: Checkout) -> None:
        """Unmount and delete the checkout (the mirror and the tree stay)."""
        path = checkout.path.absolute()
        self.layers.forget(path)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            _rmtree(path)

    # -- the parts --------------------------------------------------------------------------

    def _inspect(self, checkout: Checkout, *, tree: bool = False) -> None:
        """Refuse a checkout whose ``.git`` could make host git run or read what it should not, and
        with ``tree`` (its files are read) an overlay checkout that is not mounted."""
        if tree and self.layers.unmounted(checkout.path.absolute()):
            msg = f"The checkout {checkout.path} is an overlay that is not mounted; attach it before committing."
            raise WorkspaceError(msg)
        problems = self._inspector.problems(checkout.path / ".git", checkout.mirror)
        if problems:
            msg = (
                f"The checkout {checkout.path} was changed in ways host git must not trust "
                f"({'; '.join(problems[:5])}); corral will not run git on it."
            )
            raise GitError(msg)

    def _list_config(self, config: Path) -> bytes:
        """``git config --list --null`` of the file ``config`` alone, as git reads it."""
        listed = git(
            ["config", "--file", str(config), "--no-includes", "--list", "--null"],
            what=f"reading the config {config}",
            cwd=Path("/"),
        )
        return listed.stdout

    def _exists(self, repo: Path, ref: str) -> bool:
        found = git(["rev-parse", "--verify", "--quiet", ref], what=f"looking up {ref}", repo=repo, ok=(0, 1))
        return found.returncode == 0

    def _rev(self, repo: Path, name: str) -> str:
        return git(["rev-parse", "--verify", name], what=f"resolving {name}", repo=repo).stdout.decode().strip()


def _branch(job_id: str) -> str:
    try:
        if not job_id:
            raise RepoError(job_id)
        return check_ref(f"corral/{job_id}")
    except RepoError:
        msg = f"The job id {job_id!r} cannot name the git branch corral/<job-id>; use letters, digits, '-' and '_'."
        raise RepoError(msg) from None


SKELETON_CONFIG = (
    "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n"
)
"""What ``git init`` writes in a new repository's config on Linux."""


def _skeleton(gitdir: Path) -> None:
    """What ``git init`` writes, without its process (6 ms of CPU) or its sample hooks: the
    directories, an empty ``hooks`` (so a sandbox finds it read-only), ``HEAD`` and the config."""
    for sub in ("hooks", "info", "objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (gitdir / sub).mkdir(parents=True, exist_ok=True)
    (gitdir / "HEAD").write_text("ref: refs/heads/master\n")
    (gitdir / "config").write_text(SKELETON_CONFIG)


def _start_branch(gitdir: Path, branch: str, base: str, index: Path) -> None:
    """What ``checkout -b branch base`` writes in ``gitdir`` over files already in place: ref, HEAD, index."""
    ref = gitdir / "refs" / "heads" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(f"{base}\n")
    (gitdir / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
    shutil.copyfile(index, gitdir / "index")


def _give_back(path: Path) -> None:
    """As root, hand what host git wrote in ``path/.git`` (index, objects, refs) to ``path``'s owner."""
    owner = path.lstat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    for top, dirs, files in os.walk(path / ".git"):
        for name in (*dirs, *files):
            entry = os.path.join(top, name)  # noqa: PTH118
            if os.lstat(entry).st_uid != owner.st_uid:
                os.lchown(entry, owner.st_uid, owner.st_gid)


def _discard(dest: Path, *, created: bool) -> None:
    """Remove what a failed checkout left: ``dest`` itself if it made it, else its contents."""
    if created:
        if dest.exists():
            _rmtree(dest)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            _rmtree(child)
        else:
            child.unlink()


def _rmtree(path: Path) -> None:
    """``shutil.rmtree`` that first makes a directory the agent locked writable again."""

    def retry(func: Callable[..., Any], name: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(name), 0o700)  # noqa: PTH101, PTH120
        func(name)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)
