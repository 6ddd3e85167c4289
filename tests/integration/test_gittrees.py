"""Overlay checkouts of prepared trees, for real: git, kernel overlay mounts, and the bubblewrap sandbox."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import overlay
from corral.errors import WorkspaceError
from corral.gitcache import Checkout, GitCache
from corral.gittrees import TreeCache, overflow_ids
from tests.gitserver import git
from tests.mounts import overlays_under, public_dir, unmount_under
from tests.tools import require, require_root

FILES = {
    "README.md": b"# project\n",
    "src/app.py": b"print('app')\n",
    "src/lib/util.py": b"def util():\n    return 1\n",
    "src/lib/deep/more.py": b"MORE = 2\n",
    "docs/guide.md": b"guide\n",
}


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700); its mounts are undone afterwards."""
    require_root()
    require("git")
    with public_dir("corral-gittrees-test-") as path:
        yield path


@pytest.fixture
def origin(public: Path) -> Path:
    """A bare repository of two commits: plain files, an executable, a symlink, nested directories."""
    work = public / "origin-work"
    work.mkdir()
    git("init", "--quiet", "-b", "main", cwd=work)
    for name, content in FILES.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(content)
    (work / "bin").mkdir()
    (work / "bin" / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (work / "bin" / "tool.sh").chmod(0o755)
    (work / "link.md").symlink_to("README.md")
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "First", cwd=work)
    (work / "README.md").write_text("# project, second\n")
    git("commit", "--quiet", "-am", "Second", cwd=work)
    bare = public / "origin.git"
    git("clone", "--quiet", "--bare", str(work), str(bare))
    return bare


@pytest.fixture
def cache(public: Path) -> GitCache:
    return GitCache(public / "cache", allow_local=True)


def checkout(cache: GitCache, origin: Path, job: str, dest: Path, ref: str | None = None) -> Checkout:
    made = cache.checkout(str(origin), ref, job, dest)
    assert made.overlay, cache.fallback
    return made


def snapshot(root: Path) -> dict[str, tuple[str, bytes | str]]:
    """Every entry below ``root`` outside ``.git``: kind and content (a link's target), executable bit noted."""
    found: dict[str, tuple[str, bytes | str]] = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in (*dirs, *files):
            path = Path(top, name)
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", "")
            else:
                kind = "exec" if path.stat().st_mode & stat.S_IXUSR else "file"
                found[rel] = (kind, path.read_bytes())
    return found


def lower_of(point: Path) -> Path:
    mounted = overlay.mounted_at(Path(os.path.realpath(point)))
    assert mounted is not None, f"nothing is mounted at {point}"
    assert mounted.lower is not None
    return mounted.lower


# -- the checkout -------------------------------------------------------------------------------


def test_an_overlay_checkout_has_the_files_of_a_plain_one(cache: GitCache, origin: Path, public: Path) -> None:
    layered = checkout(cache, origin, "a", public / "layered")
    plain = GitCache(public / "plain-cache", allow_local=True, overlay=False).checkout(
        str(origin), None, "b", public / "plain"
    )
    assert not plain.overlay
    assert snapshot(layered.path) == snapshot(plain.path)
    assert snapshot(layered.path)["bin/tool.sh"][0] == "exec"
    assert git("symbolic-ref", "HEAD", cwd=layered.path) == "refs/heads/corral/a"
    assert git("rev-parse", "HEAD", cwd=layered.path) == plain.base == layered.base
    assert git("ls-files", "-s", cwd=layered.path) == git("ls-files", "-s", cwd=plain.path)
    # the tree is only seen through the mount; the checkout's own directory holds .git alone
    assert lower_of(layered.path).is_relative_to(cache.trees.root)
    cache.detach(layered.path)
    assert sorted(p.name for p in layered.path.iterdir()) == [".git"]


