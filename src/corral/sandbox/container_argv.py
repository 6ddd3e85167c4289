"""The container backend's command line: ``docker run`` / ``podman run`` of a spec, as a pure function.

What every engine is asked for is decided here, from the spec and the layout ``paths`` plans for
bwrap; how each engine's CLI spells it (podman 4 differs from docker in a few spellings and
defaults) is its ``Dialect``. Environment values stay off the command line, but for the names
the engine's CLI reads itself: ``--env NAME`` takes the value from the CLI's environment, which
``cli_env`` builds.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from corral.errors import UsageError
from corral.sandbox import bridge, paths
from corral.sandbox.spec import SANDBOX_HOME, SandboxSpec

__all__ = [
    "DIALECTS",
    "INSIDE_SOCKET",
    "LABEL",
    "MASK",
    "NPROC",
    "Dialect",
    "Engine",
    "Runtime",
    "build_run_argv",
    "cli_env",
]

Engine = Literal["docker", "podman"]
Runtime = Literal["runc", "runsc"]

LABEL = "corral.slot"
INSIDE_SOCKET = "/run/corral-egress.sock"
MASK = Path("/")
"""The key of ``files`` whose host file masks secret files: empty, mode 0, owned by root."""
WAIT_FOR_RELAY = (
    f'while ! grep -q " 0100007F:{bridge.RELAY_PORT:04X} 00000000:0000 0A " /proc/net/tcp; do sleep 0.005; done'
)
"""Shell that returns once something listens on 127.0.0.1:3128 in the container's network."""
RELAY_INSIDE = (
    f"socat TCP-LISTEN:{bridge.RELAY_PORT},bind=127.0.0.1,reuseaddr,fork,backlog=256 "
    f"UNIX-CONNECT:{INSIDE_SOCKET} </dev/null >/dev/null 2>&1 &"
)
CLI_NAMES = frozenset({"PATH", "HOME", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"})
"""Variables the engine's CLI reads itself: passed with their values on its command line, never
through its environment (names with the prefixes below too)."""
CLI_PREFIXES = ("DOCKER_", "CONTAINER", "PODMAN_", "BUILDAH_", "REGISTRY_AUTH")


def _cli_name(name: str) -> bool:
    return name in CLI_NAMES or name.startswith(CLI_PREFIXES)


@dataclasses.dataclass(frozen=True)
class Dialect:
    """How one engine's CLI says what corral asks of every engine (podman 4 differs from docker here)."""

    runsc_global: tuple[str, ...]
    """Options before ``run`` for gVisor: podman takes the runtime, and runsc's flags, there."""
    runsc_run: tuple[str, ...]
    """``run`` options for gVisor: docker names a runtime registered with its daemon, flags and all."""
    as_docker: tuple[str, ...]
    """``run`` options that make the engine's defaults docker's."""
    read_only: str
    """The tmpfs option that makes it read-only."""
    fresh: str
    """tmpfs options that keep it empty: podman copies what lies under the mount point into it."""
    owner: str
    """tmpfs options that give it to the ``--user`` (``{uid}`` and ``{gid}`` are filled in)."""
    slot_label: str
    """The ``ps --format`` template that prints a container's slot."""
    remove_now: tuple[str, ...]
    """``rm --force`` options that remove a running container at once (podman would wait 10 s for it)."""


DIALECTS: dict[Engine, Dialect] = {
    "docker": Dialect(
        runsc_global=(),
        runsc_run=("--runtime", "runsc"),
        as_docker=(),
        read_only="readonly",
        fresh="",
        owner="uid={uid},gid={gid}",
        slot_label=f'{{{{.Label "{LABEL}"}}}}',
        remove_now=(),
    ),
    "podman": Dialect(
        # runsc's own network stays off (the relay is the only way out); it may reach the proxy socket
        # mounted in; it applies the seccomp profile inside gVisor
        runsc_global=(
            "--runtime",
            "runsc",
            *("--runtime-flag", "network=none"),
            *("--runtime-flag", "fsgofer-host-uds"),
            *("--runtime-flag", "oci-seccomp"),
        ),
        runsc_run=(),
        as_docker=(
            "--passwd=false",  # no /etc/passwd entry for the --user
            "--read-only-tmpfs=false",  # no writable /var/tmp
            "--sysctl",
            "net.ipv6.conf.all.disable_ipv6=1",  # no IPv6 address at all
            "--mount",
            "type=tmpfs,destination=/sys/fs/cgroup,ro,notmpcopyup",  # podman mounts the cgroups over /sys
        ),
        read_only="ro",
        fresh=",notmpcopyup",
        owner="U",
        slot_label=f'{{{{index .Labels "{LABEL}"}}}}',
        remove_now=("--time", "0"),
    ),
}


NPROC = 32768
"""The command's ``nproc`` rlimit when the spec sets no pids limit (its uid is the slot's alone)."""


def build_run_argv(
    spec: SandboxSpec,
    layout: paths.Layout,
    *,
    engine: Engine,
    image: str,
    runtime: Runtime,
    name: str,
    slot: str,
    user: tuple[int, int],
    profile: Path,
    files: Mapping[Path, Path],
    tty: bool = False,
    interactive: bool = False,
    open_files: int = 1024,
) -> list[str]:
    """The complete ``docker run`` / ``podman run`` command line for ``spec`` (pure: no I/O).

    ``files`` maps each file to place inside to the host file holding it, and ``MASK`` to an empty
    file no one may open that hides a secret file inside a bound tree; ``profile`` is the
    seccomp profile (JSON) of the engine. Environment values never appear here but for the
    names the engine's CLI reads itself: ``-e NAME`` takes the value from the CLI's environment.
    ``open_files`` and the pids limit are also the command's ``nofile`` and ``nproc`` rlimits:
    podman's own defaults (over a million) fail where the host's hard limits are lower.
    """
    uid, gid = user
    limits = spec.limits
    dialect = DIALECTS[engine]
    gvisor = runtime == "runsc"
    argv = [engine, *(dialect.runsc_global if gvisor else ()), "run", "--name", name]
    argv += ["--label", f"{LABEL}={slot}", "--network", "none", "--init"]
    argv += ["--user", f"{uid}:{gid}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    argv += ["--security-opt", f"seccomp={profile}", "--read-only", "--hostname", spec.hostname]
    argv += ["--log-driver", "none", "--pull", "never", *dialect.as_docker, *(dialect.runsc_run if gvisor else ())]
    if tty:
        argv += ["--tty"]
    if interactive:
        argv += ["--interactive"]
    if limits.memory is not None:
        argv += ["--memory", str(limits.memory), "--memory-swap", str(limits.memory)]
    if limits.pids is not None:
        argv += ["--pids-limit", str(limits.pids)]
    nproc = limits.pids or NPROC
    argv += ["--ulimit", f"nofile={open_files}:{open_files}", "--ulimit", f"nproc={nproc}:{nproc}"]
    if limits.cpus is not None:
        argv += ["--cpus", f"{limits.cpus:g}"]
    scratch = f"rw,nosuid,nodev,exec{dialect.fresh}"
    empty = f"{dialect.read_only}{dialect.fresh}"
    argv += ["--tmpfs", f"/tmp:{scratch},mode=1777", "--tmpfs", f"/run:{scratch},mode=755"]
    argv += ["--tmpfs", f"{SANDBOX_HOME}:{scratch},mode=700,{dialect.owner.format(uid=uid, gid=gid)}"]
    argv += ["--mount", f"type=tmpfs,destination=/sys,{empty}"]  # the host's devices, cgroups and kernel knobs
    argv += ["--sysctl", "net.ipv4.ping_group_range=1 0"]  # no unprivileged ICMP sockets (docker allows them)
    for path in spec.ro_binds:
        argv += ["--mount", _bind(path, path, read_only=True)]
    argv += ["--mount", _bind(spec.workspace, spec.workspace, read_only=False)]
    for path in layout.pinned:
        argv += ["--mount", _bind(path, path, read_only=False)]
    for path in layout.protected:
        argv += ["--mount", _bind(path, path, read_only=True)]
    for mask, is_dir in layout.masks:
        if is_dir:
            argv += ["--mount", f"type=tmpfs,destination={mask},{empty}"]
        else:
            argv += ["--mount", _bind(files[MASK], mask, read_only=True)]
    for dest, source in sorted(files.items()):
        if dest == MASK:
            continue
        argv += ["--mount", _bind(source, dest, read_only=True)]
    command = list(spec.command)
    if spec.egress is not None:
        if runtime == "runsc":
            argv += ["--mount", _bind(spec.egress, Path(INSIDE_SOCKET), read_only=False)]
            command = ["/bin/sh", "-c", f'{RELAY_INSIDE} {WAIT_FOR_RELAY}; exec "$@"', "corral-relay", *command]
        else:
            command = ["/bin/sh", "-c", f'{WAIT_FOR_RELAY}; exec "$@"', "corral-wait", *command]
    for key, value in sorted(spec.full_env().items()):
        argv += ["--env", f"{key}={value}" if _cli_name(key) else key]
    argv += ["--workdir", str(spec.cwd or spec.workspace), image]
    return [*argv, *command]


def _bind(source: Path, dest: Path, *, read_only: bool) -> str:
    for path in (source, dest):
        if "," in str(path) or "=" in str(path):
            msg = f"The path {path} has a ',' or '=', which the engine's --mount syntax cannot carry; rename it."
            raise UsageError(msg)
    return f"type=bind,source={source},destination={dest}" + (",readonly" if read_only else "")


def cli_env(environ: Mapping[str, str], sandbox_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The engine CLI's environment: what it reads from the host, and the values ``-e NAME`` passes on."""
    own = {key: value for key, value in environ.items() if _cli_name(key)}
    own.setdefault("PATH", os.defpath)
    return {**{k: v for k, v in (sandbox_env or {}).items() if not _cli_name(k)}, **own}
