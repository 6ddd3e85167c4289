"""The bwrap command line, built by a pure function and checked as data."""

from pathlib import Path

from corral.sandbox.bwrap import build_argv
from corral.sandbox.paths import Layout
from corral.sandbox.spec import SandboxSpec

WS = Path("/srv/ws")
LAYOUT = Layout(
    system=(("/usr", None), ("/etc", None), ("/bin", "usr/bin")),
    protected=(WS / ".git/config", WS / ".git/hooks"),
    pinned=(WS / ".git",),
    masks=((Path("/srv/ws/.ssh"), True), (Path("/etc/secret.key"), False)),
)


def pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, arg in enumerate(argv) if arg == flag]


def test_namespaces_and_privileges() -> None:
    argv = build_argv(SandboxSpec(("true",), WS), LAYOUT, bwrap="/usr/bin/bwrap", seccomp_fd=7)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "1000"
    assert argv[argv.index("--gid") + 1] == "1000"
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert "--share-net" not in argv
    assert argv[-2:] == ["--", "true"]


def test_system_is_read_only_and_workspace_is_the_only_writable_bind() -> None:
    argv = build_argv(SandboxSpec(("true",), WS, ro_binds=(Path("/opt/data"),)), LAYOUT)
    assert pairs(argv, "--ro-bind")[:3] == [("/usr", "/usr"), ("/etc", "/etc"), ("/opt/data", "/opt/data")]
    assert pairs(argv, "--symlink") == [("usr/bin", "/bin")]
    assert pairs(argv, "--bind") == [(str(WS), str(WS)), (str(WS / ".git"), str(WS / ".git"))]
    tmpfs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--tmpfs"]
    assert tmpfs[:3] == ["/tmp", "/run", "/home/sandbox"]
    assert argv[argv.index("--proc") + 1] == "/proc"
    assert argv[argv.index("--dev") + 1] == "/dev"
    # the root itself is made read-only after every mount is in place
    assert argv.index("--remount-ro") > argv.index("--bind")
    assert ("/", "--chdir") in [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == "--remount-ro"]


def test_protected_paths_are_bound_read_only_after_the_workspace() -> None:
    argv = build_argv(SandboxSpec(("true",), WS), LAYOUT)
    ws_at = argv.index(str(WS))
    for path in LAYOUT.protected:
        at = argv.index(str(path), ws_at)
        assert argv[at - 1] == "--ro-bind"
        assert argv[at + 1] == str(path)


def test_masks_hide_directories_and_files() -> None:
    argv = build_argv(SandboxSpec(("true",), WS), LAYOUT)
    at = argv.index("/srv/ws/.ssh")
    assert argv[at - 1 : at + 3] == ["--tmpfs", "/srv/ws/.ssh", "--remount-ro", "/srv/ws/.ssh"]
    assert pairs(argv, "--ro-bind")[-1] == ("/dev/null", "/etc/secret.key")


def test_environment_never_appears_in_argv() -> None:
    """Values in argv are world-readable in /proc/PID/cmdline; the env goes through execve instead."""
    spec = SandboxSpec(("true",), WS, env={"TOKEN": "s3cret"})
    argv = build_argv(spec, LAYOUT)
    assert not any("s3cret" in arg for arg in argv)
    assert "--setenv" not in argv
    assert spec.full_env()["TOKEN"] == "s3cret"


def test_cwd_uid_and_hostname() -> None:
    spec = SandboxSpec(("make",), WS, cwd=WS / "src", uid=2000, gid=2001, hostname="box")
    argv = build_argv(spec, LAYOUT)
    assert argv[argv.index("--chdir") + 1] == str(WS / "src")
    assert argv[argv.index("--uid") + 1] == "2000"
    assert argv[argv.index("--gid") + 1] == "2001"
    assert argv[argv.index("--hostname") + 1] == "box"


def test_default_environment() -> None:
    env = SandboxSpec(("true",), WS).full_env()
    assert env["HOME"] == "/home/sandbox"
    assert env["PATH"].startswith("/usr/local/bin:/usr/bin")
    assert set(env) == {"PATH", "HOME", "TMPDIR", "LANG"}


def test_staged_sources_are_bound_from_their_mount_points() -> None:
    """As root, bwrap (an unprivileged uid) binds from traversable mount points, to the real paths inside."""
    stage = {WS: Path("/run/corral/stage/s0/0"), Path("/opt/data"): Path("/run/corral/stage/s0/1")}
    argv = build_argv(SandboxSpec(("true",), WS, ro_binds=(Path("/opt/data"),)), LAYOUT, staged=stage)
    assert ("/run/corral/stage/s0/1", "/opt/data") in pairs(argv, "--ro-bind")
    assert pairs(argv, "--bind") == [
        ("/run/corral/stage/s0/0", str(WS)),
        ("/run/corral/stage/s0/0/.git", str(WS / ".git")),
    ]
    assert ("/run/corral/stage/s0/0/.git/hooks", str(WS / ".git/hooks")) in pairs(argv, "--ro-bind")
    assert ("/usr", "/usr") in pairs(argv, "--ro-bind")


def test_the_command_waits_on_the_gate_until_the_parent_opens_it() -> None:
    argv = build_argv(SandboxSpec(("true",), WS), LAYOUT, info_fd=5, gate_fd=6)
    assert argv[argv.index("--info-fd") + 1] == "5"
    assert argv[argv.index("--block-fd") + 1] == "6"
    assert argv.index("--block-fd") < argv.index("--")


def test_files_get_a_fresh_read_only_directory_outside_scratch() -> None:
    spec = SandboxSpec(
        ("true",),
        WS,
        files={Path("/etc/claude-code/managed-settings.json"): b"{}", Path("/tmp/a/b.txt"): b"x"},
    )
    fds = {Path("/etc/claude-code/managed-settings.json"): 8, Path("/tmp/a/b.txt"): 9}
    argv = build_argv(spec, LAYOUT, file_fds=fds)
    assert pairs(argv, "--ro-bind-data") == [("8", "/etc/claude-code/managed-settings.json"), ("9", "/tmp/a/b.txt")]
    tmpfs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--tmpfs"]
    assert "/etc/claude-code" in tmpfs
    assert "/tmp/a" not in tmpfs  # /tmp is the sandbox's own already
    remounts = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--remount-ro"]
    assert remounts[-2:] == ["/etc/claude-code", "/"]
    # the directory is covered before its file is placed, and made read-only after
    assert argv.index("/etc/claude-code") < argv.index("8") < len(argv) - argv[::-1].index("/etc/claude-code")


def test_files_that_would_need_a_host_mount_point_are_refused(tmp_path: Path) -> None:
    import pytest

    from corral.errors import UsageError
    from corral.sandbox.bwrap import check_files

    for dest, why in (
        (tmp_path / "ws" / "f", "bound from the host"),
        (Path("/etc/no-such-dir-corral/f"), "must exist on the host"),
        (Path("relative/f"), "absolute path"),
        (Path("/f"), "absolute path below a directory"),
    ):
        with pytest.raises(UsageError, match=why):
            check_files(SandboxSpec(("true",), tmp_path / "ws", files={dest: b""}))
