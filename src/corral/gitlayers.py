"""Overlay checkouts: a job's checkout as an overlay of a prepared tree, mounted while it is in use.

The checkout directory is both the overlay's upper layer and its mount point: mounted, it shows
the prepared tree (``gittrees``) with the job's own ``.git`` and changes over it; unmounted, it
holds only those (``.git``, the files the job wrote, whiteouts for the ones it deleted), so git
still reads its branches and commits there. The overlay's work directory and a note of what the
checkout was made from (its path, mirror and commit) live in ``root/<hash of the path>/``, out of
the sandbox's sight: the sandbox writes only through the mount, never to a layer behind it.

``attach`` mounts a checkout again (rebuilding its tree if it was evicted: the same content, so
the job's changes over it stay right), ``detach`` unmounts it, ``reap`` unmounts those that no
running job holds (a runner killed with SIGKILL leaves its mounts) and forgets notes whose
checkout is gone. Only root mounts; ``why_not`` probes once per pair of file systems whether the
kernel accepts such an overlay there, and says why not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Collection
from pathlib import Path

from corral import overlay
from corral.errors import WorkspaceError
from corral.gittrees import Tree, TreeCache

__all__ = ["Layer", "Layers"]


@dataclasses.dataclass(frozen=True)
class Layer:
    """What an overlay checkout at ``dest`` is made of: ``commit``'s tree from ``mirror``, and ``work``."""

    dest: Path
    mirror: Path
    commit: str
    note: Path

    @property
    def work(self) -> Path:
        return self.note.parent / "work"


