"""The container backend's command line and seccomp profile, as data."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from corral.errors import UsageError
from corral.sandbox import paths, seccomp
from corral.sandbox.container_argv import INSIDE_SOCKET, MASK, NPROC, build_run_argv, cli_env
from corral.sandbox.spec import SANDBOX_HOME, Limits, SandboxSpec

WS = Path("/srv/jobs/j1/repo")
EMPTY = paths.Layout(system=(), protected=(), pinned=(), masks=())


def argv(spec: SandboxSpec, layout: paths.Layout = EMPTY, **options: object) -> list[str]:
    fields: dict[str, object] = {
        "engine": "docker",
        "image": "img:1",
        "runtime": "runc",
        "name": "corral-s3-ab",
        "slot": "s3",
        "user": (1800000003, 1800000003),
        "profile": Path("/run/corral/p.json"),
        "files": {},
        **options,
    }
    return build_run_argv(spec, layout, **fields)  # type: ignore[arg-type]


def pairs(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, arg in enumerate(command) if arg == flag]


def test_the_locked_down_defaults() -> None:
    command = argv(SandboxSpec(("ls", "-la"), WS))
    assert command[:2] == ["docker", "run"]
    assert pairs(command, "--network") == ["none"]
    assert pairs(command, "--user") == ["1800000003:1800000003"]
    assert pairs(command, "--cap-drop") == ["ALL"]
    assert pairs(command, "--security-opt") == ["no-new-privileges", "seccomp=/run/corral/p.json"]
    assert pairs(command, "--pull") == ["never"]  # never reaches for a registry
    assert pairs(command, "--label") == ["corral.slot=s3"]
    assert {"--read-only", "--init"} <= set(command)
    assert pairs(command, "--mount") == [
        "type=tmpfs,destination=/sys,readonly",
        f"type=bind,source={WS},destination={WS}",
    ]
    assert command[-3:] == ["img:1", "ls", "-la"]
    assert pairs(command, "--workdir") == [str(WS)]
    assert "--runtime" not in command
    assert "--tty" not in command


def test_limits_become_engine_flags() -> None:
    command = argv(SandboxSpec(("true",), WS, limits=Limits(memory=256 << 20, pids=64, cpus=1.5, timeout=9)))
    assert pairs(command, "--memory") == pairs(command, "--memory-swap") == [str(256 << 20)]
    assert pairs(command, "--pids-limit") == ["64"]
    assert pairs(command, "--cpus") == ["1.5"]


def test_protected_paths_pins_and_masks_follow_the_layout() -> None:
    layout = paths.Layout(
        system=(),
        protected=(WS / ".git/hooks",),
        pinned=(WS / ".git",),
        masks=((WS / ".ssh", True), (WS / ".netrc", False)),
    )
    mask_file = Path("/run/corral/container-files/s3/mask")
    mounts = pairs(argv(SandboxSpec(("true",), WS), layout, files={MASK: mask_file}), "--mount")
    assert mounts[2:] == [
        f"type=bind,source={WS / '.git'},destination={WS / '.git'}",
        f"type=bind,source={WS / '.git/hooks'},destination={WS / '.git/hooks'},readonly",
        f"type=tmpfs,destination={WS / '.ssh'},readonly",
        f"type=bind,source={mask_file},destination={WS / '.netrc'},readonly",
    ]


def test_environment_values_stay_off_the_command_line() -> None:
    spec = SandboxSpec(("true",), WS, env={"GITHUB_TOKEN": "ghp_secret", "DOCKER_HOST": "tcp://evil"})
    command = argv(spec)
    assert "GITHUB_TOKEN" in pairs(command, "--env")
    assert not any("ghp_secret" in arg for arg in command)
    assert "DOCKER_HOST=tcp://evil" in pairs(command, "--env")  # the CLI reads it itself: only on its line
    env = cli_env({"PATH": "/usr/bin", "DOCKER_HOST": "unix:///engine.sock", "SECRET": "host"}, spec.full_env())
    assert env["GITHUB_TOKEN"] == "ghp_secret"
    assert env["DOCKER_HOST"] == "unix:///engine.sock"
    assert "SECRET" not in env
    assert env["PATH"] == "/usr/bin"


def test_egress_waits_for_the_relay_under_runc_and_runs_it_inside_under_runsc(tmp_path: Path) -> None:
    socket = tmp_path / "door.sock"
    spec = SandboxSpec(("claude",), WS, egress=socket)
    runc = argv(spec)
    assert runc[-5:-2] == ["/bin/sh", "-c", runc[-3]]
    assert runc[-2:] == ["corral-wait", "claude"]
    assert "0100007F:0C38" in runc[-3]
    assert "socat" not in runc[-3]
    assert not any(str(socket) in arg for arg in runc)  # the socket never enters a runc container
    runsc = argv(spec, runtime="runsc")
    assert pairs(runsc, "--runtime") == ["runsc"]
    assert f"type=bind,source={socket},destination={INSIDE_SOCKET}" in pairs(runsc, "--mount")
    assert f"UNIX-CONNECT:{INSIDE_SOCKET}" in runsc[-3]


def test_a_terminal_session_gets_tty_and_interactive() -> None:
    command = argv(SandboxSpec(("claude",), WS), tty=True, interactive=True)
    assert {"--tty", "--interactive"} <= set(command)


def test_a_path_the_mount_syntax_cannot_carry_is_refused() -> None:
    with pytest.raises(UsageError, match=r"has a ',' or '=', which the engine's --mount syntax cannot carry"):
        argv(SandboxSpec(("true",), Path("/srv/a,b")))


def without(command: list[str], valued: set[str], bare: set[str]) -> list[str]:
    """``command`` less the ``valued`` flags with their values, and less the ``bare`` flags."""
    kept: list[str] = []
    for i, arg in enumerate(command):
        if arg not in valued | bare and (i == 0 or command[i - 1] not in valued):
            kept.append(arg)
    return kept


def test_podman_gets_dockers_line_in_its_own_words() -> None:
    """What podman spells or defaults otherwise is said its way; the rest of the line is docker's."""
    layout = paths.Layout(system=(), protected=(), pinned=(), masks=((WS / ".ssh", True),))
    docker = argv(SandboxSpec(("true",), WS), layout)
    podman = argv(SandboxSpec(("true",), WS), layout, engine="podman")
    assert podman[:2] == ["podman", "run"]
    assert {"--passwd=false", "--read-only-tmpfs=false"} <= set(podman)
    assert pairs(podman, "--sysctl") == ["net.ipv6.conf.all.disable_ipv6=1", "net.ipv4.ping_group_range=1 0"]
    assert pairs(podman, "--tmpfs") == [
        "/tmp:rw,nosuid,nodev,exec,notmpcopyup,mode=1777",
        "/run:rw,nosuid,nodev,exec,notmpcopyup,mode=755",
        f"{SANDBOX_HOME}:rw,nosuid,nodev,exec,notmpcopyup,mode=700,U",
    ]
    assert pairs(podman, "--mount") == [
        "type=tmpfs,destination=/sys/fs/cgroup,ro,notmpcopyup",
        "type=tmpfs,destination=/sys,ro,notmpcopyup",
        f"type=bind,source={WS},destination={WS}",
        f"type=tmpfs,destination={WS / '.ssh'},ro,notmpcopyup",
    ]
    valued, bare = {"--sysctl", "--tmpfs", "--mount"}, {"--passwd=false", "--read-only-tmpfs=false"}
    assert without(podman[1:], valued, bare) == without(docker[1:], valued, bare)


