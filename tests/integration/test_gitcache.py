"""The git cache against real git: a smart-HTTP server on 127.0.0.1, real mirrors and checkouts."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.errors import GitError, RepoError, WorkspaceError
from corral.gitcache import Checkout, GitCache
from corral.gitcmd import mirror_name
from corral.secrets import Secret
from tests.gitserver import Request, add_commit, git, make_repo, serve
from tests.mounts import public_dir
from tests.tools import require, require_root

TOKEN = "push-token-7f3a9c"
NOBODY = 65534


@dataclasses.dataclass
class Remote:
    url: str
    bare: Path
    log: list[Request]


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Path]:
    """A directory every uid can traverse (pytest's tmp_path is 0700), removed afterwards."""
    require("git")
    with public_dir("corral-gitcache-test-") as path:
        yield path


@pytest.fixture
def remote(public: Path) -> Iterator[Remote]:
    """``app.git`` (20 files, 3 commits) served over smart HTTP; pushing needs ``TOKEN``."""
    bare = make_repo(public / "server" / "app.git", files=20, commits=3)
    log: list[Request] = []
    with serve(public / "server", token=TOKEN, log=log) as base:
        yield Remote(f"{base}/app.git", bare, log)


@pytest.fixture(params=["overlay", "plain"])
def cache(public: Path, request: pytest.FixtureRequest) -> GitCache:
    """A cache making overlay checkouts (where it can: as root) or plain ones; every test runs with both."""
    return GitCache(public / "cache", overlay=request.param == "overlay")


def rev(bare: Path, name: str) -> str:
    return git("rev-parse", f"{name}^{{commit}}", cwd=bare)


def in_checkout(checkout: Checkout, *args: str) -> str:
    return git(*args, cwd=checkout.path)


# -- mirrors ------------------------------------------------------------------------------------


def test_mirror_is_cloned_once_then_fetched_with_prune(remote: Remote, cache: GitCache) -> None:
    add_commit(remote.bare, {"doomed.txt": b"x\n"}, branch="doomed")
    mirror = cache.mirror(remote.url)
    assert mirror.parent == cache.mirrors
    assert mirror.name.startswith("app-")
    assert rev(mirror, "refs/heads/main") == rev(remote.bare, "refs/heads/main")
    assert rev(mirror, "refs/heads/doomed") == rev(remote.bare, "refs/heads/doomed")
    assert git("config", "gc.auto", cwd=mirror) == "0"
    marker = mirror / "corral-test-marker"
    marker.write_text("the same directory, not a new clone")

    new = add_commit(remote.bare, {"NEW.md": b"new\n"})
    git("update-ref", "-d", "refs/heads/doomed", cwd=remote.bare)
    assert cache.mirror(remote.url) == mirror
    assert marker.exists()
    assert rev(mirror, "refs/heads/main") == new
    assert git("for-each-ref", "--format=%(refname)", "refs/heads/", cwd=mirror).split() == ["refs/heads/main"]
    assert not list(cache.mirrors.glob(".*partial"))
    git("fsck", "--no-progress", cwd=mirror)


def test_mirror_config_keeps_no_credentials(public: Path) -> None:
    bare = make_repo(public / "private" / "secret.git")
    with serve(public / "private", token=TOKEN, private=True) as base:
        cache = GitCache(public / "cache")
        with pytest.raises(GitError) as err:
            cache.mirror(f"{base}/secret.git")  # no credentials: the server says 401
        assert "Authentication failed" in str(err.value) or "could not read Username" in str(err.value)
        url = base.replace("http://", f"http://bot:{TOKEN}@") + "/secret.git"
        checkout = cache.checkout(url, None, "priv", public / "priv")
        with pytest.raises(GitError) as wrong:
            cache.mirror(base.replace("http://", "http://bot:not-the-token@") + "/secret.git")
    assert checkout.base == rev(bare, "HEAD")
    assert git("config", "remote.origin.url", cwd=checkout.mirror) == f"{base}/secret.git"
    assert in_checkout(checkout, "config", "remote.origin.url") == f"{base}/secret.git"
    for text in (str(wrong.value), repr(wrong.value)):
        assert "not-the-token" not in text
        assert TOKEN not in text
    assert_nowhere(TOKEN, checkout.mirror, checkout.path / ".git")


# -- checkouts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["default", "branch", "tag", "sha", "short-sha"])
def test_checkout_of_each_kind_of_ref(remote: Remote, cache: GitCache, public: Path, kind: str) -> None:
    feature = add_commit(remote.bare, {"FEATURE.md": b"feature\n"}, branch="feature")
    git("tag", "v1.0", "refs/heads/main~1", cwd=remote.bare)
    old = rev(remote.bare, "refs/heads/main~2")
    ref, expected = {
        "default": (None, rev(remote.bare, "HEAD")),
        "branch": ("feature", feature),
        "tag": ("v1.0", rev(remote.bare, "v1.0")),
        "sha": (old, old),
        "short-sha": (old[:10], old),
    }[kind]
    checkout = cache.checkout(remote.url, ref, "job-1", public / "work")
    layered = cache.overlay and os.geteuid() == 0
    assert checkout == Checkout(public / "work", "corral/job-1", expected, checkout.mirror, overlay=layered)
    assert (cache.fallback is None) == layered
    assert in_checkout(checkout, "symbolic-ref", "HEAD") == "refs/heads/corral/job-1"
    assert in_checkout(checkout, "rev-parse", "HEAD") == expected
    assert in_checkout(checkout, "status", "--porcelain") == ""
    assert in_checkout(checkout, "config", "remote.origin.url") == remote.url
    tracked = in_checkout(checkout, "ls-files").splitlines()
    assert sorted(p.relative_to(checkout.path).as_posix() for p in files_of(checkout.path)) == sorted(tracked)
    # The objects are borrowed from the mirror, never copied or hard-linked.
    alternates = (checkout.path / ".git" / "objects" / "info" / "alternates").read_text().strip()
    assert Path(alternates).resolve() == (checkout.mirror / "objects").resolve()
    assert not list((checkout.path / ".git" / "objects" / "pack").iterdir())
    assert all(p.stat().st_nlink == 1 for p in files_of(checkout.mirror / "objects"))


def test_a_missing_ref_is_a_git_error_and_leaves_nothing(remote: Remote, cache: GitCache, public: Path) -> None:
    with pytest.raises(GitError, match=r"'no-such-branch' does not exist in http://127\.0\.0\.1"):
        cache.checkout(remote.url, "no-such-branch", "job-2", public / "work")
    assert not (public / "work").exists()
    (public / "empty").mkdir()
    with pytest.raises(GitError):
        cache.checkout(remote.url, "0" * 40, "job-2", public / "empty")
    assert list((public / "empty").iterdir()) == []


def test_a_checkout_needs_a_new_or_empty_directory(remote: Remote, cache: GitCache, public: Path) -> None:
    (public / "busy").mkdir()
    (public / "busy" / "file").write_text("mine")
    with pytest.raises(WorkspaceError, match="not an empty directory"):
        cache.checkout(remote.url, None, "job-3", public / "busy")
    assert (public / "busy" / "file").read_text() == "mine"


@pytest.mark.parametrize("job_id", ["", "a b", "x..y", "x/", "x.lock", "a~1"])
def test_a_job_id_that_cannot_name_a_branch_is_refused(
    remote: Remote, cache: GitCache, public: Path, job_id: str
) -> None:
    with pytest.raises(RepoError, match="job id"):
        cache.checkout(remote.url, None, job_id, public / "work")
    assert not cache.mirrors.exists()


def test_git_works_in_the_checkout_as_another_uid(remote: Remote, cache: GitCache, public: Path) -> None:
    require_root()
    setpriv = require("setpriv")
    checkout = cache.checkout(remote.url, None, "uid", public / "work")
    chown_tree(checkout.path, NOBODY)
    as_nobody = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "git"]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(checkout.path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
    }

    def nobody(*args: str) -> str:
        done = subprocess.run([*as_nobody, *args], cwd=checkout.path, env=env, capture_output=True, check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    assert "On branch corral/uid" in nobody("status")
    assert len(nobody("log", "--oneline").splitlines()) == 3
    victim = sorted(files_of(checkout.path / "src"))[0]
    with victim.open("a") as fh:
        fh.write("# edited\n")
    os.chown(victim, NOBODY, NOBODY)
    assert "+# edited" in nobody("diff")
    nobody("-c", "user.name=Agent", "-c", "user.email=agent@example.invalid", "commit", "-qam", "Agent edit")
    nobody("fsck", "--no-progress")
    assert nobody("log", "-1", "--format=%an") == "Agent\n"
    # The host commits over a tree another uid owns (no "dubious ownership" refusal).
    (checkout.path / "later.txt").write_text("after the agent\n")
    assert cache.commit(checkout, "Job result") is not None
    assert set(cache.diff(checkout).files) == {victim.relative_to(checkout.path).as_posix(), "later.txt"}
    # What host git wrote belongs to the checkout's uid again, so the agent can go on.
    assert {p.lstat().st_uid for p in (checkout.path / ".git").rglob("*")} == {NOBODY}
    (checkout.path / "more.txt").write_text("second turn\n")
    os.chown(checkout.path / "more.txt", NOBODY, NOBODY)
    nobody("add", "more.txt")
    nobody("-c", "user.name=Agent", "-c", "user.email=agent@example.invalid", "commit", "-qm", "Second turn")


# -- commit and diff ----------------------------------------------------------------------------


def test_commit_and_diff_see_added_edited_and_deleted_files(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "edit", public / "work")
    first, second = sorted(files_of(checkout.path / "src"))[:2]
    (checkout.path / "added.txt").write_text("added line\n")
    first.write_text(first.read_text() + "edited line\n")
    second.unlink()
    (checkout.path / "blob.bin").write_bytes(bytes(range(256)) * 4)

    sha = cache.commit(checkout, "Job edit")
    assert sha == in_checkout(checkout, "rev-parse", "HEAD")
    assert in_checkout(checkout, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s") == (
        "corral <corral@localhost>|corral <corral@localhost>|Job edit"
    )
    assert in_checkout(checkout, "rev-parse", "HEAD~1") == checkout.base
    diff = cache.diff(checkout)
    rel = {p: p.relative_to(checkout.path).as_posix() for p in (first, second)}
    assert sorted(diff.files) == sorted(["added.txt", "blob.bin", rel[first], rel[second]])
    assert "+added line" in diff.text
    assert "+edited line" in diff.text
    assert "deleted file mode 100644\nindex" in diff.text.split(f"diff --git a/{rel[second]}")[1]
    assert "Binary files /dev/null and b/blob.bin differ" in diff.text

    assert cache.commit(checkout, "Nothing new") is None
    assert in_checkout(checkout, "rev-parse", "HEAD") == sha


def test_commits_the_agent_made_stay_on_the_branch(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "agent", public / "work")
    (checkout.path / "by-agent.txt").write_text("agent\n")
    in_checkout(checkout, "add", "by-agent.txt")
    in_checkout(checkout, "commit", "-qm", "Agent commit")
    agent_sha = in_checkout(checkout, "rev-parse", "HEAD")
    assert cache.commit(checkout, "Nothing left") is None
    (checkout.path / "by-host.txt").write_text("host\n")
    sha = cache.commit(checkout, "Rest")
    assert in_checkout(checkout, "rev-parse", f"{sha}~1") == agent_sha
    assert cache.diff(checkout).files == ("by-agent.txt", "by-host.txt")


def test_commit_puts_head_back_on_the_job_branch(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "moved", public / "work")
    in_checkout(checkout, "checkout", "-q", "--detach", "HEAD~1")
    (checkout.path / "result.txt").write_text("made while detached\n")
    sha = cache.commit(checkout, "Result")
    assert in_checkout(checkout, "symbolic-ref", "HEAD") == "refs/heads/corral/moved"
    assert in_checkout(checkout, "rev-parse", "refs/heads/corral/moved") == sha
    assert "result.txt" in cache.diff(checkout).files


def test_host_git_runs_nothing_the_agent_planted(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "hooks", public / "work")
    ran = public / "hook-ran"
    for hook in ("pre-commit", "commit-msg", "post-commit", "prepare-commit-msg", "reference-transaction"):
        script = checkout.path / ".git" / "hooks" / hook
        script.write_text(f"#!/bin/sh\necho {hook} >> {ran}\n")
        script.chmod(0o755)
    (checkout.path / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (checkout.path / "x.txt").write_text("x\n")
    assert cache.commit(checkout, "With hooks present") is not None
    cache.diff(checkout)
    assert not ran.exists()


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        ("config", "config key 'core.fsmonitor'"),
        ("filter", "config key 'filter.evil.clean'"),
        ("include", "config key 'include.path'"),
        ("alternates", "alternates no longer points at the mirror"),
        ("symlink", "is a symlink"),
        ("commondir", "commondir exists"),
    ],
)
def test_host_git_refuses_a_tampered_checkout(
    remote: Remote, cache: GitCache, public: Path, plant: str, problem: str
) -> None:
    checkout = cache.checkout(remote.url, None, "tamper", public / "work")
    gitdir = checkout.path / ".git"
    ran = public / "planted-ran"
    other = make_repo(public / "other.git")
    if plant == "config":
        in_checkout(checkout, "config", "core.fsmonitor", f"touch {ran}; false")
    elif plant == "filter":
        in_checkout(checkout, "config", "filter.evil.clean", f"touch {ran}; cat")
        (checkout.path / ".gitattributes").write_text("* filter=evil\n")
    elif plant == "include":
        (public / "included").write_text(f"[core]\n\tfsmonitor = touch {ran}; false\n")
        in_checkout(checkout, "config", "include.path", str(public / "included"))
    elif plant == "alternates":
        (gitdir / "objects" / "info" / "alternates").write_text(f"{checkout.mirror}/objects\n{other}/objects\n")
    elif plant == "symlink":
        shutil.rmtree(gitdir / "refs" / "tags")
        (gitdir / "refs" / "tags").symlink_to(public)
    elif plant == "commondir":
        (gitdir / "commondir").write_text(str(other))
    (checkout.path / "change.txt").write_text("change\n")
    for action in (lambda: cache.commit(checkout, "x"), lambda: cache.diff(checkout)):
        with pytest.raises(GitError, match="will not run git on it") as err:
            action()
        assert problem in str(err.value)
    with pytest.raises(GitError, match="will not run git on it"):
        cache.push(checkout, remote.url, Secret(TOKEN))
    assert not ran.exists()


