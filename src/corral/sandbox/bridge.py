"""The network bridge: a sandbox's only way out is a relay to its egress proxy socket.

The sandbox has an empty network namespace (only ``lo``). Into that namespace, and nowhere else,
corral starts a relay (socat from Debian) that listens on 127.0.0.1:3128 and forwards each
connection to the sandbox's own Unix socket of the egress proxy. The relay lives outside the
sandbox in every other way: it is not in the sandbox's mount namespace (so the proxy socket is
never visible inside), not in its pid namespace (so it cannot be signalled or traced from inside),
and not under its seccomp filter (which forbids AF_UNIX sockets to the sandboxed command). It does
join the sandbox's cgroups: its connections count against the sandbox's pids limit and die with it.

A program that ignores the proxy variables cannot connect anywhere: there is no route out.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from corral.errors import SandboxError, SandboxUnavailableError

__all__ = ["RELAY_PORT", "proxy_env", "start_relay"]

RELAY_PORT = 3128
CLONE_NEWNET = 0x40000000
_LISTENING = f"0100007F:{RELAY_PORT:04X}"  # 127.0.0.1:3128 as /proc/net/tcp writes it


def proxy_env() -> dict[str, str]:
    """What tells programs inside to use the relay: every spelling, and no exceptions."""
    http = f"http://127.0.0.1:{RELAY_PORT}"
    env = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": f"socks5h://127.0.0.1:{RELAY_PORT}", "NO_PROXY": ""}
    return {**env, **{name.lower(): value for name, value in env.items()}}


def _enter_netns(sandbox_pid: int, host_uid: int | None) -> Callable[[], None]:
    """In the forked relay, before exec: join the sandbox's network namespace, then drop root."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    path = f"/proc/{sandbox_pid}/ns/net"

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
        if host_uid is not None:
            os.setgroups([])
            os.setresgid(host_uid, host_uid, host_uid)
            os.setresuid(host_uid, host_uid, host_uid)

    return enter


def start_relay(
    socket_path: Path, sandbox_pid: int, host_uid: int | None, *, timeout: float = 5.0
) -> subprocess.Popen[bytes]:
    """Start the relay in the sandbox's network namespace and wait until it listens."""
    if os.geteuid() != 0:
        msg = (
            "Network egress for a sandbox needs corral to run as root here (the relay joins the sandbox's "
            "network namespace from outside); run as root, or without --allow-domain for no network."
        )
        raise SandboxUnavailableError(msg)
    argv = [
        "socat",
        f"TCP-LISTEN:{RELAY_PORT},bind=127.0.0.1,reuseaddr,fork,backlog=256",
        f"UNIX-CONNECT:{socket_path}",
    ]
    try:
        relay = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_enter_netns(sandbox_pid, host_uid),
            start_new_session=True,
        )
    except FileNotFoundError:
        msg = "socat is not installed; install it (apt-get install --no-install-recommends socat) for sandbox egress."
        raise SandboxUnavailableError(msg) from None
    deadline = time.monotonic() + timeout
    table = Path(f"/proc/{relay.pid}/net/tcp")
    while True:
        try:
            if any(f" {_LISTENING} 00000000:0000 0A " in line for line in table.read_text().splitlines()):
                return relay
        except OSError:
            pass
        if relay.poll() is not None or time.monotonic() > deadline:
            relay.kill()
            code = relay.wait()
            msg = f"The egress relay did not start listening within {timeout:g}s (socat exited {code})."
            raise SandboxError(msg)
        time.sleep(0.0002)
