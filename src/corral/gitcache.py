"""The git cache: one bare mirror per remote, and per job a checkout that borrows its objects.

``GitCache(root)`` keeps ``root/mirrors/<name>-<hash>`` (``git clone --mirror`` once, then ``git
fetch --prune``) under an exclusive ``flock`` on ``<mirror>.lock``, so jobs in threads or
processes never write one mirror at once. With ``refresh_interval`` N > 0 a mirror fetched less
than N seconds ago (by any process: the mirror's file ``corral-fetched`` holds the time) is used
as it is; a ref it does not have yet fetches at once. A checkout is made like ``git clone --shared
--no-checkout`` of the mirror would make it, without its transport round trip or a git process:
what ``git init`` writes, ``objects/info/alternates`` pointing at the mirror (objects are
borrowed, never hard-linked: the sandbox's uid will own the checkout), ``origin`` set to the
credential-free URL with the mirror's branches as ``refs/remotes/origin/*`` and its tags, then
branch ``corral/<job-id>`` checked out. The sandbox must see ``Checkout.mirror`` read-only.
Mirrors run with ``gc.auto=0``: a checkout's base objects live only there, so they are never
pruned.

As root, a checkout writes none of the commit's files: it is an overlay (``gitlayers``) of a tree
prepared once per commit under ``root/trees`` (``gittrees``), with the job's ``.git`` and changes
in the checkout directory itself, which is the overlay's upper layer; ``.git/index`` starts as a
copy of the tree's ready index, so git re-hashes nothing. ``attach`` and ``detach`` mount and
unmount it around each use, ``reap`` unmounts what a killed runner left, ``remove`` unmounts
first. Where an overlay cannot be mounted (not root, or a file system that refuses it) the
checkout is a plain one as above; ``Checkout.overlay`` says which, ``fallback`` why.

Credentials: an ``https://user:token@host/...`` URL is accepted; git sees it without the
userinfo (the mirror's config and the checkout's ``origin`` never hold it) and gets the user and
token through ``GIT_ASKPASS`` for that one command. Every message masks URLs.

After the agent, ``finish`` (or ``commit`` and ``diff``) and ``push`` run git on the host over a
tree the agent wrote. Before each, ``.git`` is inspected (``gitinspect``: no symlinks, no
``commondir``, alternates at the mirror alone, only the config keys ``git clone`` writes); anything
else is refused with a ``GitError``. Every command also carries
``gitcmd.HARDENING``. ``finish`` asks ``git status`` first and skips the commit and the diff of
a job that changed nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.errors import GitError, RepoError, WorkspaceError
from corral.gitcmd import (
    Remote,
    askpass,
    check_ref,
    check_url,
    config_section,
    environment,
    mask_url,
    mirror_name,
    packed_refs,
    parse_author,
    parse_status,
    protocols,
    run,
)
from corral.gitinspect import Inspector
from corral.gitlayers import Layers
from corral.gittrees import Tree, TreeCache
from corral.secrets import Secret

__all__ = ["Checkout", "Diff", "GitCache", "check_ref", "check_url", "mask_url"]

COMMIT = ("commit", "--quiet", "--no-verify", "--no-gpg-sign", "--cleanup=verbatim", "--allow-empty-message")
STAMP = "corral-fetched"
"""The file in a mirror that notes its last fetch (git ignores files it does not know in a repository)."""
FETCH_SPEC = "+refs/heads/*:refs/remotes/origin/*"
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
        self.allow_local = allow_local
        self.author = author
        self.refresh_interval = refresh_interval
        """Seconds a fetched mirror is used without fetching again; 0 fetches before every checkout."""
        self.overlay = overlay
        """Whether to make overlay checkouts where they can be mounted; ``False`` writes every file."""
        self.fallback: str | None = None if overlay else "overlay checkouts are turned off"
        """Why the last checkout was a plain one; ``None`` after an overlay checkout."""
        self.trees = TreeCache(self.root / "trees")
        self.layers = Layers(self.root / "layers", self.trees)
        self._lock = threading.Lock()
        self._seen: dict[tuple[Path, str, str], str] = {}
        """Per mirror and fetch (the stamp's mtime): the commits refs resolve to, and the listed refs."""
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
        return self._refresh(self._remote(url))[0]

    def checkout(self, url: str, ref: str | None, job_id: str, dest: Path) -> Checkout:
        """Refresh the mirror (within ``refresh_interval``), then check out ``ref`` (default: HEAD) at ``dest``."""
        remote = self._remote(url)
        if ref is not None:
            check_ref(ref)
        branch = _branch(job_id)
        dest = dest.absolute()
        if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
            msg = f"The checkout directory {dest} exists and is not an empty directory; give a new path."
            raise WorkspaceError(msg)
        mirror, fetched = self._refresh(remote)
        created = not dest.exists()
        tree: Tree | None = None
        try:
            with _locked(mirror, exclusive=False):
                base = self._resolve(mirror, ref, remote, final=fetched)
            if base is None:  # the mirror was not fetched just now: the ref may be newer than it
                mirror, _ = self._refresh(remote, force=True)
            with _locked(mirror, exclusive=False):
                if base is None:
                    base = self._resolve(mirror, ref, remote, final=True)
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
                self._git(["checkout", "--quiet", "-b", branch, base], what=what, repo=dest)
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
        refs, tags, default = self._refs(mirror)
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

    def finish(self, checkout: Checkout, message: str) -> tuple[str | None, Diff]:
        """``commit`` then ``diff``, with one inspection, and neither when ``git status`` shows HEAD on
        the job branch at ``base`` and nothing changed: ``(None, an empty Diff)``."""
        self._inspect(checkout, tree=True)
        status = parse_status(
            self._git(
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
        """Unmount and delete the checkout (the mirror and the tree stay)."""
        path = checkout.path.absolute()
        self.layers.forget(path)
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

    def _refresh(self, remote: Remote, *, force: bool = False) -> tuple[Path, bool]:
        """The mirror of ``remote``, and whether it was fetched (or cloned) by this call."""
        self.mirrors.mkdir(parents=True, exist_ok=True)
        path = self.mirrors / mirror_name(remote.url)
        if not force and self._fresh(path):
            return path, False
        with _locked(path, exclusive=True), _credentials(remote, None) as (env, secrets):
            if not force and self._fresh(path):  # fetched by someone else while we waited for the lock
                return path, False
            if (path / "HEAD").is_file():
                self._git(
                    ["fetch", "--prune", "--quiet", "origin"],
                    what=f"fetching {remote.url} into its mirror",
                    bare=path,
                    local=remote.local,
                    env=env,
                    secrets=secrets,
                )
                _stamp(path)
                return path, True
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
            _stamp(path)
        return path, True

    def _fresh(self, mirror: Path) -> bool:
        """Whether ``mirror`` exists and was fetched less than ``refresh_interval`` seconds ago."""
        if self.refresh_interval <= 0 or not (mirror / "HEAD").is_file():
            return False
        note = _fetched_at(mirror).split(" ", 1)[0]
        age = time.time() - (int(note) / 1e9 if note.isdigit() else 0)
        return 0 <= age < self.refresh_interval

    def _resolve(self, mirror: Path, ref: str | None, remote: Remote, *, final: bool) -> str | None:
        """The commit ``ref`` names in ``mirror`` (remembered until its next fetch); ``None`` if it has
        none and not ``final``, else ``GitError``."""
        key = (mirror, _fetched_at(mirror), "HEAD" if ref is None else f"ref:{ref}")
        with self._lock:
            known = self._seen.get(key)
        if known is not None:
            return known
        name = "HEAD" if ref is None else ref
        found = self._git(
            ["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
            what=f"resolving {name!r} in the mirror of {remote.url}",
            bare=mirror,
            ok=(0, 1),
        )
        if found.returncode != 0:
            if not final:
                return None
            if ref is None:
                msg = f"The repository {remote.url} has no commit on its default branch; push one or give a ref."
            else:
                msg = f"The ref {ref!r} does not exist in {remote.url}; give a branch, tag or commit SHA it has."
            raise GitError(mask_url(msg))
        sha = found.stdout.decode().strip()
        self._remember(key, sha)
        return sha

    def _refs(self, mirror: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
        """The mirror's branches and tags (name -> sha) and the branch its HEAD names, as of its last fetch."""
        stamp = _fetched_at(mirror)
        with self._lock:
            known = self._seen.get((mirror, stamp, "refs"))
        if known is None:
            listed = self._git(
                ["for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/", "refs/tags/"],
                what="listing the refs of a mirror",
                bare=mirror,
            )
            known = listed.stdout.decode(errors="surrogateescape")
            self._remember((mirror, stamp, "refs"), known)
        heads: dict[str, str] = {}
        tags: dict[str, str] = {}
        for line in known.splitlines():
            sha, _, name = line.partition(" ")
            (heads if name.startswith("refs/heads/") else tags)[name] = sha
        head = (mirror / "HEAD").read_text(errors="replace").strip()
        default = head.removeprefix("ref: ") if head.startswith("ref: refs/heads/") else None
        return heads, tags, default

    def _remember(self, key: tuple[Path, str, str], value: str) -> None:
        with self._lock:
            if len(self._seen) > 4096:  # old fetches' entries are never asked for again
                self._seen.clear()
            self._seen[key] = value

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
        listed = self._git(
            ["config", "--file", str(config), "--no-includes", "--list", "--null"],
            what=f"reading the config {config}",
            cwd=Path("/"),
        )
        return listed.stdout

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


def _stamp(mirror: Path) -> None:
    """Note that ``mirror`` was fetched now: its file ``corral-fetched`` holds the time in ns and a nonce."""
    stamp = mirror / STAMP
    partial = mirror / f".{STAMP}.{os.getpid()}.{threading.get_ident()}"
    partial.write_text(f"{time.time_ns()} {os.urandom(8).hex()}\n")
    partial.replace(stamp)


def _fetched_at(mirror: Path) -> str:
    """The note of ``mirror``'s last fetch (``"<ns> <nonce>"``); ``"0"`` if there is none."""
    try:
        return (mirror / STAMP).read_text().strip() or "0"
    except (FileNotFoundError, UnicodeDecodeError):
        return "0"


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
