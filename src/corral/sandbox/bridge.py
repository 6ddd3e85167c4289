"""The network bridge: a sandbox's only way out is a relay to its egress proxy socket.

The sandbox has an empty network namespace (only ``lo``, no route). In that namespace, and
nowhere else, corral runs a relay (socat from Debian) that listens on 127.0.0.1:3128 and forwards
each connection to the sandbox's own Unix socket of the egress proxy. The relay joins only that
namespace, from outside, and lives outside the sandbox in every other way: not in its mount
namespace (the proxy socket is never visible inside), not in its pid namespace (it
cannot be signalled or traced from inside), not under its seccomp filter (which forbids AF_UNIX
sockets to the sandboxed command). It does join the sandbox's cgroups: its connections count
against the sandbox's pids limit and die with it.

A program that ignores the proxy variables cannot connect anywhere: there is no route out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

from corral.errors import SandboxError, SandboxUnavailableError, UsageError
from corral.sandbox import spawner

__all__ = ["RELAY_PORT", "check_socket", "proxy_env", "start_relay", "stop_relay", "wait_listening"]

RELAY_PORT = 3128
SOCAT_SPECIAL = frozenset(",:!\"'\\ \t\n{}[]")
_LISTENING = f"0100007F:{RELAY_PORT:04X}"  # 127.0.0.1:3128 as /proc/net/tcp writes it


def proxy_env() -> dict[str, str]:
    """What tells programs inside to use the relay: every spelling, and no exceptions."""
    http = f"http://127.0.0.1:{RELAY_PORT}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": f"socks5h://127.0.0.1:{RELAY_PORT}", "NO_PROXY": ""}
    return {**env, **{name.lower(): value for name, value in env.items()}}


def check_socket(socket_path: Path) -> None:
    """Refuse an egress socket the relay could not use, before any sandbox starts."""
    if any(char in str(socket_path) for char in SOCAT_SPECIAL):
        msg = f"The proxy socket path {socket_path} has a character socat reads as syntax; use a plainer path."
        raise UsageError(msg)
    try:
        is_socket = stat.S_ISSOCK(socket_path.stat().st_mode)
    except OSError:
        is_socket = False
    if not is_socket:
        msg = f"The egress socket {socket_path} is not a listening proxy socket; open a proxy endpoint there first."
        raise UsageError(msg)


def start_relay(socket_path: Path, sandbox_pid: int, host_uid: int | None) -> subprocess.Popen[bytes]:
    """Start the relay in the network namespace of the sandbox's first process, as the sandbox's uid.

    The calling thread steps into that namespace and takes the sandbox's ids for the spawn (see
    ``spawner``), so socat starts there directly, from a vfork: no Python code runs in the child.
    """
    if os.geteuid() != 0:
        msg = (
            "Network egress for a sandbox needs corral to run as root here (the relay joins the sandbox's "
            "network namespace from outside); run as root, or without --allow-domain for no network."
        )
        raise SandboxUnavailableError(msg)
    check_socket(socket_path)
    argv = [
        "socat",
        f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1,reuseaddr,fork,backlog=256",
        f"UNIX-CONNECT:{socket_path}",
    ]
    try:
        with contextlib.ExitStack() as borrowed:
            borrowed.enter_context(spawner.in_network_of(sandbox_pid))
            if host_uid is not None:
                borrowed.enter_context(spawner.as_user(host_uid))
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
    except FileNotFoundError:
        msg = "socat is not installed; install it (apt-get install --no-install-recommends socat) for sandbox egress."
        raise SandboxUnavailableError(msg) from None


def wait_listening(relay: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Return once the relay listens on 127.0.0.1:3128.

    socat listens, then sleeps in select (or accept) until a client comes: once the kernel shows it
    waiting there, it is listening. Reading the TCP table would say so too, but that walks the
    host's whole connection hash and costs milliseconds, so it is only the fallback.
    """
    deadline = time.monotonic() + timeout
    proc = Path(f"/proc/{relay.pid}")
    tries = 0
    while True:
        tries += 1
        try:
            if tries < 200:
                if any(word in (proc / "wchan").read_text() for word in ("poll", "select", "accept")):
                    return
            elif any(
                f" {_LISTENING} 00000000:0000 0A " in line for line in (proc / "net/tcp").read_text().splitlines()
            ):
                return
        except OSError:
            pass
        if relay.poll() is not None or time.monotonic() > deadline:
            relay.kill()
            code = relay.wait()
            msg = f"The egress relay did not start listening within {timeout:g}s (socat exited {code})."
            raise SandboxError(msg)
        time.sleep(0.0001 if tries < 200 else 0.002)


def stop_relay(relay: subprocess.Popen[bytes]) -> None:
    """Kill the relay and its connections (its process group), and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(relay.pid, signal.SIGKILL)
    relay.wait()