def test_podman_takes_gvisor_before_run() -> None:
    command = argv(SandboxSpec(("true",), WS), engine="podman", runtime="runsc")
    assert command[: command.index("run")] == [
        "podman",
        "--runtime",
        "runsc",
        "--runtime-flag",
        "network=none",
        "--runtime-flag",
        "fsgofer-host-uds",
        "--runtime-flag",
        "oci-seccomp",
    ]
    assert "--runtime" not in command[command.index("run") :]


def test_the_seccomp_rules_become_an_engine_profile() -> None:
    profile = seccomp.engine_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64"] or profile["architectures"] == ["SCMP_ARCH_AARCH64"]
    entries = profile["syscalls"]
    assert isinstance(entries, list)
    assert len(entries) == len(seccomp.DEFAULT_RULES)
    unix = {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
    unix["args"] = [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]
    assert unix in entries
    tiocsti = next(e for e in entries if e["names"] == ["ioctl"])
    assert tiocsti["args"] == [{"index": 1, "value": 0xFFFFFFFF, "valueTwo": 0x5412, "op": "SCMP_CMP_MASKED_EQ"}]


def test_rlimits_follow_the_pids_limit_and_the_given_open_files() -> None:
    limited = argv(SandboxSpec(("true",), WS, limits=Limits(pids=64)), open_files=4096)
    assert pairs(limited, "--ulimit") == ["nofile=4096:4096", "nproc=64:64"]
    unlimited = argv(SandboxSpec(("true",), WS))
    assert pairs(unlimited, "--ulimit") == ["nofile=1024:1024", f"nproc={NPROC}:{NPROC}"]


def test_inside_gvisor_the_rules_allow_af_unix_and_nothing_else_more() -> None:
    """The relay inside gVisor reaches the proxy socket through AF_UNIX; every other rule stays."""
    assert set(seccomp.DEFAULT_RULES) - set(seccomp.GVISOR_RULES) == {
        next(r for r in seccomp.DEFAULT_RULES if r.syscall == "socket" and r.value == socket.AF_UNIX and r.op == "eq")
    }
    assert set(seccomp.GVISOR_RULES) < set(seccomp.DEFAULT_RULES)
    assert seccomp.cache_key(seccomp.GVISOR_RULES) != seccomp.cache_key(seccomp.DEFAULT_RULES)
