"""Overlay checkouts in the sandbox and in the job flow: the slot uid writes them, the host commits them.

Real git, real overlay mounts, the real bubblewrap sandbox as the slot's unprivileged host uid, a
real store and runner with the generic agent.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.gitcache import GitCache
from corral.jobs.models import JobOptions, JobState
from corral.jobs.store import JobStore, open_store
from corral.runner.job import JobRunner
from corral.runner.pool import RunnerPool, reap_checkouts
from corral.sandbox.bwrap import BwrapSandbox
from corral.sandbox.spec import SandboxSpec
from corral.settings import Settings
from tests.gitserver import git, make_repo
from tests.mounts import overlays_under, unmount_under
from tests.tools import require, require_root

pytestmark = pytest.mark.sandbox


@pytest.fixture
def home() -> Iterator[Path]:
    require_root()
    require("bwrap")
    require("git")
    path = Path(tempfile.mkdtemp(prefix="corral-overlay-jobs-"))
    yield path / "home"
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def origin(home: Path) -> Path:
    return make_repo(home.parent / "origin.git", files=6, commits=2)


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings(home=home, git_allow_local=True, idle_timeout=60.0, startup_timeout=60.0, job_timeout=120.0)


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


SCRIPT = JobOptions(command=("sh", "-c", "{prompt}"))
"""The generic agent running its prompt as a shell script (a follow-up keeps its parent's options)."""


AGENT_WORK = """set -e
git status --porcelain > /tmp/status-before
git diff-files --name-only >> /tmp/status-before
echo "edited in place" >> README.md
echo "added" > added.txt
rm src/pkg000/module_00001.py
mv src/pkg000/module_00002.py src/pkg000/renamed.py
mkdir -p tools && printf '#!/bin/sh\\necho hi\\n' > tools/run.sh && chmod +x tools/run.sh
cp src/pkg000/module_00003.py copy && mv copy src/pkg000/module_00003.py && chmod +x src/pkg000/module_00003.py
if chmod +x src/pkg000/module_00004.py 2>/dev/null; then echo chmod-untouched-ok; else echo chmod-untouched-refused; fi
for p in .git/hooks/post-commit .git/config .git/objects/info/alternates; do
  if (echo evil >> "$p") 2>/dev/null; then echo "wrote $p"; else echo "kept $p"; fi
done
cat /tmp/status-before | wc -c
"""


def test_the_sandbox_changes_an_overlay_checkout_and_finish_commits_exactly_that(
    settings: Settings, origin: Path
) -> None:
    cache = GitCache(settings.home / "git", allow_local=True)
    workspace = settings.home / "jobs" / "sandboxed"
    workspace.mkdir(parents=True, mode=0o700)
    made = cache.checkout(str(origin), None, "sandboxed", workspace / "repo")
    assert made.overlay, cache.fallback
    hooks = sorted(p.name for p in (made.path / ".git" / "hooks").iterdir())
    config = (made.path / ".git" / "config").read_text()
    spec = SandboxSpec(("sh", "-c", AGENT_WORK), workspace, cwd=made.path, ro_binds=(made.mirror,))
    result = BwrapSandbox(settings).run(spec)
    assert result.ok, result.stderr.decode()
    lines = result.stdout.decode().split()
    # git inside saw a clean checkout (nothing printed before the count of 0 bytes)
    assert lines[-1] == "0", result.stdout
    assert "chmod-untouched-refused" in lines  # a tracked file the agent did not write keeps the overflow owner
    assert result.stdout.decode().count("kept ") == 3, result.stdout
    assert sorted(p.name for p in (made.path / ".git" / "hooks").iterdir()) == hooks
    assert (made.path / ".git" / "config").read_text() == config
    sha, diff = cache.finish(made, "Agent work")
    assert sha is not None
    assert sorted(diff.files) == sorted(
        [
            "README.md",
            "added.txt",
            "src/pkg000/module_00001.py",
            "src/pkg000/module_00002.py",
            "src/pkg000/renamed.py",
            "src/pkg000/module_00003.py",
            "tools/run.sh",
        ]
    )
    summary = git("diff", "--summary", made.base, sha, cwd=made.path)
    assert "mode change 100644 => 100755 src/pkg000/module_00003.py" in summary
    assert "create mode 100755 tools/run.sh" in summary
    assert "delete mode 100644 src/pkg000/module_00001.py" in summary
    assert "+edited in place" in diff.text
    # the host's git sees the merged tree as committed, and the tree underneath is untouched
    assert git("status", "--porcelain", cwd=made.path) == ""
    assert cache.finish(made, "Nothing more")[0] is None
    # the handover to the slot uid and back copied no untouched file up: unmounted, the checkout's
    # own layer holds .git and what the agent wrote, renamed or deleted (whiteouts), nothing else
    cache.detach(made.path)
    layer = sorted(p.relative_to(made.path).as_posix() for p in made.path.rglob("*") if ".git" not in p.parts)
    assert layer == sorted(
        [
            "README.md",
            "added.txt",
            "src",
            "src/pkg000",
            "src/pkg000/module_00001.py",
            "src/pkg000/module_00002.py",
            "src/pkg000/module_00003.py",
            "src/pkg000/renamed.py",
            "tools",
            "tools/run.sh",
        ]
    )


def test_a_job_s_checkout_is_mounted_only_while_a_job_uses_it(
    settings: Settings, store: JobStore, origin: Path
) -> None:
    pool = RunnerPool(settings, store, capacity=1)
    pool.start()
    try:
        first = pool.submit("echo parent > parent.txt", str(origin), agent="generic", options=SCRIPT)
        parent = pool.wait(first.id, 60)
        assert parent.state is JobState.SUCCEEDED, parent.result
        repo = pool.runner.dirs(first.id).repo
        assert overlays_under(settings.home) == []  # unmounted when the job ended
        assert sorted(p.name for p in repo.iterdir()) == [".git", "parent.txt"]  # its own layer, not the tree
        assert pool.runner.git.layers.find(repo) is not None
        second = pool.follow_up(first.id, "cat parent.txt README.md > seen.txt")
        child = pool.wait(second.id, 60)
    finally:
        pool.stop()
    assert child.state is JobState.SUCCEEDED, child.result
    assert child.result is not None
    assert child.result.files_changed == ("parent.txt", "seen.txt")  # from the base, across both jobs
    readme = git("show", f"{child.result.branch}:README.md", cwd=repo)
    assert git("show", f"{child.result.branch}:seen.txt", cwd=repo) == f"parent\n{readme}"
    assert overlays_under(settings.home) == []


def test_recovery_unmounts_the_checkouts_no_running_job_uses(settings: Settings, store: JobStore, origin: Path) -> None:
    runner = JobRunner(settings, store)
    running = runner.submit("true", str(origin), agent="generic", options=SCRIPT)
    claimed = store.claim("someone-else-alive")
    assert claimed is not None
    assert claimed.id == running.id
    idle = runner.submit("true", str(origin), agent="generic", options=SCRIPT)
    for job in (running, idle):
        runner.dirs(job.id).root.mkdir(parents=True, mode=0o700)
        assert runner.git.checkout(str(origin), None, job.id, runner.dirs(job.id).repo).overlay
    busy, left = (Path(os.path.realpath(runner.dirs(j.id).repo)) for j in (running, idle))
    assert reap_checkouts(settings, store) == [left]
    assert overlays_under(settings.home) == [busy]
    assert reap_checkouts(settings, store) == []
