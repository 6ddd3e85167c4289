"""Rewriting a git index's stat data without hashing: checked against git's own reading and writing."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from corral.gitindex import restat
from tests.gitserver import git
from tests.tools import require

NAMES = ["README.md", "src/app.py", "bin/tool.sh", "link", "deep/" + "x" * 120 + "/long-name.txt"]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work tree with a committed file of each kind (a long path too) and its index."""
    require("git")
    root = tmp_path / "work"
    root.mkdir()
    git("init", "--quiet", cwd=root)
    for name in NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "link":
            path.symlink_to("README.md")
        else:
            path.write_text(f"content of {name}\n")
    (root / "bin" / "tool.sh").chmod(0o755)
    git("add", "--all", cwd=root)
    git("commit", "--quiet", "-m", "All", cwd=root)
    return root


def index_of(work: Path) -> Path:
    return work / ".git" / "index"


def lstat_in(work: Path):  # type: ignore[no-untyped-def]
    return lambda name: os.lstat(os.fsencode(work) + b"/" + name)


def test_it_writes_what_git_s_refresh_writes_after_a_change_of_stat_data(work: Path) -> None:
    back = time.time_ns() - 5_000_000_000
    for name in NAMES:
        path = work / name
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o066)  # a new ctime, and a new mode git does not track
            os.utime(path, ns=(back, back))
    mine = restat(index_of(work).read_bytes(), lstat_in(work))
    git("update-index", "-q", "--refresh", cwd=work)
    assert mine == index_of(work).read_bytes()
    index_of(work).write_bytes(mine)
    assert git("diff-files", "--name-only", cwd=work) == ""


def test_each_entry_gets_the_stat_data_of_its_own_path(work: Path) -> None:
    real = os.lstat(work / "README.md")

    def fake(name: bytes) -> os.stat_result:
        n = NAMES.index(name.decode()) + 1
        values = list(real)
        values[1], values[2], values[4], values[5], values[6] = 1000 + n, 77, 500 + n, 600 + n, 10 * n
        fields = (*values[:7], 1_700_000_000, 1_600_000_000 + n, 1_500_000_000 + n)
        extra = {"st_mtime_ns": (1_600_000_000 + n) * 10**9 + n, "st_ctime_ns": (1_500_000_000 + n) * 10**9}
        return os.stat_result(fields, extra)

    index_of(work).write_bytes(restat(index_of(work).read_bytes(), fake))
    blocks: dict[str, str] = {}
    current = ""
    for line in git("ls-files", "--debug", cwd=work).splitlines():
        if line.startswith("  "):
            blocks[current] += line + "\n"
        else:
            current = line
            blocks[current] = ""
    assert sorted(blocks) == sorted(NAMES)
    for name, block in blocks.items():
        n = NAMES.index(name) + 1
        assert f"ctime: {1_500_000_000 + n}:0" in block
        assert f"mtime: {1_600_000_000 + n}:{n}" in block
        assert f"ino: {1000 + n}" in block
        assert f"uid: {500 + n}\tgid: {600 + n}" in block
        assert f"size: {10 * n}\t" in block
    assert git("ls-files", "-s", cwd=work).count("100755 ") == 1  # git's modes are kept


def test_an_extended_entry_of_a_version_3_index_is_rewritten(work: Path) -> None:
    (work / "later.txt").write_text("intent to add\n")
    git("add", "--intent-to-add", "later.txt", cwd=work)
    data = index_of(work).read_bytes()
    assert int.from_bytes(data[4:8], "big") == 3
    index_of(work).write_bytes(restat(data, lstat_in(work)))
    assert git("diff-files", "--name-only", cwd=work) == "later.txt"  # the intent-to-add entry, as before
    assert "later.txt" in git("ls-files", cwd=work)


def test_what_it_does_not_rewrite_is_refused(work: Path) -> None:
    data = index_of(work).read_bytes()
    with pytest.raises(ValueError, match="checksum"):
        restat(data[:-1] + bytes([data[-1] ^ 1]), lstat_in(work))
    with pytest.raises(ValueError, match="checksum"):
        restat(b"DIRC", lstat_in(work))
    git("update-index", "--index-version", "4", cwd=work)
    with pytest.raises(ValueError, match="version 4"):
        restat(index_of(work).read_bytes(), lstat_in(work))