def test_a_fresh_checkout_is_clean_without_a_rehash_and_sees_a_same_size_edit(
    cache: GitCache, origin: Path, public: Path
) -> None:
    made = checkout(cache, origin, "clean", public / "work")
    # diff-files compares stat data only: an entry whose stat differs from the index would be listed
    assert git("diff-files", "--name-only", cwd=made.path) == ""
    assert git("status", "--porcelain", cwd=made.path) == ""
    target = made.path / "src" / "app.py"
    before = target.read_bytes()
    target.write_bytes(before.replace(b"app", b"apq"))
    assert target.stat().st_size == len(before)
    assert git("diff", "--name-only", cwd=made.path) == "src/app.py"
    assert "+print('apq')" in git("diff", cwd=made.path)
    # the tree underneath is untouched: the edit was copied up into the checkout
    assert (lower_of(made.path) / "src" / "app.py").read_bytes() == before


def test_the_tree_s_files_belong_to_the_overflow_ids_and_are_writable_by_all(
    cache: GitCache, origin: Path, public: Path
) -> None:
    made = checkout(cache, origin, "modes", public / "work")
    tree = lower_of(made.path)
    assert stat.S_IMODE(cache.trees.root.stat().st_mode) == 0o700
    for top, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            info = Path(top, name).lstat()
            assert (info.st_uid, info.st_gid) == overflow_ids(), Path(top, name)
            if stat.S_ISDIR(info.st_mode):
                assert stat.S_IMODE(info.st_mode) == 0o777
            elif stat.S_ISREG(info.st_mode):
                assert stat.S_IMODE(info.st_mode) in (0o666, 0o777)
    assert stat.S_IMODE((tree / "bin" / "tool.sh").stat().st_mode) == 0o777
    assert stat.S_IMODE(made.path.stat().st_mode) == 0o700  # only the checkout's owner reaches them


def test_two_checkouts_of_one_commit_share_its_tree_and_not_their_changes(
    cache: GitCache, origin: Path, public: Path
) -> None:
    first = checkout(cache, origin, "one", public / "one")
    second = checkout(cache, origin, "two", public / "two")
    assert lower_of(first.path) == lower_of(second.path)
    (first.path / "README.md").write_text("changed by one\n")
    (first.path / "only-one.txt").write_text("one\n")
    (second.path / "docs" / "guide.md").unlink()
    assert (second.path / "README.md").read_text() == "# project, second\n"
    assert not (second.path / "only-one.txt").exists()
    assert (first.path / "docs" / "guide.md").is_file()
    assert cache.finish(first, "One")[1].files == ("README.md", "only-one.txt")
    assert cache.finish(second, "Two")[1].files == ("docs/guide.md",)


def test_an_older_commit_gets_its_own_tree(cache: GitCache, origin: Path, public: Path) -> None:
    old = git("rev-parse", "main~1", cwd=origin)
    newer = checkout(cache, origin, "new", public / "new")
    older = checkout(cache, origin, "old", public / "old", ref=old)
    assert lower_of(newer.path) != lower_of(older.path)
    assert (older.path / "README.md").read_text() == "# project\n"
    assert git("status", "--porcelain", cwd=older.path) == ""


# -- attach, detach, follow-ups, eviction -------------------------------------------------------


def test_a_detached_checkout_keeps_its_changes_and_mounts_again(cache: GitCache, origin: Path, public: Path) -> None:
    made = checkout(cache, origin, "parent", public / "work")
    (made.path / "README.md").write_text("parent's edit\n")
    (made.path / "src" / "lib" / "util.py").unlink()
    (made.path / "new.txt").write_text("parent's file\n")
    sha, _ = cache.finish(made, "Parent")
    assert cache.detach(made.path)
    assert not cache.detach(made.path)  # twice is fine
    with pytest.raises(WorkspaceError, match="not mounted; attach it"):
        cache.finish(made, "Would delete every file of the tree")
    # unmounted, the directory holds the branch and the files the job wrote, and git reads it
    assert git("rev-parse", "refs/heads/corral/parent", cwd=made.path) == sha
    assert (made.path / "new.txt").read_text() == "parent's file\n"
    assert not (made.path / "docs").exists()
    assert cache.attach(made.path)
    assert cache.attach(made.path)  # already mounted: nothing to do
    assert len(overlays_under(made.path)) == 1
    assert (made.path / "README.md").read_text() == "parent's edit\n"
    assert not (made.path / "src" / "lib" / "util.py").exists()
    assert (made.path / "docs" / "guide.md").is_file()
    assert git("status", "--porcelain", cwd=made.path) == ""


