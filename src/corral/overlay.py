"""Kernel overlay mounts: the option string, the mount and unmount calls, and the mount table.

An overlay shows a read-only ``lower`` tree with a writable ``upper`` directory over it: reads
come from ``lower`` until a file is written, which copies it up; deletions leave whiteouts in
``upper``. Mounting needs root (``CAP_SYS_ADMIN``) and an ``upper`` and ``work`` on one file
system that supports them. Every failure is an ``OSError`` for the caller to fall back on.

The mounts are made with ``nosuid,nodev``, ``redirect_dir=on`` (so a directory of ``lower``
can be renamed), and ``index=off,metacopy=off`` (so ``upper`` can be mounted again over a
``lower`` rebuilt with the same content). Paths are passed as the kernel parses them: one with
``,``, ``:`` or ``\\`` in it is refused (``options`` raises ``ValueError``, ``mount`` ``OSError``).
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = ["Mount", "mount", "mounted_at", "options", "parse_mountinfo", "table", "unmount"]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
FEATURES = "redirect_dir=on,index=off,metacopy=off"
UNSAFE = re.compile(r"[,:\\\n]")
MOUNTINFO = Path("/proc/self/mountinfo")


@dataclasses.dataclass(frozen=True)
class Mount:
    """One line of the mount table: where, which file system type, and its super-block options."""

    point: Path
    fstype: str
    options: tuple[tuple[str, str], ...]

    def option(self, name: str) -> str | None:
        return next((value for key, value in self.options if key == name), None)

    @property
    def lower(self) -> Path | None:
        """An overlay's (first) lower directory."""
        value = self.option("lowerdir")
        return None if value is None else Path(value.split(":", 1)[0])


def options(lower: Path, upper: Path, work: Path) -> str:
    """The mount data of an overlay of ``upper`` over ``lower``, with ``work`` as its scratch directory."""
    for name, path in (("lower", lower), ("upper", upper), ("work", work)):
        if not path.is_absolute() or UNSAFE.search(str(path)):
            msg = f"The overlay's {name} directory {str(path)!r} must be an absolute path without ',', ':' or '\\'."
            raise ValueError(msg)
    return f"lowerdir={lower},upperdir={upper},workdir={work},{FEATURES}"


def _unescape(text: str) -> str:
    """Undo the mount table's octal escapes (``\\040`` for a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text, in its order."""
    found = []
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(" "), tail.split(" ")
        if not sep or len(fields) < 5 or len(rest) < 3:
            continue
        pairs = []
        for item in rest[2].split(","):
            key, _, value = item.partition("=")
            pairs.append((key, _unescape(value)))
        found.append(Mount(Path(_unescape(fields[4])), rest[0], tuple(pairs)))
    return found


def table() -> list[Mount]:
    """This process's mounts now."""
    return parse_mountinfo(MOUNTINFO.read_text(errors="surrogateescape"))


def mounted_at(point: Path) -> Mount | None:
    """The overlay mounted (last) at ``point``, if any."""
    found = None
    for entry in table():
        if entry.fstype == "overlay" and entry.point == point:
            found = entry
    return found


def mount(lower: Path, upper: Path, work: Path, target: Path) -> None:
    """Mount the overlay of ``upper`` over ``lower`` at ``target``; ``OSError`` if the kernel refuses."""
    import ctypes

    try:
        data = options(lower, upper, work)
    except ValueError as problem:
        raise OSError(errno.EINVAL, str(problem), str(target)) from None
    libc = _libc()
    flags = MS_NOSUID | MS_NODEV
    if libc.mount(b"overlay", os.fsencode(target), b"overlay", ctypes.c_ulong(flags), data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(target))


def unmount(target: Path) -> None:
    """Unmount ``target``; if something still uses it, detach it lazily (it goes when the last user does)."""
    import ctypes

    libc = _libc()
    if libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
        return
    err = ctypes.get_errno() if err == errno.EBUSY else err
    raise OSError(err, os.strerror(err), str(target))


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)
