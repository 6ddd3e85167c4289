"""The manifest: every field read and planned; each mistake a sentence naming key, file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.cli.start import format_plan
from corral.errors import CredentialsError, SandboxUnavailableError, UsageError
from corral.manifest import ManifestError, find_line, load_manifest, parse_manifest
from corral.sandbox.container import ContainerSandbox
from corral.sandbox.spec import Limits
from corral.session import (
    check_runtime,
    check_startable,
    interactive_argv,
    make_plan,
    pick_name,
    sandbox_for,
    ssh_config,
)
from corral.settings import Settings

FULL = """\
[settings]
memory = "2G"

[agents.coder]
bottle = "dev"
env = ["GITHUB_TOKEN", "NPM_TOKEN"]
skills = ["skills/review"]
prompt = { file = "prompt.md" }
ssh = [{ name = "gh", host = "github.com", user = "git" }]
model = "sonnet"
permission_mode = "acceptEdits"

[bottles.dev]
backend = "bwrap"
allow = ["pypi.org", "*.pythonhosted.org"]
deny = ["evil.example.com"]
memory = "1G"
pids = 256
cpus = 1.5
mounts = ["data"]

[bottles.box]
backend = "docker"
image = "debian:12"
runtime = "runsc"

[agents.boxed]
bottle = "box"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "skills" / "review").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "prompt.md").write_text("Work carefully.\nSecond line.\n")
    (tmp_path / "corral.toml").write_text(FULL)
    return tmp_path


def test_plan_shows_every_field(project: Path, tmp_path: Path) -> None:
    loaded = load_manifest(cwd=project / "skills")  # found in a parent
    plan = make_plan(loaded, "coder", home=tmp_path / "home", permission_mode="bypassPermissions", cwd=project)
    text = format_plan(plan)
    for expected in (
        "session coder,",
        "dev: bwrap",
        f"a copy of {project}, .git included",
        "GITHUB_TOKEN, NPM_TOKEN",
        str(project / "skills" / "review"),
        "gh (git@github.com:22)",
        "allow pypi.org, *.pythonhosted.org; ssh github.com:22; deny evil.example.com",
        f"{len(b'Work carefully.' + bytes(1)) + len(b'Second line.') + 1} bytes, first line: 'Work carefully.'",
        "model:          sonnet",
        "acceptEdits",
        "memory 1G, pids 256, cpus 1.5",
        str(project / "data"),
        "remote control: off",
    ):
        assert expected in text, expected
    assert plan.limits == Limits(memory=1 << 30, pids=256, cpus=1.5)


