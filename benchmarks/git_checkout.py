"""A job's checkout from a warm mirror versus a fresh ``git clone``, for a repository of 20,000 files.

The repository (20,000 source-like files of about 2 KiB, three commits on ``main`` and one more
commit per round on a side branch, repacked with bitmaps as a forge keeps it) is served over
smart HTTP by the real ``git http-backend`` on 127.0.0.1 (``tests/gitserver.py``). The subject is
``GitCache.checkout`` of ``main`` with the mirror already fresh: the refresh fetch against the
server and the job's checkout. As root that is an overlay of the commit's prepared tree (built
once, in the warm-up round), else a plain checkout that writes every file; the notes say which
was measured. The baseline, interleaved with it in the same loop, is ``git clone`` of the same
URL. Two more series: the first checkout of a commit whose tree is not cached yet (a new commit
of the side branch each time: it builds the tree), and the refresh fetch alone
(``GitCache.mirror``). Whatever writes every file depends on the file system of the scratch
directory (``TMPDIR``); the notes name it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks._stats import Budget, Result, Series, Target, fmt_ms

NAME = "git_checkout"
TITLE = "a job's checkout of 20,000 files from a warm mirror vs a fresh git clone over smart HTTP"

FILES = 20_000
AVERAGE_SIZE = 2048
MAX_ROUNDS = 10
MAX_SECONDS = 60.0
MAX_RATIO = 0.25


def run(budget: Budget) -> Result:
    result = Result(NAME, TITLE)
    if shutil.which("git") is None:
        result.skipped = "git is not installed (apt-get install --no-install-recommends git)"
        return result

    from tests.gitserver import GIT_ENV, add_commit, git, make_repo, serve

    from corral.gitcache import GitCache

    rounds = min(budget.max_iterations, MAX_ROUNDS)
    seconds = min(budget.max_seconds, MAX_SECONDS)
    with tempfile.TemporaryDirectory(prefix="corral-bench-git-") as scratch:
        root = Path(scratch)
        start = time.perf_counter()
        bare = make_repo(root / "server" / "big.git", files=FILES, commits=3, size=AVERAGE_SIZE)
        git("branch", "cold", "main", cwd=bare)
        for n in range(rounds + 1):  # one commit per round (and the warm-up) whose tree is not cached yet
            add_commit(bare, {f"cold/round-{n}.txt": f"round {n}\n".encode()}, branch="cold", message=f"Cold {n}")
        fresh = iter(git("rev-list", "--reverse", "refs/heads/cold", cwd=bare).splitlines()[-(rounds + 1) :])
        git("repack", "-a", "-d", "-b", "-q", cwd=bare)
        size = sum(p.stat().st_size for p in (bare / "objects" / "pack").iterdir())
        result.notes.append(
            f"repository: {FILES} files, pack {size / 2**20:.1f} MiB, built in {time.perf_counter() - start:.1f} s"
        )
        result.notes.append(f"scratch directory on {_filesystem(root)} (set TMPDIR to measure elsewhere)")
        with serve(root / "server") as base:
            url = f"{base}/big.git"
            cache = GitCache(root / "cache")
            start = time.perf_counter()
            cache.mirror(url)
            result.notes.append(f"first mirror (clone --mirror over HTTP): {fmt_ms(time.perf_counter() - start)}")
            jobs = iter(range(1_000_000))
            kinds: set[str] = set()

            def checkout(dest: Path, ref: str | None = None) -> None:
                made = cache.checkout(url, ref, f"bench-{next(jobs)}", dest)
                kinds.add("overlay of a prepared tree" if made.overlay else f"plain ({cache.fallback})")

            def first(dest: Path) -> None:
                checkout(dest, next(fresh))

            def clone(dest: Path) -> None:
                subprocess.run(["git", "clone", "--quiet", url, str(dest)], env=GIT_ENV, check=True)

            def refresh(dest: Path) -> None:
                cache.mirror(url)

            subjects = {"checkout": checkout, "clone": clone, "first": first, "refresh": refresh}
            try:
                times, done, took = _interleaved(subjects, root / "work", rounds=rounds, seconds=seconds)
            finally:
                cache.reap()  # unmount the overlay checkouts before the scratch directory goes
            result.notes.append(f"{done} interleaved rounds in {took:.1f} s after 1 warm-up round")
            result.notes.append(f"checkouts measured: {', '.join(sorted(kinds))}")
            if any(kind.startswith("overlay") for kind in kinds):
                result.notes.append(
                    "the tree of main is prepared once, by the warm-up round's checkout, and then shared; "
                    "the first-checkout series builds a new tree in every call"
                )

    checkout_series = Series("corral GitCache.checkout (warm mirror, with its refresh fetch)", times["checkout"])
    clone_series = Series("git clone over smart HTTP from 127.0.0.1", times["clone"])
    first_series = Series("the first checkout of a commit whose tree is not cached yet", times["first"])
    refresh_series = Series("the refresh fetch alone (GitCache.mirror)", times["refresh"])
    result.series = [checkout_series, clone_series, first_series, refresh_series]
    ratio = checkout_series.p50 / clone_series.p50
    result.ratios["p50 checkout / clone"] = ratio
    result.ratios["p90 checkout / clone"] = checkout_series.p90 / clone_series.p90
    result.ratios["p50 first checkout (tree built) / clone"] = first_series.p50 / clone_series.p50
    result.notes.append(
        f"checkout minus its refresh fetch at p50 (the job's .git, the mount or the files): "
        f"{fmt_ms(checkout_series.p50 - refresh_series.p50)}"
    )
    result.targets = [Target("p50 ratio checkout / clone", ratio, MAX_RATIO, "x")]
    return result


def _interleaved(
    subjects: dict[str, Callable[[Path], None]], work: Path, *, rounds: int, seconds: float
) -> tuple[dict[str, list[float]], int, float]:
    """Like ``_stats.interleaved``, but each call gets a fresh directory.

    The directories are all kept until the loop ends: removing 20,000 files between rounds makes
    the next writes on a file system mounted with ``discard`` (the project VM's ext4) wait for the
    freed blocks to be discarded, which slowed each round down more than the one before (2.7, 7.8,
    12.4 s for the same clone) and measured the disk, not git.
    """
    work.mkdir()
    times: dict[str, list[float]] = {label: [] for label in subjects}
    order = list(subjects)
    shuffle = random.Random(0).shuffle
    made = iter(range(1_000_000))

    def one_round(record: bool) -> None:
        shuffle(order)
        for label in order:
            dest = work / f"{label}-{next(made)}"
            t0 = time.perf_counter()
            subjects[label](dest)
            elapsed = time.perf_counter() - t0
            if record:
                times[label].append(elapsed)

    one_round(record=False)
    start = time.perf_counter()
    done = 0
    while done < rounds and time.perf_counter() - start < seconds:
        one_round(record=True)
        done += 1
    return times, done, time.perf_counter() - start


def _filesystem(path: Path) -> str:
    """The type and mount point of the file system holding ``path`` (from /proc/self/mounts)."""
    best = ("", "unknown")
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                fields = line.split()
                mount, kind = fields[1], fields[2]
                if (str(path.resolve()) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best[0]):
                    best = (mount, kind)
    except OSError:
        return "an unknown file system"
    return f"{best[1]} ({best[0]})"