def test_a_config_that_passed_is_not_read_by_git_again_but_a_changed_one_is(
    remote: Remote, cache: GitCache, public: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corral.gitcmd

    listings: list[list[str]] = []
    real = corral.gitcmd.run

    def spy(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        if "--list" in args:
            listings.append(list(args))
        return real(args, **kwargs)

    monkeypatch.setattr(corral.gitcmd, "run", spy)
    first = cache.checkout(remote.url, None, "first", public / "first")
    second = cache.checkout(remote.url, None, "second", public / "second")
    assert (first.path / ".git" / "config").read_bytes() == (second.path / ".git" / "config").read_bytes()
    cache.diff(first)
    cache.diff(second)
    assert len(listings) == 1  # the same bytes passed already
    in_checkout(second, "config", "core.fsmonitor", "false")
    with pytest.raises(GitError, match=r"config key 'core\.fsmonitor'"):
        cache.diff(second)
    assert len(listings) == 2
    cache.diff(first)
    assert len(listings) == 2


# -- push ---------------------------------------------------------------------------------------


def test_push_with_a_token_through_askpass(
    remote: Remote, cache: GitCache, public: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = cache.checkout(remote.url, None, "push", public / "work")
    (checkout.path / "pushed.txt").write_text("pushed\n")
    sha = cache.commit(checkout, "To push")
    calls = public / "git-calls"
    shim = git_shim(public / "shim", calls)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    askpass_dirs = set(Path(tempfile.gettempdir()).glob("corral-askpass-*"))

    with pytest.raises(GitError) as wrong:
        cache.push(checkout, remote.url, Secret("wrong-token-1234"))
    for text in (str(wrong.value), repr(wrong.value), repr(wrong.value.args)):
        assert "wrong-token-1234" not in text
    assert "Authentication failed" in str(wrong.value)

    cache.push(checkout, remote.url, Secret(TOKEN))
    assert git("rev-parse", "refs/heads/corral/push", cwd=remote.bare) == sha
    pushes = [r for r in remote.log if r.method == "POST" and r.path.endswith("/git-receive-pack")]
    assert [(r.status, r.user, r.password) for r in pushes] == [(200, "x-access-token", TOKEN)]
    assert "push" in calls.read_text()
    assert TOKEN not in calls.read_text()
    assert "wrong-token-1234" not in calls.read_text()
    assert_nowhere(TOKEN, checkout.path / ".git", checkout.mirror)
    assert set(Path(tempfile.gettempdir()).glob("corral-askpass-*")) == askpass_dirs


def test_push_without_a_token_is_refused_by_the_server(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "anon", public / "work")
    (checkout.path / "x.txt").write_text("x\n")
    cache.commit(checkout, "X")
    with pytest.raises(GitError, match=r"pushing corral/anon to http://127\.0\.0\.1"):
        cache.push(checkout, remote.url, None)
    assert "refs/heads/corral/anon" not in git("for-each-ref", cwd=remote.bare)


# -- concurrency --------------------------------------------------------------------------------


def test_two_threads_check_out_the_same_repository_at_once(remote: Remote, cache: GitCache, public: Path) -> None:
    results: dict[int, Checkout | BaseException] = {}
    start = threading.Barrier(2)

    def job(n: int) -> None:
        start.wait()
        try:
            results[n] = cache.checkout(remote.url, None, f"thread-{n}", public / f"work-{n}")
        except BaseException as err:
            results[n] = err

    threads = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    head = rev(remote.bare, "HEAD")
    assert [getattr(results[n], "base", results[n]) for n in range(2)] == [head, head]
    assert len(list(cache.mirrors.iterdir())) == 2  # one mirror and its lock file
    git("fsck", "--no-progress", "--strict", cwd=cache.mirrors / mirror_name(remote.url))


def test_two_processes_check_out_the_same_repository_at_once(remote: Remote, public: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from corral.gitcache import GitCache; "
        "print(GitCache(Path(sys.argv[1])).checkout(sys.argv[2], None, sys.argv[3], Path(sys.argv[4])).base)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(public / "cache"), remote.url, f"proc-{n}", str(public / f"work-{n}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    done = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err.decode() for _, err in done]
    assert [out.decode().strip() for out, _ in done] == [rev(remote.bare, "HEAD")] * 2
    mirrors = [p for p in (public / "cache" / "mirrors").iterdir() if p.is_dir()]
    assert len(mirrors) == 1
    git("fsck", "--no-progress", "--strict", cwd=mirrors[0])


def test_a_refresh_waits_for_the_mirror_lock(remote: Remote, cache: GitCache) -> None:
    mirror = cache.mirror(remote.url)
    new = add_commit(remote.bare, {"LOCKED.md": b"later\n"})
    with open(mirror.with_name(f"{mirror.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        worker = threading.Thread(target=cache.mirror, args=(remote.url,))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive()  # blocked on the lock we hold
        assert rev(mirror, "refs/heads/main") != new
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert rev(mirror, "refs/heads/main") == new


# -- refusals before git ------------------------------------------------------------------------

HOSTILE = [
    "ext::sh -c touch% /tmp/corral-pwned",
    "ext::sh",
    "fd::17",
    "-uexploit",
    "--upload-pack=touch /tmp/corral-pwned",
    "file:///etc",
    "/etc",
    "../x",
    "https://example.com/repo.git\n--upload-pack=x",
]


def test_a_hostile_url_is_refused_before_any_git_runs(
    remote: Remote, public: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = public / "git-calls"
    shim = git_shim(public / "shim", calls)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    cache = GitCache(public / "cache")
    for url in HOSTILE:
        with pytest.raises(RepoError, match="The repository URL"):
            cache.mirror(url)
        with pytest.raises(RepoError, match="The repository URL"):
            cache.checkout(url, None, "evil", public / "work")
    with pytest.raises(RepoError, match="git ref"):
        cache.checkout(remote.url, "--upload-pack=x", "evil", public / "work")
    assert not calls.exists()
    assert not (public / "cache").exists()
    assert not (public / "work").exists()
    # The same path with a good URL does reach git through the shim.
    cache.mirror(remote.url)
    assert "clone --mirror" in calls.read_text()


def test_local_repositories_only_when_allowed(public: Path) -> None:
    bare = make_repo(public / "local" / "app.git")
    with pytest.raises(RepoError, match="CORRAL_GIT_ALLOW_LOCAL"):
        GitCache(public / "cache").checkout(str(bare), None, "local", public / "work")
    cache = GitCache(public / "cache", allow_local=True)
    by_path = cache.checkout(str(bare), None, "local", public / "work")
    by_url = cache.checkout(f"file://{bare}", "main", "local", public / "work-url")
    assert by_path.base == by_url.base == rev(bare, "HEAD")


def test_remove_deletes_the_checkout_and_keeps_the_mirror(remote: Remote, cache: GitCache, public: Path) -> None:
    checkout = cache.checkout(remote.url, None, "rm", public / "work")
    locked = checkout.path / "locked"
    locked.mkdir()
    (locked / "file").write_text("x")
    locked.chmod(0)
    cache.remove(checkout)
    assert not checkout.path.exists()
    assert (checkout.mirror / "HEAD").is_file()
    cache.remove(checkout)  # twice is fine


# -- helpers ------------------------------------------------------------------------------------


def files_of(root: Path) -> list[Path]:
    """Every regular file below ``root``, outside ``.git``."""
    found = []
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]
        found += [Path(top, name) for name in files]
    return found


def chown_tree(root: Path, uid: int) -> None:
    for top, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.lchown(Path(top, name), uid, uid)
    os.chown(root, uid, uid)


def assert_nowhere(secret: str, *roots: Path) -> None:
    """``secret`` is in no file below any of ``roots``."""
    needle = secret.encode()
    for root in roots:
        for top, _, files in os.walk(root):
            for name in files:
                path = Path(top, name)
                if not path.is_symlink():
                    assert needle not in path.read_bytes(), path


def git_shim(directory: Path, calls: Path) -> Path:
    """A directory whose ``git`` appends its argv to ``calls`` and then runs the real git."""
    real = require("git")
    directory.mkdir()
    shim = directory / "git"
    shim.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec {real} "$@"\n')
    shim.chmod(stat.S_IRWXU)
    return directory