class Layers:
    """The notes and work directories of overlay checkouts under ``root``, and their mounts."""

    def __init__(self, root: Path, trees: TreeCache) -> None:
        self.root = Path(os.path.realpath(root))
        self.trees = trees
        self._probed: dict[tuple[int, int], str | None] = {}
        self._lock = threading.Lock()

    def why_not(self, dest: Path) -> str | None:
        """Why ``dest`` (absent or empty) cannot be an overlay checkout here; ``None`` if it can."""
        if os.geteuid() != 0:
            return "corral is not root, and only root mounts overlays"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.trees.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        parent = dest.parent
        key = (parent.stat().st_dev, self.root.stat().st_dev)
        with self._lock:
            if key not in self._probed:
                self._probed[key] = _probe(parent, self.trees.root)
            return self._probed[key]

    def create(self, dest: Path, mirror: Path, commit: str) -> Tree:
        """Mount ``commit``'s tree (built if needed) at ``dest`` with ``dest`` as the upper layer."""
        dest = Path(os.path.realpath(dest))
        layer = self._layer(dest, mirror, commit)
        layer.note.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if layer.work.exists():
            shutil.rmtree(layer.work)
        layer.work.mkdir(mode=0o700)
        note = {"dest": str(dest), "mirror": str(mirror), "commit": commit}
        layer.note.write_text(json.dumps(note) + "\n")
        dest.mkdir(mode=0o700, exist_ok=True)
        dest.chmod(0o700)  # the top of the checkout: only its owner reaches the world-writable files below
        try:
            with self.trees.held(mirror, commit) as tree:
                overlay.mount(tree.files, dest, layer.work, dest)
        except BaseException:
            shutil.rmtree(layer.note.parent, ignore_errors=True)
            raise
        return tree

    def find(self, dest: Path) -> Layer | None:
        """The note of the overlay checkout at ``dest``; ``None`` for a plain checkout."""
        return _read(self._note(dest))

    def unmounted(self, dest: Path) -> bool:
        """Whether ``dest`` is an overlay checkout that is not mounted now (it shows only its own layer)."""
        return self.find(dest) is not None and overlay.mounted_at(Path(os.path.realpath(dest))) is None

    def attach(self, dest: Path) -> bool:
        """Mount the overlay checkout at ``dest`` unless it is; whether ``dest`` is one."""
        dest = Path(os.path.realpath(dest))
        layer = self.find(dest)
        if layer is None:
            return False
        with self._lock:
            if overlay.mounted_at(dest) is not None:
                return True
            if not (dest.is_dir() and (dest / ".git").is_dir()):
                msg = f"The checkout {dest} has lost its .git; remove it and start a new job."
                raise WorkspaceError(msg)
            if layer.work.exists():
                shutil.rmtree(layer.work)  # what an earlier mount left there is no use to the next
            layer.work.mkdir(mode=0o700)
            try:
                with self.trees.held(layer.mirror, layer.commit) as tree:
                    overlay.mount(tree.files, dest, layer.work, dest)
            except OSError as err:
                msg = f"The checkout {dest} could not be mounted again ({err.strerror or err}); run corral as root."
                raise WorkspaceError(msg) from None
        return True

    def detach(self, dest: Path) -> bool:
        """Unmount the overlay checkout at ``dest``; whether one was mounted there."""
        dest = Path(os.path.realpath(dest))
        with self._lock:
            stacked = sum(1 for entry in overlay.table() if entry.fstype == "overlay" and entry.point == dest)
            for _ in range(stacked):  # one read of the mount table, however many are stacked there
                try:
                    overlay.unmount(dest)
                except OSError as err:
                    msg = f"The checkout {dest} could not be unmounted ({err.strerror}); see what still uses it."
                    raise WorkspaceError(msg) from None
            return stacked > 0

    def forget(self, dest: Path) -> None:
        """Unmount ``dest`` and remove its note and work directory (the checkout itself is the caller's)."""
        self.detach(dest)
        shutil.rmtree(self._note(dest).parent, ignore_errors=True)

    def reap(self, keep: Collection[Path] = ()) -> list[Path]:
        """Unmount the overlay checkouts of these trees but those at ``keep``; forget notes whose checkout is gone."""
        kept = {Path(os.path.realpath(p)) for p in keep}
        unmounted = []
        for entry in overlay.table():
            lower = entry.lower
            if entry.fstype != "overlay" or lower is None or not lower.is_relative_to(self.trees.root):
                continue
            if entry.point not in kept and entry.point not in unmounted:
                with contextlib.suppress(OSError):
                    self.detach(entry.point)
                    unmounted.append(entry.point)
        for note in self.root.glob("*/note") if self.root.is_dir() else ():
            layer = _read(note)
            if layer is None or not layer.dest.is_dir():
                shutil.rmtree(note.parent, ignore_errors=True)
        return unmounted

    def _note(self, dest: Path) -> Path:
        digest = hashlib.sha256(os.fsencode(os.path.realpath(dest))).hexdigest()[:32]
        return self.root / digest / "note"

    def _layer(self, dest: Path, mirror: Path, commit: str) -> Layer:
        return Layer(dest, mirror, commit, self._note(dest))


def _read(note: Path) -> Layer | None:
    try:
        data = json.loads(note.read_text())
        return Layer(Path(data["dest"]), Path(data["mirror"]), str(data["commit"]), note)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _probe(parent: Path, scratch: Path) -> str | None:
    """Mount and unmount an empty overlay with its upper layer in ``parent``; why it failed, or ``None``.

    Its lower directory is in ``scratch`` (the trees' root), so ``reap`` finds it if this is killed.
    """
    upper = Path(tempfile.mkdtemp(prefix=".corral-probe-", dir=parent))
    work = Path(tempfile.mkdtemp(prefix=".probe-", dir=scratch))
    try:
        (work / "lower").mkdir()
        (work / "work").mkdir()
        try:
            overlay.mount(work / "lower", upper, work / "work", upper)
        except OSError as err:
            return f"the kernel refused an overlay with its upper layer in {parent} ({err.strerror or err})"
        overlay.unmount(upper)
        return None
    finally:
        shutil.rmtree(upper, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
