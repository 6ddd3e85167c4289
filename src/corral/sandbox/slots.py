"""Slots: the host-wide unit of ownership of a running sandbox.

A sandbox holds slot N for its whole life through an ``flock`` on ``<runtime>/slots/N.lock``;
the kernel drops the lock when the holder dies, however it dies. Slot N names the sandbox's
cgroups (``sN``) and, when corral runs as root, its unprivileged host uid (``base + N``). So
whoever takes a free slot next can tell that anything still carrying its name is a leftover,
and remove it: processes, cgroups, and the workspace ownership a killed caller did not hand back.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from pathlib import Path

from corral.errors import SandboxError

__all__ = [
    "Slot",
    "acquire",
    "check_index",
    "leftover_cgroups",
    "leftover_owner",
    "lock_if_free",
    "restore_owner",
    "take_owner",
]


@dataclasses.dataclass
class Slot:
    index: int
    fd: int
    path: Path

    @property
    def name(self) -> str:
        return f"s{self.index}"

    def record(self, **facts: object) -> None:
        """Add to the notes of what must be undone if the holder dies (read back by ``facts``)."""
        import json

        data = json.dumps({**self.facts(), **facts, "pid": os.getpid()}).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    @property
    def recorded(self) -> bool:
        """Whether a holder left notes: it died holding the slot (a clean release empties them)."""
        return os.fstat(self.fd).st_size > 0

    def facts(self) -> dict[str, object]:
        import json

        size = os.fstat(self.fd).st_size
        try:
            data = json.loads(os.pread(self.fd, size, 0) or b"{}")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def release(self) -> None:
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1


def lock_if_free(directory: Path, index: int) -> Slot | None:
    path = directory / f"{index}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Slot(index, fd, path)


def acquire(runtime: Path, count: int) -> Slot:
    """Take the lowest free slot."""
    directory = runtime / "slots"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for index in range(count):
        slot = lock_if_free(directory, index)
        if slot is not None:
            return slot
    msg = f"All {count} sandbox slots are in use; wait for a sandbox to end or raise CORRAL_SANDBOX_SLOTS."
    raise SandboxError(msg)


def _chown_all(root: Path, old: tuple[int, int], new: tuple[int, int]) -> None:
    """Give everything under ``root`` (itself included) that ``old`` owns to ``new``; links are not followed."""
    if root.lstat().st_uid == old[0]:
        os.lchown(root, *new)
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_uid == old[0]:
                        os.lchown(entry.path, *new)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                except FileNotFoundError:
                    continue


def take_owner(slot: Slot, workspace: Path, uid: int) -> tuple[int, int]:
    """Hand the workspace owner's files to the sandbox uid; returns the owner to restore."""
    st = workspace.stat()
    owner = (st.st_uid, st.st_gid)
    slot.record(workspace=str(workspace), owner=owner, uid=uid)
    _chown_all(workspace, owner, (uid, uid))
    return owner


def restore_owner(workspace: Path, uid: int, owner: tuple[int, int]) -> None:
    """Give everything the sandbox uid owns in the workspace back to its owner."""
    if workspace.exists():
        _chown_all(workspace, (uid, uid), owner)


def leftover_owner(slot: Slot) -> tuple[Path, int, tuple[int, int]] | None:
    facts = slot.facts()
    workspace, owner, uid = facts.get("workspace"), facts.get("owner"), facts.get("uid")
    if isinstance(workspace, str) and isinstance(uid, int) and isinstance(owner, list) and len(owner) == 2:
        return Path(workspace), uid, (int(owner[0]), int(owner[1]))
    return None


def leftover_cgroups(slot: Slot) -> tuple[int, dict[str, str]]:
    """The cgroup version and directories a dead holder recorded (maybe below another process's group)."""
    facts = slot.facts()
    version, roles = facts.get("cgroup_version"), facts.get("cgroups")
    if isinstance(version, int) and isinstance(roles, dict):
        return version, {str(k): str(v) for k, v in roles.items()}
    return 0, {}


def check_index(name: str) -> int | None:
    """The slot index of a cgroup name like ``s7``."""
    if name.startswith("s") and name[1:].isdigit():
        return int(name[1:])
    return None
