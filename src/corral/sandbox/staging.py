"""Staging: making bind sources reachable for the sandbox's unprivileged host uid.

When corral runs as root, bwrap runs as an unprivileged uid, and that uid must be able to look up
every path it binds. A workspace below a 0700 directory (root's home, a private tmp dir) is out of
its reach. So the forked child, still root, enters a private mount namespace of its own and binds
each source onto an empty mount point under ``<runtime>/stage/<slot>/``, whose directories are
traversable (0711); bwrap then binds from there. The staging mounts exist only in that private
namespace and vanish with it: nothing is ever mounted in the host's namespace, so nothing can be
left behind there, whatever happens to the caller.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["clear", "enter_private_mounts", "prepare"]

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18


def prepare(runtime: Path, slot_name: str, sources: Sequence[Path]) -> dict[Path, Path]:
    """Create a mount point per source (a directory or an empty file, as the source is)."""
    import ctypes  # noqa: F401  (imported here, in the parent, so the forked child need not)

    base = runtime / "stage" / slot_name
    clear(runtime, slot_name)
    for directory in (runtime, runtime / "stage", base):
        directory.mkdir(exist_ok=True)
        directory.chmod(0o711)
    staged: dict[Path, Path] = {}
    for index, source in enumerate(sources):
        point = base / str(index)
        if source.is_dir():
            point.mkdir(mode=0o711)
        else:
            point.touch(mode=0o600)
        staged[source] = point
    return staged


def clear(runtime: Path, slot_name: str) -> None:
    """Remove a slot's mount points (plain empty entries on the host)."""
    base = runtime / "stage" / slot_name
    if base.exists():
        import shutil

        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(base)


def _check(result: int, what: str) -> None:
    import ctypes

    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def enter_private_mounts(staged: dict[Path, Path]) -> None:
    """In the forked child: a private mount namespace with each source bound on its mount point.

    ``prepare`` imported ``ctypes`` in the parent, so the child only looks it up and calls libc.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    for source, point in staged.items():
        _check(libc.mount(os.fsencode(source), os.fsencode(point), None, MS_BIND | MS_REC, None), f"bind {source}")