def test_plan_never_shows_env_values(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret_value_123")
    plan = make_plan(load_manifest(project / "corral.toml"), "coder", home=tmp_path, permission_mode="default")
    assert "ghp_secret_value_123" not in format_plan(plan)


def test_container_backend_is_planned_on_its_engine(project: Path, tmp_path: Path) -> None:
    plan = make_plan(load_manifest(project / "corral.toml"), "boxed", home=tmp_path, permission_mode="default")
    line = "box: docker (image debian:12, runtime runsc); gVisor's kernel, with corral's seccomp rules inside"
    assert f"{line} (AF_UNIX allowed for the relay)" in format_plan(plan)
    check_runtime(plan, lambda _: "/usr/bin/runsc")
    sandbox = sandbox_for(plan, Settings(home=tmp_path))
    assert isinstance(sandbox, ContainerSandbox)
    assert (sandbox.engine, sandbox.image, sandbox.runtime) == ("docker", "debian:12", "runsc")


def test_runsc_without_runsc_says_how_to_install(project: Path, tmp_path: Path) -> None:
    plan = make_plan(load_manifest(project / "corral.toml"), "boxed", home=tmp_path, permission_mode="default")
    with pytest.raises(SandboxUnavailableError, match=r"runsc is not on PATH; install it \(https://gvisor.dev"):
        check_runtime(plan, lambda _: None)


def test_remote_control_is_explicit(project: Path, tmp_path: Path) -> None:
    loaded = load_manifest(project / "corral.toml")
    plan = make_plan(loaded, "coder", home=tmp_path, permission_mode="default", remote_control=True)
    assert "remote control: ON, but no claude.ai login is adopted" in format_plan(plan)
    with pytest.raises(CredentialsError, match=r"--remote-control needs a claude.ai login adopted by corral"):
        check_startable(plan, sandbox_for(plan, Settings(home=tmp_path)))


@pytest.mark.parametrize(
    ("change", "marker", "sentence"),
    [
        (
            ('model = "sonnet"', 'model = "sonnet"\nmodle = "x"'),
            'modle = "x"',
            "The key 'agents.coder.modle' in {path}, line {line} is unknown; remove it or fix its spelling.",
        ),
        (
            ('bottle = "box"', 'bottle = "nope"'),
            'bottle = "nope"',
            "The key 'agents.boxed.bottle' in {path}, line {line} names the bottle 'nope', which is not defined; "
            "add [bottles.nope] or use one of: box, dev.",
        ),
        (("pids = 256", "pids = 0"), "pids = 0", "The key 'bottles.dev.pids' in {path}, line {line} is invalid"),
        (
            ('image = "debian:12"\n', ""),
            "[bottles.box]",
            "The key 'bottles.box' in {path}, line {line} is invalid: the docker backend needs an image",
        ),
        (
            ('backend = "bwrap"', 'backend = "bwrap"\nruntime = "runsc"'),
            "[bottles.dev]",
            "The key 'bottles.dev' in {path}, line {line} is invalid: runtime is for the docker and podman",
        ),
        (
            ('env = ["GITHUB_TOKEN"', 'env = ["GITHUB_TOKEN=x"'),
            'env = ["GITHUB_TOKEN=x", "NPM_TOKEN"]',
            "'agents.coder.env' in {path}, line {line} is invalid: 'GITHUB_TOKEN=x' is not a variable name",
        ),
        (
            ('permission_mode = "acceptEdits"', 'permission_mode = "yolo"'),
            'permission_mode = "yolo"',
            "line {line} is invalid: 'yolo' is not a permission mode",
        ),
        (
            ('[agents.boxed]\nbottle = "box"\n', "[agents.boxed]\n"),
            "[agents.boxed]",
            "The key 'agents.boxed.bottle' is missing in {path}, line {line}; add it.",
        ),
        (
            ('backend = "docker"', 'backend = "lxc"'),
            'backend = "lxc"',
            "The key 'bottles.box.backend' in {path}, line {line} is invalid",
        ),
    ],
)
def test_mistakes_are_sentences_with_key_file_and_line(change: tuple[str, str], marker: str, sentence: str) -> None:
    path = Path("/etc/x/corral.toml")
    text = FULL.replace(*change)
    assert text != FULL
    line = text.splitlines().index(marker) + 1
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, path)
    assert sentence.format(path=path, line=line) in str(caught.value)
    assert isinstance(caught.value, UsageError)


def test_find_line_walks_tables_and_dotted_keys() -> None:
    text = '[a]\nx = 1\n[a.b]\ny.z = 2\n"q" = 3\n'
    assert find_line(text, ("a", "x")) == 2
    assert find_line(text, ("a", "b", "y", "z")) == 4
    assert find_line(text, ("a", "b", "q")) == 5
    assert find_line(text, ("a", "b", "missing")) == 3
    assert find_line(text, ("nowhere",)) is None


def test_no_manifest_found(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"No corral\.toml was found"):
        load_manifest(cwd=tmp_path)


def test_unknown_agent_and_missing_skill(project: Path, tmp_path: Path) -> None:
    loaded = load_manifest(project / "corral.toml")
    with pytest.raises(UsageError, match="pick one of: boxed, coder"):
        make_plan(loaded, "writer", home=tmp_path, permission_mode="default")
    (project / "skills" / "review").rmdir()
    with pytest.raises(UsageError, match=r"'skills/review' in agents\.coder\.skills does not exist"):
        make_plan(loaded, "coder", home=tmp_path, permission_mode="default")


def test_names_get_suffixes_and_pinned_running_names_are_refused(tmp_path: Path) -> None:
    import fcntl
    import os

    assert pick_name(tmp_path, "coder") == "coder"
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / "coder").mkdir()  # a leftover: reaped at start, the name is free
    assert pick_name(tmp_path, "coder") == "coder"
    lock = tmp_path / "sessions" / "coder.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert pick_name(tmp_path, "coder") == "coder-2"
        with pytest.raises(UsageError, match=r"kill 4242"):
            pick_name(tmp_path, "coder", "coder")
    finally:
        os.close(fd)


def test_interactive_argv_and_ssh_config(project: Path, tmp_path: Path) -> None:
    plan = make_plan(load_manifest(project / "corral.toml"), "coder", home=tmp_path, permission_mode="default")
    argv = interactive_argv(Path("/opt/claude"), plan)
    assert argv[:3] == ("/opt/claude", "--permission-mode", "acceptEdits")
    assert "-p" not in argv
    assert argv[argv.index("--append-system-prompt") + 1] == plan.prompt
    config = ssh_config(plan.ssh, "127.0.0.1:3128").decode()
    assert "Host gh\n  HostName github.com\n  Port 22\n  User git\n" in config
    assert "ProxyCommand socat - PROXY:127.0.0.1:%h:%p,proxyport=3128" in config
