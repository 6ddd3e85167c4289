"""Staging: making bind sources reachable for the sandbox's unprivileged host uid.

When corral runs as root, bwrap runs as an unprivileged uid, and that uid must be able to look up
every path it binds. A workspace below a 0700 directory (root's home, a private tmp dir) is out of
its reach. So the thread that starts bwrap, still root, enters a private mount namespace of its
own (``spawner.in_private_mounts``) and binds each source onto an empty mount point under
``<runtime>/stage/<slot>/``, whose directories are traversable (0711); bwrap, spawned from that
thread, binds from there, and the thread goes back to the host's namespace. The staging mounts
exist only in that private namespace and vanish with bwrap: nothing is ever mounted in the host's
namespace, so nothing can be left behind there, whatever happens to the caller. The caller is
never forked for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["clear", "prepare"]


def prepare(runtime: Path, slot_name: str, sources: Sequence[Path]) -> dict[Path, Path]:
    """Create a mount point per source (a directory or an empty file, as the source is)."""
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