def test_an_evicted_tree_is_built_again_on_attach(cache: GitCache, origin: Path, public: Path) -> None:
    made = checkout(cache, origin, "evicted", public / "work")
    (made.path / "src" / "app.py").write_text("print('edited')\n")
    tree = lower_of(made.path)
    assert cache.trees.evict(made.mirror, keep=0) == []  # mounted: kept
    cache.detach(made.path)
    assert cache.trees.evict(made.mirror, keep=0) == [tree.parent]
    assert not tree.exists()
    assert cache.attach(made.path)
    assert lower_of(made.path) == tree
    assert (made.path / "src" / "app.py").read_text() == "print('edited')\n"
    assert (made.path / "docs" / "guide.md").read_bytes() == FILES["docs/guide.md"]
    assert git("status", "--porcelain", cwd=made.path) == "M src/app.py"  # (stripped of its leading space)


def test_eviction_keeps_mounted_and_recent_trees(cache: GitCache, origin: Path, public: Path) -> None:
    old = git("rev-parse", "main~1", cwd=origin)
    mounted = checkout(cache, origin, "mounted", public / "mounted", ref=old)
    other = checkout(cache, origin, "other", public / "other")
    cache.detach(other.path)
    trees = TreeCache(cache.trees.root)
    assert trees.evict(other.mirror, keep=1) == []  # the most recently used one is kept
    removed = trees.evict(other.mirror, keep=0)
    assert removed == [lower_of(public / "mounted").parent.with_name(other.base)]
    assert (lower_of(mounted.path) / "README.md").is_file()
    with trees.held(mounted.mirror, other.base) as tree:  # built again, and held: not evicted
        assert trees.evict(other.mirror, keep=0) == []
        assert tree.files.is_dir()


def test_remove_unmounts_and_deletes_the_checkout(cache: GitCache, origin: Path, public: Path) -> None:
    made = checkout(cache, origin, "gone", public / "work")
    note = cache.layers.find(made.path)
    assert note is not None
    cache.remove(made)
    assert not made.path.exists()
    assert overlays_under(public) == []
    assert not note.note.parent.exists()
    assert not cache.attach(made.path)  # nothing left to mount


# -- races and crashes ----------------------------------------------------------------------------


