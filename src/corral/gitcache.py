"""The git cache: one bare mirror per remote, and per job a checkout that borrows its objects.

``GitCache(root)`` keeps ``root/mirrors/<name>-<hash>`` (``git clone --mirror`` once, ``git fetch
--prune`` before every checkout) under an exclusive ``flock`` on ``<mirror>.lock``, so jobs in
threads or processes never write one mirror at once. A checkout is ``git clone --shared
--no-checkout`` of the mirror (its objects are borrowed through ``objects/info/alternates``,
never hard-linked: the sandbox's uid will own the checkout) on branch ``corral/<job-id>``, with
``origin`` set to the credential-free URL. The sandbox must see ``Checkout.mirror`` read-only.
Mirrors run with ``gc.auto=0``: a checkout's base objects live only there, so they are never
pruned.

Credentials: an ``https://user:token@host/...`` URL is accepted; git sees it without the
userinfo (the mirror's config and the checkout's ``origin`` never hold it) and gets the user and
token through ``GIT_ASKPASS`` for that one command. Every message masks URLs.

After the agent, ``commit``, ``diff`` and ``push`` run git on the host over a tree the agent
wrote. Before each, ``.git`` is inspected: no symlinks inside it, no config key that ``git
clone`` would not write, no ``commondir``, and alternates that still point at the mirror.
Anything else is refused with a ``GitError``; every command also carries ``gitcmd.HARDENING``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.errors import GitError, RepoError, WorkspaceError
from corral.gitcmd import (
    Remote,
    askpass,
    check_ref,
    check_url,
    environment,
    mask_url,
    mirror_name,
    parse_author,
    protocols,
    run,
    untrusted_config,
)
from corral.secrets import Secret

__all__ = ["Checkout", "Diff", "GitCache", "check_ref", "check_url", "mask_url"]

COMMIT = ("commit", "--quiet", "--no-verify", "--no-gpg-sign", "--cleanup=verbatim", "--allow-empty-message")
TOKEN_USERNAME = "x-access-token"
"""The user name sent with a token when the URL names none (GitHub's; GitLab accepts any)."""


@dataclasses.dataclass(frozen=True)
class Checkout:
    """A job's checkout: ``path`` on ``branch``, started at commit ``base``.

    It borrows its objects from ``mirror``, which a sandbox must therefore see (read-only).
    """

    path: Path
    branch: str
    base: str
    mirror: Path


@dataclasses.dataclass(frozen=True)
class Diff:
    """Everything from a checkout's base to its branch: the patch and the paths it touches."""

    text: str
    files: tuple[str, ...]


class GitCache:
    """Mirrors under ``root/mirrors`` and the checkouts made from them."""

    def __init__(self, root: Path, *, allow_local: bool = False, author: str = "corral <corral@localhost>") -> None:
        self.root = root.absolute()
        self.allow_local = allow_local
        self.author = author
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
        return self._refresh(self._remote(url))

    def checkout(self, url: str, ref: str | None, job_id: str, dest: Path) -> Checkout:
        """Refresh the mirror, then check out ``ref`` (default the remote's HEAD) at ``dest``."""
        remote = self._remote(url)
        if ref is not None:
            check_ref(ref)
        branch = _branch(job_id)
        dest = dest.absolute()
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            msg = f"The checkout directory {dest} exists and is not an empty directory; give a new path."
            raise WorkspaceError(msg)
        mirror = self._refresh(remote)
        created = not dest.exists()
        try:
            with _locked(mirror, exclusive=False):
                base = self._resolve(mirror, ref, remote)
                self._git(
                    ["clone", "--shared", "--no-checkout", "--quiet", "--", str(mirror), str(dest)],
                    what=f"copying the mirror of {remote.url} to {dest}",
                    local=True,
                )
            self._git(["config", "remote.origin.url", remote.url], what="setting origin", repo=dest)
            self._git(["checkout", "--quiet", "-b", branch, base], what=f"checking out {base} at {dest}", repo=dest)
        except BaseException:
            _discard(dest, created=created)
            raise
        return Checkout(dest, branch, base, mirror)

    def commit(self, checkout: Checkout, message: str) -> str | None:
        """Commit everything in the tree on the job branch; the new HEAD, or None if nothing changed.

        If the agent left HEAD elsewhere, HEAD is put back on the job branch first (the tree is
        kept as it is), so the branch always ends with what the agent left. What git wrote in
        ``.git`` is then given to the checkout's owner, so the sandbox's uid can go on working.
        """
        self._inspect(checkout)
        try:
            return self._commit(checkout, message)
        finally:
            _give_back(checkout.path)

    def _commit(self, checkout: Checkout, message: str) -> str | None:
        target = f"refs/heads/{checkout.branch}"
        head = self._git(["symbolic-ref", "--quiet", "HEAD"], what="reading HEAD", repo=checkout.path, ok=(0, 1))
        if head.stdout.decode(errors="replace").strip() != target:
            if not self._exists(checkout.path, target):
                self._git(["update-ref", target, checkout.base], what="recreating the job branch", repo=checkout.path)
            self._git(["symbolic-ref", "HEAD", target], what="putting HEAD on the job branch", repo=checkout.path)
        self._git(["add", "--all"], what=f"adding the changes in {checkout.path}", repo=checkout.path)
        staged = self._git(
            ["diff", "--cached", "--quiet", "--no-ext-diff"], what="looking for changes", repo=checkout.path, ok=(0, 1)
        )
        if staged.returncode == 0:
            return None
        self._git(
            [*COMMIT, "-m", message],
            what=f"committing in {checkout.path}",
            repo=checkout.path,
            env=self._identity,
        )
        return self._rev(checkout.path, "HEAD")

    def diff(self, checkout: Checkout) -> Diff:
        """The patch from ``base`` to the job branch, and the paths it adds, changes or deletes."""
        self._inspect(checkout)
        span = [checkout.base, f"refs/heads/{checkout.branch}", "--"]
        text = self._git(
            ["diff", "--no-ext-diff", "--no-textconv", "--no-color", *span], what="diffing", repo=checkout.path
        )
        names = self._git(
            ["diff", "--no-ext-diff", "--no-renames", "--name-only", "-z", *span],
            what="listing changed files",
            repo=checkout.path,
        )
        files = tuple(os.fsdecode(name) for name in names.stdout.split(b"\0") if name)
        return Diff(text.stdout.decode(errors="replace"), files)

    def push(self, checkout: Checkout, url: str, token: Secret | None) -> None:
        """Push the job branch to ``url``; a token reaches git only through ``GIT_ASKPASS``."""
        remote = self._remote(url)
        self._inspect(checkout)
        ref = f"refs/heads/{checkout.branch}"
        with _credentials(remote, token) as (env, secrets):
            self._git(
                ["push", "--quiet", "--no-verify", "--", remote.url, f"{ref}:{ref}"],
                what=f"pushing {checkout.branch} to {remote.url}",
                repo=checkout.path,
                local=remote.local,
                env=env,
                secrets=secrets,
            )

    def remove(self, checkout: Checkout) -> None:
        """Delete the checkout (the mirror stays)."""
        path = checkout.path
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            _rmtree(path)

    # -- the parts --------------------------------------------------------------------------

    def _remote(self, url: str) -> Remote:
        remote = Remote.parse(url, allow_local=self.allow_local)
        if remote.local and not remote.url.lower().startswith("file:"):
            return Remote(os.path.abspath(os.path.expanduser(remote.url)))  # noqa: PTH100, PTH111
        return remote

    def _refresh(self, remote: Remote) -> Path:
        self.mirrors.mkdir(parents=True, exist_ok=True)
        path = self.mirrors / mirror_name(remote.url)
        with _locked(path, exclusive=True), _credentials(remote, None) as (env, secrets):
            if (path / "HEAD").is_file():
                self._git(
                    ["fetch", "--prune", "--quiet", "origin"],
                    what=f"fetching {remote.url} into its mirror",
                    bare=path,
                    local=remote.local,
                    env=env,
                    secrets=secrets,
                )
                return path
            partial = path.with_name(f".{path.name}.partial")  # a clone cut short is never a mirror
            if partial.exists():
                _rmtree(partial)
            try:
                self._git(
                    ["clone", "--mirror", "--quiet", "--", remote.url, str(partial)],
                    what=f"cloning {remote.url}",
                    local=remote.local,
                    env=env,
                    secrets=secrets,
                )
                self._git(["config", "gc.auto", "0"], what="configuring the mirror", bare=partial)
                partial.rename(path)
            finally:
                if partial.exists():
                    _rmtree(partial)
        return path

    def _resolve(self, mirror: Path, ref: str | None, remote: Remote) -> str:
        name = "HEAD" if ref is None else ref
        found = self._git(
            ["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
            what=f"resolving {name!r} in the mirror of {remote.url}",
            bare=mirror,
            ok=(0, 1),
        )
        if found.returncode != 0:
            if ref is None:
                msg = f"The repository {remote.url} has no commit on its default branch; push one or give a ref."
            else:
                msg = f"The ref {ref!r} does not exist in {remote.url}; give a branch, tag or commit SHA it has."
            raise GitError(mask_url(msg))
        return found.stdout.decode().strip()

    def _inspect(self, checkout: Checkout) -> None:
        """Refuse a checkout whose ``.git`` could make host git run or read what it should not."""
        gitdir = checkout.path / ".git"
        problems: list[str] = []
        if gitdir.is_symlink() or not gitdir.is_dir():
            problems.append(".git is not a directory")
        else:
            for top, dirs, files in os.walk(gitdir):
                problems += [f"{Path(top, n)} is a symlink" for n in dirs + files if Path(top, n).is_symlink()]
            if (gitdir / "commondir").exists():
                problems.append(".git/commondir exists")
            problems += _alternates_problems(gitdir, checkout.mirror)
            listed = self._git(
                ["config", "--file", str(gitdir / "config"), "--no-includes", "--list", "--null"],
                what=f"reading the config of {checkout.path}",
                cwd=Path("/"),
            )
            keys = [entry.split(b"\n", 1)[0].decode(errors="replace") for entry in listed.stdout.split(b"\0") if entry]
            problems += [f"config key {key!r}" for key in untrusted_config(keys)]
        if problems:
            msg = (
                f"The checkout {checkout.path} was changed in ways host git must not trust "
                f"({'; '.join(problems[:5])}); corral will not run git on it."
            )
            raise GitError(msg)

    def _exists(self, repo: Path, ref: str) -> bool:
        found = self._git(["rev-parse", "--verify", "--quiet", ref], what=f"looking up {ref}", repo=repo, ok=(0, 1))
        return found.returncode == 0

    def _rev(self, repo: Path, name: str) -> str:
        return self._git(["rev-parse", "--verify", name], what=f"resolving {name}", repo=repo).stdout.decode().strip()

    def _git(
        self,
        args: Sequence[str],
        *,
        what: str,
        repo: Path | None = None,
        bare: Path | None = None,
        cwd: Path | None = None,
        local: bool = False,
        env: dict[str, str] | None = None,
        secrets: Sequence[str] = (),
        ok: Sequence[int] = (0,),
    ) -> subprocess.CompletedProcess[bytes]:
        """Run git in a checkout (``repo``), a mirror (``bare``) or nowhere in particular."""
        extra = dict(env or {})
        options = list(protocols(local=local))
        if repo is not None:
            extra.update(GIT_DIR=str(repo / ".git"), GIT_WORK_TREE=str(repo))
            options += ["-c", f"safe.directory={repo}"]
            cwd = repo
        elif bare is not None:
            extra["GIT_DIR"] = str(bare)
            cwd = bare
        full_env = environment(os.environ, extra)
        return run([*options, *args], what=what, env=full_env, cwd=cwd, secrets=secrets, ok=ok)


def _branch(job_id: str) -> str:
    try:
        if not job_id:
            raise RepoError(job_id)
        return check_ref(f"corral/{job_id}")
    except RepoError:
        msg = f"The job id {job_id!r} cannot name the git branch corral/<job-id>; use letters, digits, '-' and '_'."
        raise RepoError(msg) from None


@contextlib.contextmanager
def _locked(mirror: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``<mirror>.lock``: exclusive to write the mirror, shared to read it."""
    fd = os.open(mirror.with_name(f"{mirror.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def _credentials(remote: Remote, token: Secret | None) -> Iterator[tuple[dict[str, str], tuple[str, ...]]]:
    """The askpass environment and the strings to blank in messages, for ``token`` or the URL's."""
    password = token if token is not None else remote.password
    if password is None and remote.username is None:
        yield {}, ()
        return
    username = remote.username or TOKEN_USERNAME
    secrets = (password.reveal(),) if password is not None else (username,)
    with askpass(username, password if password is not None else Secret("")) as env:
        yield env, secrets


def _alternates_problems(gitdir: Path, mirror: Path) -> list[str]:
    path = gitdir / "objects" / "info" / "alternates"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return ["objects/info/alternates cannot be read"]
    expected = os.path.realpath(mirror / "objects")
    objects = gitdir / "objects"
    if [os.path.realpath(objects / line) for line in lines] != [expected]:
        return ["objects/info/alternates no longer points at the mirror alone"]
    return []


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
