"""What a sandbox may have planted in a checkout's ``.git``, looked for before host git runs there.

After the agent, host git runs over the tree it wrote (commit, diff, push), so the checkout's
``.git`` is inspected first: no symlinks inside it (none followed), no ``commondir``, alternates
that still point at the mirror alone, and no config key that ``git clone`` would not write. The
config is read by git itself (``list_config``), so what is judged is what git would see; bytes
that passed once pass again without a git process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

from corral.gitcmd import untrusted_config

__all__ = ["Inspector"]

TRUSTED_KEPT = 64
"""Configs (their bytes) remembered as passed; the memory starts over beyond this."""


class Inspector:
    """Finds what host git must not trust in a checkout's ``.git``; safe to share between threads."""

    def __init__(self, list_config: Callable[[Path], bytes]) -> None:
        self._list_config = list_config
        """``git config --file PATH --no-includes --list --null`` of a config file: its output."""
        self._trusted: set[bytes] = set()
        self._lock = threading.Lock()

    def problems(self, gitdir: Path, mirror: Path) -> list[str]:
        """What is wrong with ``gitdir`` (a checkout's ``.git`` borrowing ``mirror``'s objects); ``[]`` if nothing."""
        if gitdir.is_symlink() or not gitdir.is_dir():
            return [".git is not a directory"]
        found = [f"{path} is a symlink" for path in _symlinks(gitdir)]
        if (gitdir / "commondir").exists():
            found.append(".git/commondir exists")
        return found + _alternates_problems(gitdir, mirror) + self._config_problems(gitdir / "config")

    def _config_problems(self, config: Path) -> list[str]:
        """The keys of ``config`` that ``git clone`` does not write, as git reads them."""
        before = _contents(config)
        with self._lock:
            if before is not None and before in self._trusted:
                return []
        listed = self._list_config(config)
        keys = [entry.split(b"\n", 1)[0].decode(errors="replace") for entry in listed.split(b"\0") if entry]
        problems = [f"config key {key!r}" for key in untrusted_config(keys)]
        if not problems and before is not None and _contents(config) == before:  # git read these very bytes
            with self._lock:
                if len(self._trusted) >= TRUSTED_KEPT:
                    self._trusted.clear()
                self._trusted.add(before)
        return problems


def _symlinks(top: Path) -> list[Path]:
    """The symlinks below ``top``, none followed, seen in the directory listings (as ``os.walk`` goes)."""
    found: list[Path] = []
    pending = [str(top)]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_symlink():
                found.append(Path(entry.path))
            elif entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
    return found


def _contents(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _alternates_problems(gitdir: Path, mirror: Path) -> list[str]:
    path = gitdir / "objects" / "info" / "alternates"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return ["objects/info/alternates cannot be read"]
    expected = os.path.realpath(mirror / "objects")
    objects = gitdir / "objects"
    if [os.path.realpath(objects / line) for line in lines] != [expected]:
        return ["objects/info/alternates no longer points at the mirror alone"]
    return []
