"""The mirrors of the git cache: one bare mirror per remote, fetched at most once per interval.

``Mirrors(root)`` keeps ``root/<name>-<hash>`` (``git clone --mirror`` once, then ``git fetch
--prune``) under an exclusive ``flock`` on ``<mirror>.lock`` (``locked``), so jobs in threads or
processes never write one mirror at once; readers hold it shared. With ``refresh_interval`` N > 0
a mirror fetched less than N seconds ago (by any process: the mirror's file ``corral-fetched``
holds the time) is used as it is. What a ref resolves to and the mirror's list of refs are
remembered until its next fetch. Mirrors run with ``gc.auto=0``: checkouts borrow their objects,
so they are never pruned.

Credentials: an ``https://user:token@host/...`` URL is accepted; git sees it without the
userinfo (the mirror's config never holds it) and gets the user and token through
``GIT_ASKPASS`` for that one command (``credentials``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from corral.errors import GitError
from corral.gitcmd import Remote, askpass, git, mask_url, mirror_name
from corral.secrets import Secret

__all__ = ["STAMP", "Mirrors", "credentials", "locked"]

STAMP = "corral-fetched"
"""The file in a mirror that notes its last fetch (git ignores files it does not know in a repository)."""
TOKEN_USERNAME = "x-access-token"
"""The user name sent with a token when the URL names none (GitHub's; GitLab accepts any)."""


class Mirrors:
    """The mirrors under ``root``; thread-safe, and safe between processes through their locks."""

    def __init__(self, root: Path, *, allow_local: bool = False, refresh_interval: float = 0.0) -> None:
        self.root = root
        self.allow_local = allow_local
        self.refresh_interval = refresh_interval
        """Seconds a fetched mirror is used without fetching again; 0 fetches before every checkout."""
        self._lock = threading.Lock()
        self._seen: dict[tuple[Path, str, str], str] = {}
        """Per mirror and fetch (its stamp): the commits refs resolve to, and the listed refs."""

    def remote(self, url: str) -> Remote:
        """``url`` checked and split from its credentials; a local path made absolute."""
        remote = Remote.parse(url, allow_local=self.allow_local)
        if remote.local and not remote.url.lower().startswith("file:"):
            return Remote(os.path.abspath(os.path.expanduser(remote.url)))  # noqa: PTH100, PTH111
        return remote

    def refresh(self, remote: Remote, *, force: bool = False) -> tuple[Path, bool]:
        """The mirror of ``remote``, and whether it was fetched (or cloned) by this call."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / mirror_name(remote.url)
        if not force and self._fresh(path):
            return path, False
        with locked(path, exclusive=True), credentials(remote, None) as (env, secrets):
            if not force and self._fresh(path):  # fetched by someone else while we waited for the lock
                return path, False
            if (path / "HEAD").is_file():
                git(
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
                shutil.rmtree(partial)
            try:
                git(
                    ["clone", "--mirror", "--quiet", "--", remote.url, str(partial)],
                    what=f"cloning {remote.url}",
                    local=remote.local,
                    env=env,
                    secrets=secrets,
                )
                git(["config", "gc.auto", "0"], what="configuring the mirror", bare=partial)
                partial.rename(path)
            finally:
                if partial.exists():
                    shutil.rmtree(partial)
            _stamp(path)
        return path, True

    def resolve(self, mirror: Path, ref: str | None, remote: Remote, *, final: bool) -> str | None:
        """The commit ``ref`` (default: HEAD) names in ``mirror``, remembered until its next fetch;
        ``None`` if it has none and not ``final``, else ``GitError``."""
        key = (mirror, _fetched_at(mirror), "HEAD" if ref is None else f"ref:{ref}")
        with self._lock:
            known = self._seen.get(key)
        if known is not None:
            return known
        name = "HEAD" if ref is None else ref
        found = git(
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

    def refs(self, mirror: Path) -> tuple[dict[str, str], dict[str, str], str | None]:
        """The mirror's branches and tags (name -> sha) and the branch its HEAD names, as of its last fetch."""
        stamp = _fetched_at(mirror)
        with self._lock:
            known = self._seen.get((mirror, stamp, "refs"))
        if known is None:
            listed = git(
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

    def _fresh(self, mirror: Path) -> bool:
        """Whether ``mirror`` exists and was fetched less than ``refresh_interval`` seconds ago."""
        if self.refresh_interval <= 0 or not (mirror / "HEAD").is_file():
            return False
        note = _fetched_at(mirror).split(" ", 1)[0]
        age = time.time() - (int(note) / 1e9 if note.isdigit() else 0)
        return 0 <= age < self.refresh_interval

    def _remember(self, key: tuple[Path, str, str], value: str) -> None:
        with self._lock:
            if len(self._seen) > 4096:  # old fetches' entries are never asked for again
                self._seen.clear()
            self._seen[key] = value


@contextlib.contextmanager
def locked(mirror: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold ``<mirror>.lock``: exclusive to write the mirror, shared to read it."""
    fd = os.open(mirror.with_name(f"{mirror.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def credentials(remote: Remote, token: Secret | None) -> Iterator[tuple[dict[str, str], tuple[str, ...]]]:
    """The askpass environment and the strings to blank in messages, for ``token`` or the URL's."""
    password = token if token is not None else remote.password
    if password is None and remote.username is None:
        yield {}, ()
        return
    username = remote.username or TOKEN_USERNAME
    secrets = (password.reveal(),) if password is not None else (username,)
    with askpass(username, password if password is not None else Secret("")) as env:
        yield env, secrets


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
