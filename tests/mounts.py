"""Helpers for tests that make overlay checkouts: a scratch directory for them, and the mounts they leave below one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from corral import overlay


def overlays_under(root: Path) -> list[Path]:
    """The mount points of the overlays at or below ``root``, deepest first."""
    top = Path(os.path.realpath(root))
    points = {m.point for m in overlay.table() if m.fstype == "overlay" and m.point.is_relative_to(top)}
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount every overlay at or below ``root`` (a test's scratch directory), so it can be removed."""
    for point in overlays_under(root):
        while overlay.mounted_at(point) is not None:
            overlay.unmount(point)


@contextlib.contextmanager
def public_dir(prefix: str) -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700); unmounted below and removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)
