"""One sandbox's door to the proxy: its own Unix socket, its own policy, its own violations.

Nothing is shared between endpoints and nothing is process-wide: a connection's policy is the
policy of the socket it arrived on, never something the sandbox says about itself. The policy
may be replaced from any thread while the endpoint serves; new connections use the new one at
once, tunnels already open keep running.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import stat
import threading
from pathlib import Path

from corral.egress.policy import Policy
from corral.errors import UsageError
from corral.sandbox.spec import Violation

__all__ = ["MAX_VIOLATIONS", "Endpoint", "bind_socket"]

MAX_VIOLATIONS = 10_000
"""Violations kept per endpoint (the newest); older ones are counted in ``dropped_violations``."""
_MAX_PATH = 107


def _in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_socket(path: Path, owner_uid: int | None = None) -> socket.socket:
    """A Unix socket bound at ``path``, mode 0600 (owned by ``owner_uid`` if given), not yet listening.

    Permissions are set before ``listen``, so no one can connect while the socket is still open
    to everyone. A stale socket file (nobody listening) is replaced; a live one is an error.
    """
    if len(os.fsencode(path)) > _MAX_PATH:
        size = len(os.fsencode(path))
        msg = f"The socket path {path} is {size} bytes, over the {_MAX_PATH}-byte limit; use a shorter directory."
        raise UsageError(msg)
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            msg = f"{path} exists and is not a socket; remove it or choose another socket path."
            raise UsageError(msg)
        if _in_use(path):
            msg = f"The socket {path} is already served by another proxy; close that endpoint or choose another path."
            raise UsageError(msg)
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        path.chmod(0o600)
        if owner_uid is not None:
            os.chown(path, owner_uid, -1)
    except OSError as err:
        sock.close()
        if path.is_socket():
            path.unlink()
        why = (
            "hand it to uid " + str(owner_uid)
            if isinstance(err, PermissionError) and owner_uid is not None
            else "bind it"
        )
        msg = f"Cannot {why} at {path} ({err.strerror}); check that its directory exists and is writable by corral."
        raise UsageError(msg) from err
    sock.setblocking(False)
    return sock


class Endpoint:
    """The listener of one sandbox. Thread-safe: ``policy``, ``set_policy`` and ``violations``."""

    def __init__(self, sandbox_id: str, socket_path: Path, policy: Policy) -> None:
        self.sandbox_id = sandbox_id
        self.socket_path = socket_path
        self._lock = threading.Lock()
        self._policy = _checked(policy)
        self._violations: collections.deque[Violation] = collections.deque(maxlen=MAX_VIOLATIONS)
        self.dropped_violations = 0
        self.listener: socket.socket | None = None
        self.accepting: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        """One per connection being served."""
        self.inode: int | None = None

    def __repr__(self) -> str:
        return f"Endpoint({self.sandbox_id!r}, {str(self.socket_path)!r})"

    @property
    def policy(self) -> Policy:
        with self._lock:
            return self._policy

    def set_policy(self, policy: Policy) -> None:
        """Use ``policy`` for every connection from now on (open tunnels are not cut)."""
        checked = _checked(policy)
        with self._lock:
            self._policy = checked

    def violations(self) -> tuple[Violation, ...]:
        """What the sandbox tried and was refused, oldest first (at most ``MAX_VIOLATIONS``)."""
        with self._lock:
            return tuple(self._violations)

    def record(self, violation: Violation) -> None:
        with self._lock:
            if len(self._violations) == MAX_VIOLATIONS:
                self.dropped_violations += 1
            self._violations.append(violation)

    @property
    def active(self) -> int:
        """Connections being served now (read it on the proxy's loop for an exact value)."""
        return len(self.tasks)


def _checked(policy: Policy) -> Policy:
    if not isinstance(policy, Policy):
        kind = type(policy).__name__
        msg = f"An endpoint needs a corral.egress.Policy, not {kind}; build one with Policy(allow=[...])."
        raise UsageError(msg)
    return policy
