"""Helpers for tests that make overlay checkouts: find and remove the mounts they leave below a directory."""

from __future__ import annotations

import os
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
