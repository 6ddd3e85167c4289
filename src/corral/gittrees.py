"""Prepared trees: one plain copy of a commit's files, shared read-only by the overlay checkouts of it.

``TreeCache(root)`` keeps ``root/<mirror-name>/<commit>/`` holding ``files/`` (the commit's files,
no ``.git``) and ``index`` (a git index of exactly those files with their stat data: a checkout
that starts from a copy of it needs no re-hash). A tree is built once, from the mirror, into a
hidden ``.<commit>.partial`` directory: ``read-tree`` and ``checkout-index``, then every entry but
the top directory is given to the kernel's overflow uid and gid, files get mode 0666 (0777 if
executable) and directories 0777, files an mtime two seconds back (so none is racily clean against
the index), then the index gets their stat data (``gitindex.restat``: the content is the index's
own, so nothing is hashed again), and the directory is renamed into place. ``<commit>.lock`` orders
it: a builder holds it exclusive, a user shared for as long as it mounts, eviction exclusive
without waiting; a lock file is removed only under its lock, and a locker checks that the file it
locked is still the one at that path.

Why those owners and modes: a sandbox's host uid changes per run and must be able to write any
file, and it is handed the checkout by a chown of what the workspace owner (root) owns; entries of
another owner are left alone, so the lower files are never copied up by the handover. Inside the
sandbox's user namespace an unmapped owner shows as the overflow uid, the number the index holds,
so git there finds the files clean as well. Only root reaches the files: ``root`` is 0700.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from corral import overlay
from corral.gitcmd import environment, run
from corral.gitindex import restat

__all__ = ["KEEP", "Tree", "TreeCache", "overflow_ids"]

KEEP = 3
"""Trees of one mirror kept unmounted after a new one is built (the most recently used)."""
MTIME_BACK_NS = 2_000_000_000


@dataclasses.dataclass(frozen=True)
class Tree:
    """A prepared tree: ``files`` (the overlay's lower directory) and its ready ``index``."""

    path: Path

    @property
    def commit(self) -> str:
        return self.path.name

    @property
    def files(self) -> Path:
        return self.path / "files"

    @property
    def index(self) -> Path:
        return self.path / "index"


def overflow_ids() -> tuple[int, int]:
    """The uid and gid an unmapped owner shows as inside a user namespace (65534 unless changed)."""
    ids = []
    for name in ("overflowuid", "overflowgid"):
        try:
            ids.append(int(Path("/proc/sys/kernel", name).read_text()))
        except (OSError, ValueError):
            ids.append(65534)
    return ids[0], ids[1]


class TreeCache:
    """Prepared trees under ``root``, built on first use and evicted when no mount uses them."""

    def __init__(self, root: Path, *, keep: int = KEEP) -> None:
        self.root = Path(os.path.realpath(root))
        self.keep = keep

    def tree(self, mirror: Path, commit: str) -> Tree:
        return Tree(self.root / mirror.name / commit)

    @contextlib.contextmanager
    def held(self, mirror: Path, commit: str) -> Iterator[Tree]:
        """The tree of ``commit`` (built from ``mirror`` if missing), kept from eviction while held."""
        tree = self.tree(mirror, commit)
        tree.path.parent.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        lock = tree.path.with_name(f"{commit}.lock")
        while True:
            fd = _lock(lock, fcntl.LOCK_SH)
            assert fd is not None  # a blocking lock is always had
            if tree.index.is_file():
                break
            fcntl.flock(fd, fcntl.LOCK_EX)  # not atomic: check again what it now locks
            if _same(fd, lock):
                if not tree.index.is_file():
                    self._build(mirror, tree)
                fcntl.flock(fd, fcntl.LOCK_SH)
                break
            os.close(fd)
        try:
            os.utime(tree.path)  # its last use, for eviction
            yield tree
        finally:
            os.close(fd)
        if self.keep >= 0:
            self.evict(mirror, keep=self.keep)

    def evict(self, mirror: Path, *, keep: int = 0) -> list[Path]:
        """Remove the trees of ``mirror`` but the ``keep`` most recently used; never one mounted or held."""
        group = self.root / mirror.name
        try:
            trees = [p for p in group.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        trees.sort(key=lambda p: p.stat().st_mtime_ns, reverse=True)
        removed = []
        for path in trees[keep:]:
            lock = path.with_name(f"{path.name}.lock")
            fd = _lock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                continue
            try:
                if Tree(path).files in self.in_use():
                    continue
                _rmtree(path)
                lock.unlink(missing_ok=True)
                removed.append(path)
            finally:
                os.close(fd)
        return removed

    def in_use(self) -> set[Path]:
        """The trees' ``files`` directories that overlays in this mount namespace use now."""
        return {m.lower for m in overlay.table() if m.fstype == "overlay" and m.lower is not None}

    def _build(self, mirror: Path, tree: Tree) -> None:
        partial = tree.path.with_name(f".{tree.commit}.partial")  # only the holder of the lock writes it
        if partial.exists():
            _rmtree(partial)
        files = partial / "files"
        files.mkdir(parents=True, mode=0o700)
        extra = {"GIT_DIR": str(mirror), "GIT_WORK_TREE": str(files), "GIT_INDEX_FILE": str(partial / "index")}
        env = environment(os.environ, extra)
        what = f"preparing the tree of {tree.commit}"
        try:
            run(["read-tree", tree.commit], what=what, env=env, cwd=files)
            run(["checkout-index", "--all", "--force"], what=what, env=env, cwd=files)
            settle(files, overflow_ids(), time.time_ns() - MTIME_BACK_NS)
            index = partial / "index"
            try:
                index.write_bytes(restat(index.read_bytes(), lambda name: os.lstat(os.fsencode(files) + b"/" + name)))
            except ValueError:  # an index version or hash it does not rewrite: git hashes the files again
                run(["update-index", "-q", "--refresh"], what=what, env=env, cwd=files)
            partial.rename(tree.path)
        finally:
            if partial.exists():
                _rmtree(partial)


def settle(top: Path, owner: tuple[int, int], mtime_ns: int) -> None:
    """Give every entry below ``top`` to ``owner``; files 0666 (0777 if executable) at ``mtime_ns``, dirs 0777."""
    stack = [str(top)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                os.lchown(entry.path, *owner)
                if entry.is_symlink():
                    continue
                if entry.is_dir():
                    os.chmod(entry.path, 0o777)  # noqa: PTH101
                    stack.append(entry.path)
                else:
                    executable = entry.stat(follow_symlinks=False).st_mode & 0o100
                    os.chmod(entry.path, 0o777 if executable else 0o666)  # noqa: PTH101
                    os.utime(entry.path, ns=(mtime_ns, mtime_ns))


def _lock(path: Path, operation: int) -> int | None:
    """An fd holding ``flock(operation)`` on the file now at ``path``; ``None`` if a non-blocking one is taken."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, operation)
        except BlockingIOError:
            os.close(fd)
            return None
        if _same(fd, path):
            return fd
        os.close(fd)  # removed (or replaced) while we waited: lock the new one


def _same(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _rmtree(path: Path) -> None:
    shutil.rmtree(path)
