"""Spawning a process as another uid, or in a sandbox's network, without forking the whole caller.

``Popen(user=...)`` makes CPython fork (not vfork) the caller, which copies its page tables:
1.6 ms in a small CLI process and more in a large service, on every sandbox start. On Linux,
credentials belong to a thread, and glibc's ``setresuid`` changes them in every thread only by
signalling each one; the raw system calls change the calling thread alone. So, as root,
``as_user(uid)`` gives the calling thread ``uid`` as its real and effective ids (no
supplementary groups) while keeping root as its *saved* id, and a ``Popen`` inside it vforks a
child with those credentials. The child's ``execve`` sets its saved ids to the effective ones
and, its ids being non-zero and the binary carrying no file capabilities, leaves it no
capability: it is as unprivileged as after ``Popen(user=...)``. On leaving, the thread takes root
back through its saved id. Other threads never change.

Network namespaces belong to a thread too: ``in_network_of(pid)`` moves the calling thread into
the network namespace of ``pid`` and back, so a process it spawns there starts in it without a
helper such as ``nsenter`` (one exec less). The thread's mount namespace stays the host's.

So do mount namespaces: ``in_private_mounts(binds)`` gives the calling thread a private mount
namespace with some bind mounts, for the block only, so a process it spawns there (by vfork)
starts with them, while the host's namespace never sees them. ``unshare(CLONE_NEWNS)`` also gives
the thread its own copy of the working directory, root and umask: they stay what they were,
but a later ``chdir`` of another thread no longer moves this one.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = ["as_user", "available", "in_network_of", "in_private_mounts"]

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_NUMBERS = {
    "x86_64": {"setgroups": 116, "setresuid": 117, "setresgid": 119},
    "aarch64": {"setgroups": 159, "setresuid": 147, "setresgid": 149},
}
_SYSCALLS = _NUMBERS.get(os.uname().machine, {})


def available() -> bool:
    """Whether ``as_user`` works here: Linux on a known architecture, as root."""
    return bool(_SYSCALLS) and os.geteuid() == 0


@functools.cache
def _libc() -> ctypes.CDLL:
    import ctypes  # only where sandboxes start as root: the CLI's start-up path stays lean

    return ctypes.CDLL(None, use_errno=True)


def _call(name: str, *args: object) -> None:
    _check(_libc().syscall(_SYSCALLS[name], *args), name)


def _check(result: int, what: str) -> None:
    if result != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


@contextmanager
def as_user(uid: int) -> Iterator[None]:
    """Run the block with this thread's real and effective uid and gid ``uid``, and no groups."""
    import ctypes

    groups = os.getgroups()
    _call("setgroups", ctypes.c_size_t(0), None)
    try:
        _call("setresgid", ctypes.c_long(uid), ctypes.c_long(uid), ctypes.c_long(0))
        try:
            _call("setresuid", ctypes.c_long(uid), ctypes.c_long(uid), ctypes.c_long(0))
            try:
                yield
            finally:
                _call("setresuid", ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
        finally:
            _call("setresgid", ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
    finally:
        _call("setgroups", ctypes.c_size_t(len(groups)), (ctypes.c_uint * len(groups))(*groups))


@contextmanager
def in_network_of(pid: int) -> Iterator[None]:
    """Run the block with this thread in the network namespace of process ``pid`` (as root)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc().setns(target, CLONE_NEWNET), "setns (network)")
        finally:
            os.close(target)
        try:
            yield
        finally:
            _check(_libc().setns(own, CLONE_NEWNET), "setns (network)")
    finally:
        os.close(own)


@contextmanager
def in_private_mounts(binds: Mapping[Path, Path]) -> Iterator[None]:
    """Run the block with this thread in a mount namespace of its own where each source of ``binds``
    is bound on its mount point (as root). On leaving, the thread is back in the host's namespace
    and working directory; the private one lives on in the processes spawned in the block."""
    libc = _libc()
    own = os.open("/proc/thread-self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare (mount)")
        try:
            _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
            for source, point in binds.items():
                _check(
                    libc.mount(os.fsencode(source), os.fsencode(point), None, MS_BIND | MS_REC, None), f"bind {source}"
                )
            yield
        finally:
            _check(libc.setns(own, CLONE_NEWNS), "setns (mount)")
            os.fchdir(cwd)
    finally:
        os.close(own)
        os.close(cwd)