def test_threads_racing_for_one_tree_build_it_once(
    cache: GitCache, origin: Path, public: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = TreeCache._build

    def counted(self: TreeCache, mirror: Path, tree: object) -> None:
        built.append(str(tree))
        real(self, mirror, tree)  # type: ignore[arg-type]

    monkeypatch.setattr(TreeCache, "_build", counted)
    cache.mirror(str(origin))
    made: dict[int, Checkout] = {}
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            made[n] = cache.checkout(str(origin), None, f"race-{n}", public / f"race-{n}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(built) == 1
    assert len({lower_of(c.path) for c in made.values()}) == 1
    assert all(git("status", "--porcelain", cwd=c.path) == "" for c in made.values())


def test_processes_racing_for_one_tree_share_it(origin: Path, public: Path) -> None:
    script = (
        "import sys; from pathlib import Path; from corral.gitcache import GitCache; "
        "cache = GitCache(Path(sys.argv[1]), allow_local=True); "
        "print(cache.checkout(sys.argv[2], None, sys.argv[3], Path(sys.argv[4])).overlay)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(public / "cache"), str(origin), f"p{n}", str(public / f"p{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(3)
    ]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode() for _, err in outputs]
    assert [out.decode().strip() for out, _ in outputs] == ["True"] * 3
    lowers = {lower_of(public / f"p{n}") for n in range(3)}
    assert len(lowers) == 1
    group = next(iter(lowers)).parent.parent
    assert sorted(p.name for p in group.iterdir() if p.is_dir()) == [next(iter(lowers)).parent.name]


def test_what_a_killed_builder_left_is_built_over(cache: GitCache, origin: Path, public: Path) -> None:
    mirror = cache.mirror(str(origin))
    commit = git("rev-parse", "HEAD", cwd=origin)
    partial = cache.trees.tree(mirror, commit).path.with_name(f".{commit}.partial")
    (partial / "files").mkdir(parents=True)
    (partial / "files" / "half-written.txt").write_text("from a build that was killed\n")
    made = checkout(cache, origin, "after", public / "work")
    assert not partial.exists()
    assert not (made.path / "half-written.txt").exists()
    assert snapshot(made.path)["README.md"] == ("file", b"# project, second\n")


def test_the_mounts_of_a_killed_holder_are_reaped(origin: Path, public: Path) -> None:
    script = (
        "import os, signal, sys; from pathlib import Path; from corral.gitcache import GitCache; "
        "GitCache(Path(sys.argv[1]), allow_local=True).checkout(sys.argv[2], None, 'killed', Path(sys.argv[3])); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    dest = public / "jobs" / "killed" / "repo"
    dest.parent.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", script, str(public / "cache"), str(origin), str(dest)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert overlays_under(dest) == [Path(os.path.realpath(dest))]  # the kernel keeps a mount whoever made it
    cache = GitCache(public / "cache", allow_local=True)
    kept = checkout(cache, origin, "alive", public / "alive")
    assert cache.reap(keep=[kept.path]) == [Path(os.path.realpath(dest))]
    assert overlays_under(dest) == []
    assert overlays_under(kept.path) != []
    assert cache.attach(dest)  # the follow-up mounts it again, changes and all
    assert git("status", "--porcelain", cwd=dest) == ""


# -- where an overlay cannot be -------------------------------------------------------------------


def test_a_file_system_that_refuses_the_overlay_gets_a_plain_checkout(origin: Path, public: Path) -> None:
    scratch = public / "tmpfs"
    scratch.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "corral-test", str(scratch)], check=True)
    try:
        cache = GitCache(public / "cache", allow_local=True)
        made = cache.checkout(str(origin), None, "refused", scratch / "repo")
        assert not made.overlay
        assert cache.fallback is not None
        assert "refused an overlay" in cache.fallback
        assert snapshot(made.path)["README.md"] == ("file", b"# project, second\n")
        assert git("status", "--porcelain", cwd=made.path) == ""
        assert not cache.attach(made.path)
        assert not cache.detach(made.path)
        assert overlays_under(public) == []
        # the same cache still layers where the kernel allows it
        assert cache.checkout(str(origin), None, "allowed", public / "allowed").overlay
        assert cache.fallback is None
    finally:
        unmount_under(scratch)
        subprocess.run(["umount", str(scratch)], check=True)


def test_a_cache_run_by_another_uid_makes_plain_checkouts(origin: Path, public: Path) -> None:
    setpriv = require("setpriv")
    nobody = 65534
    home = public / "nobody"
    shutil.copytree(origin, home / "origin.git")
    for path in (home, *home.rglob("*")):
        os.lchown(path, nobody, nobody)
    script = (
        "import sys; from pathlib import Path; from corral.gitcache import GitCache; "
        "cache = GitCache(Path(sys.argv[1]), allow_local=True); "
        "c = cache.checkout(sys.argv[2], None, 'plain', Path(sys.argv[3])); print(c.overlay, cache.fallback, sep='|')"
    )
    paths = (str(home / "cache"), str(home / "origin.git"), str(home / "repo"))
    done = subprocess.run(
        [setpriv, f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", sys.executable, "-c", script, *paths],
        capture_output=True,
        check=False,
        env={**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": os.devnull},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "False|corral is not root, and only root mounts overlays"
    assert (home / "repo" / "README.md").read_text() == "# project, second\n"


def test_turned_off_it_makes_plain_checkouts(origin: Path, public: Path) -> None:
    cache = GitCache(public / "cache", allow_local=True, overlay=False)
    made = cache.checkout(str(origin), None, "off", public / "work")
    assert not made.overlay
    assert cache.fallback == "overlay checkouts are turned off"
    assert overlays_under(public) == []
