"""What the git cache accepts from users, as data: URLs, refs, masking, and the git environment."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from corral.errors import GitError, RepoError
from corral.gitcache import check_ref, check_url, mask_url
from corral.gitcmd import (
    HARDENING,
    Remote,
    askpass,
    environment,
    mirror_name,
    parse_author,
    protocols,
    run,
    untrusted_config,
)
from corral.secrets import Secret

HOSTILE = [
    ("ext::sh -c touch% /tmp/x", "whitespace"),
    ("ext::sh", "remote-helper"),
    ("fd::17", "remote-helper"),
    ("fd::17/foo", "remote-helper"),
    ("foo+bar.baz::anything", "remote-helper"),
    ("-uexploit", "starts with '-'"),
    ("--upload-pack=touch /tmp/x", "whitespace"),
    ("--upload-pack=touch", "starts with '-'"),
    ("https://example.com/repo.git\n--upload-pack=x", "whitespace"),
    ("https://example.com/repo.git\r", "whitespace"),
    ("https://example.com/re\tpo.git", "whitespace"),
    ("https://example.com/repo\x00.git", "control"),
    ("https://example.com/repo%0a.git", "control"),
    ("https://u:p%0Aq@example.com/repo.git", "control"),
    ("https://example.com/repo\u2028.git", "control"),
    ("file:///etc", "local repository"),
    ("FILE:///etc", "local repository"),
    ("/etc", "local path"),
    ("../x", "local path"),
    ("./x", "local path"),
    ("~/repo", "local path"),
    ("repo", "local path"),
    ("ssh://-oProxyCommand=touch%20x/repo", "no valid host"),
    ("ssh://-oProxyCommand=x/repo", "no valid host"),
    ("ssh://-user@host/repo", "user name that starts with '-'"),
    ("ssh://user:pw@host/repo", "password"),
    ("git://user@host/repo", "user name"),
    ("ftp://example.com/repo.git", "scheme 'ftp'"),
    ("javascript://example.com/x", "scheme 'javascript'"),
    ("https://example.com", "no repository path"),
    ("https://example.com/", "no repository path"),
    ("https:///repo.git", "no valid host"),
    ("https://example.com:port/repo.git", "port"),
    ("user:pass@host:repo.git", "password"),
    ("-oProxyCommand=x:repo", "starts with '-'"),
    ("", "empty"),
]

ALLOWED = [
    "https://github.com/org/repo.git",
    "https://github.com/org/repo",
    "http://127.0.0.1:8080/repo.git",
    "https://user:token@github.com/org/repo.git",
    "https://x-access-token@github.com/org/repo.git",
    "ssh://git@github.com/org/repo.git",
    "ssh://git@github.com:2222/org/repo.git",
    "ssh://[::1]/repo.git",
    "git://example.com/repo.git",
    "git@github.com:org/repo.git",
    "github.com:org/repo.git",
    "git@[::1]:repo.git",
    "HTTPS://GitHub.com/Org/Repo.git",
]


@pytest.mark.parametrize(("url", "reason"), HOSTILE)
def test_check_url_refuses_with_a_sentence(url: str, reason: str) -> None:
    with pytest.raises(RepoError, match="The repository URL") as err:
        check_url(url)
    assert reason in str(err.value)
    assert err.value.exit_code == 10


@pytest.mark.parametrize("url", ALLOWED)
def test_check_url_allows_network_forms(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize("url", ["file:///etc", "/etc", "../x", "~/repo", "repo", "file:///srv/git/app.git"])
def test_local_repositories_need_allow_local(url: str) -> None:
    with pytest.raises(RepoError, match="set CORRAL_GIT_ALLOW_LOCAL=true to allow local repositories"):
        check_url(url)
    assert check_url(url, allow_local=True) == url


@pytest.mark.parametrize(
    "url", ["ext::sh", "fd::17", "-uexploit", "--upload-pack=x", "/srv/repo\n", "ftp://example.com/repo"]
)
def test_allow_local_does_not_open_anything_else(url: str) -> None:
    with pytest.raises(RepoError):
        check_url(url, allow_local=True)


def test_refusals_mask_credentials() -> None:
    with pytest.raises(RepoError) as err:
        check_url("https://user:supersecret@example.com/repo\n.git")
    assert "supersecret" not in str(err.value)
    assert "https://***@example.com" in str(err.value)


@pytest.mark.parametrize(
    "ref",
    [
        "main",
        "feature/x",
        "refs/heads/main",
        "v1.2.3",
        "release-2024_01",
        "abc1234",
        "0123456789abcdef0123456789abcdef01234567",
        "ABCDEF0",
        "HEAD",
        "émoji-ünïcode",
    ],
)
def test_check_ref_allows(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize(
    "ref",
    [
        "",
        "-b",
        "--upload-pack=x",
        "main..other",
        "main~1",
        "main^",
        "main^{/regex}",
        ":/message",
        "HEAD@{1}",
        "@",
        "a b",
        "a\nb",
        "a\x7fb",
        "a?b",
        "a*b",
        "a[b",
        "a\\b",
        "a:b",
        ".hidden",
        "dir/.hidden",
        "branch.lock",
        "dir/x.lock/y",
        "ends.",
        "ends/",
        "/starts",
        "a//b",
    ],
)
def test_check_ref_refuses(ref: str) -> None:
    with pytest.raises(RepoError, match="give a branch, a tag or a commit SHA"):
        check_ref(ref)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://user:tok@host/x", "https://***@host/x"),
        ("https://tok@host/x", "https://***@host/x"),
        ("https://us%40er:p@ss@host/x", "https://***@host/x"),
        ("ssh://git@host/x", "ssh://***@host/x"),
        ("https://host/x", "https://host/x"),
        ("https://host/x@y", "https://host/x@y"),
        ("mail me@example.com", "mail me@example.com"),
        (
            "fatal: 'https://a:b@h1/r' then HTTP://c:d@h2/r, done",
            "fatal: 'https://***@h1/r' then HTTP://***@h2/r, done",
        ),
        ("", ""),
    ],
)
def test_mask_url(text: str, expected: str) -> None:
    assert mask_url(text) == expected


def test_remote_keeps_credentials_out_of_the_url() -> None:
    remote = Remote.parse("https://bot:t%40ken@example.com:8443/org/repo.git")
    assert remote.url == "https://example.com:8443/org/repo.git"
    assert remote.username == "bot"
    assert remote.password is not None
    assert remote.password.reveal() == "t@ken"
    assert "t@ken" not in repr(remote)
    assert not remote.local


@pytest.mark.parametrize(
    ("url", "clean", "username", "local"),
    [
        ("https://example.com/r.git", "https://example.com/r.git", None, False),
        ("https://tok@example.com/r.git", "https://example.com/r.git", "tok", False),
        ("ssh://git@example.com/r.git", "ssh://git@example.com/r.git", None, False),
        ("git@example.com:r.git", "git@example.com:r.git", None, False),
        ("file:///srv/r.git", "file:///srv/r.git", None, True),
        ("/srv/r.git", "/srv/r.git", None, True),
    ],
)
def test_remote_forms(url: str, clean: str, username: str | None, local: bool) -> None:
    remote = Remote.parse(url, allow_local=True)
    assert (remote.url, remote.username, remote.password, remote.local) == (clean, username, None, local)


def test_remote_checks_the_url_first() -> None:
    with pytest.raises(RepoError):
        Remote.parse("ext::sh -c id")


def test_mirror_names_are_readable_and_distinct() -> None:
    a = mirror_name("https://github.com/org/app.git")
    assert a.startswith("app-")
    assert a == mirror_name("https://github.com/org/app.git")
    assert a != mirror_name("https://github.com/other/app.git")
    assert mirror_name("git@host:weird name!!/x y.git").startswith("x_y-")
    assert mirror_name("https://host/..").startswith("repo-")
    assert "/" not in mirror_name("https://host/a/../../b")


def test_untrusted_config_keeps_only_what_clone_writes() -> None:
    keys = [
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "remote.origin.url",
        "remote.origin.fetch",
        "branch.main.remote",
        "branch.main.merge",
        "core.fsmonitor",
        "core.hookspath",
        "include.path",
        "includeif.gitdir:/.path",
        "filter.lfs.clean",
        "diff.x.textconv",
        "core.sshcommand",
        "remote.evil.url",
        "remote.origin.uploadpack",
        "branch.main.remote\ncore.fsmonitor",
    ]
    assert untrusted_config(keys) == sorted(keys[8:])


def test_protocols_allow_file_only_for_local() -> None:
    network = protocols(local=False)
    assert network[:2] == ("-c", "protocol.allow=never")
    assert "protocol.https.allow=always" in network
    assert not any("protocol.file" in option for option in network)
    assert "protocol.file.allow=always" in protocols(local=True)
    assert not any(option.startswith("protocol.ext") for option in protocols(local=True))


def test_environment_is_built_from_nothing() -> None:
    source = {
        "PATH": "/usr/bin",
        "HOME": "/home/x",
        "GIT_DIR": "/elsewhere",
        "GIT_SSH": "/tmp/evil",
        "GIT_CONFIG_PARAMETERS": "'core.fsmonitor'='x'",
        "GIT_ASKPASS": "/tmp/evil",
        "LD_PRELOAD": "/tmp/evil.so",
        "https_proxy": "http://proxy:3128",
    }
    env = environment(source, {"GIT_DIR": "/mine"})
    assert env["PATH"] == "/usr/bin"
    assert env["https_proxy"] == "http://proxy:3128"
    assert env["GIT_DIR"] == "/mine"
    for name in ("GIT_SSH", "GIT_CONFIG_PARAMETERS", "GIT_ASKPASS", "LD_PRELOAD"):
        assert name not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_CONFIG_GLOBAL"] == os.devnull
    assert env["LC_ALL"] == "C"
    assert environment({})["PATH"] == os.defpath


def test_hardening_disables_what_runs_programs() -> None:
    assert all(flag == "-c" for flag in HARDENING[::2])
    settings = set(HARDENING[1::2])
    for needed in ("core.hooksPath=/dev/null", "core.fsmonitor=false", "credential.helper=", "gc.auto=0"):
        assert needed in settings


@pytest.mark.parametrize(
    ("author", "expected"),
    [
        ("corral <corral@localhost>", ("corral", "corral@localhost")),
        ("Ada Lovelace <ada@example.com>", ("Ada Lovelace", "ada@example.com")),
    ],
)
def test_parse_author(author: str, expected: tuple[str, str]) -> None:
    assert parse_author(author) == expected


@pytest.mark.parametrize("author", ["corral", "<x@y>", "a <b", "a <b c>", "a\nb <c@d>"])
def test_parse_author_refuses(author: str) -> None:
    with pytest.raises(RepoError, match="CORRAL_GIT_AUTHOR"):
        parse_author(author)


def test_askpass_answers_from_its_environment_and_goes_away() -> None:
    with askpass("bot", Secret("tok-123")) as env:
        script = Path(env["GIT_ASKPASS"])
        assert stat.S_IMODE(script.stat().st_mode) == 0o700
        assert stat.S_IMODE(script.parent.stat().st_mode) == 0o700
        assert "tok-123" not in script.read_text()
        answers = [
            subprocess.run([script, prompt], env=env, capture_output=True, text=True, check=True).stdout
            for prompt in ("Username for 'https://h': ", "Password for 'https://bot@h': ")
        ]
    assert answers == ["bot\n", "tok-123\n"]
    assert not script.parent.exists()


def test_run_masks_urls_and_blanks_secrets_in_errors(tmp_path: Path) -> None:
    with pytest.raises(GitError) as err:
        run(
            ["rev-parse", "--verify", "no-such-ref-tok-123"],
            what="resolving a ref of https://bot:tok-123@example.com/r.git",
            env=environment(os.environ, {"GIT_DIR": str(tmp_path / "missing")}),
            secrets=["tok-123"],
        )
    text = str(err.value)
    assert "tok-123" not in text
    assert "https://***@example.com/r.git" in text
    assert "exit 128" in text


def test_run_kills_the_whole_process_group_on_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(GitError, match=r"took longer than 0\.5 s while sleeping"):
        run(["-c", "alias.slow=!sleep 30; sleep 30", "slow"], what="sleeping", env=environment(os.environ), timeout=0.5)
    assert time.monotonic() - start < 10


def test_run_without_git_on_the_path_is_a_git_error(tmp_path: Path) -> None:
    assert run(["version"], what="checking", env=environment(os.environ)).returncode == 0  # found on the real PATH
    with pytest.raises(GitError, match="git is not on the PATH"):
        run(["version"], what="checking", env=environment({"PATH": str(tmp_path)}))


def test_run_finds_git_on_each_path_and_looks_again_when_it_is_gone(tmp_path: Path) -> None:
    real = shutil.which("git")
    assert real is not None
    (tmp_path / "git").symlink_to(real)
    env = environment({"PATH": str(tmp_path)})
    assert run(["version"], what="checking", env=env).stdout.startswith(b"git version")
    (tmp_path / "git").unlink()
    with pytest.raises(GitError, match="git could not be started while checking"):
        run(["version"], what="checking", env=env)
    with pytest.raises(GitError, match="git is not on the PATH"):
        run(["version"], what="checking", env=env)
