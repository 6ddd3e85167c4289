"""What a sandbox runs with (``SandboxSpec``) and what it hands back (``RunResult``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

__all__ = ["DEFAULT_PATH", "Limits", "Reason", "RunResult", "SandboxSpec", "Violation"]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
SANDBOX_HOME = "/home/sandbox"

Reason = Literal["exited", "timeout", "oom", "killed"]


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits; ``None`` means no limit of that kind."""

    memory: int | None = None
    """Bytes of memory (RAM plus tmpfs) the whole sandbox may use."""
    pids: int | None = None
    """Processes and threads the whole sandbox may have at once."""
    cpus: float | None = None
    """CPU share in cores (``0.5`` is half of one core)."""
    timeout: float | None = None
    """Wall-clock seconds before the whole process tree is killed."""


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """Everything one sandboxed command runs with. Nothing is inherited that is not named here."""

    command: tuple[str, ...]
    workspace: Path
    """The host directory the command may write; bound at the same path inside."""
    cwd: Path | None = None
    """Working directory inside; default the workspace."""
    ro_binds: tuple[Path, ...] = ()
    """Extra host paths visible read-only at the same path inside."""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """The whole environment of the command (``PATH`` and ``HOME`` get defaults)."""
    limits: Limits = Limits()
    deny: tuple[Path, ...] = ()
    """Host paths that must not be visible inside, on top of the built-in hidden paths."""
    files: Mapping[Path, bytes] = dataclasses.field(default_factory=dict)
    """Read-only files placed inside at these paths (not on the host). A file outside ``/tmp``,
    ``/run`` and the home gets a fresh read-only directory: its parent must exist on the host and
    is hidden inside by one holding only the files given here."""
    egress: Path | None = None
    """The host Unix socket of this sandbox's egress proxy endpoint; ``None`` means no network at all."""
    uid: int = 1000
    """The user id inside the sandbox; never 0."""
    gid: int = 1000
    hostname: str = "corral"

    def full_env(self) -> dict[str, str]:
        """The environment the command sees: the spec's, plus defaults it did not name."""
        base = {"PATH": DEFAULT_PATH, "HOME": SANDBOX_HOME, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        if self.egress is not None:
            from corral.sandbox.bridge import proxy_env

            base.update(proxy_env())
        return {**base, **self.env}


@dataclasses.dataclass(frozen=True)
class Violation:
    """Something the sandboxed command tried and was stopped from doing."""

    kind: str
    """``protected-path`` or ``network``."""
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} {self.target}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a sandboxed command ended."""

    exit_code: int
    """The exit status; 128+N when the command died of signal N, 124 on timeout."""
    reason: Reason
    duration: float
    """Seconds the whole run took, from the call to the end of its cleanup (the backend's own work included)."""
    signal: int | None = None
    """The signal that ended the command, where it died of one."""
    peak_memory: int | None = None
    """Bytes, where the cgroup reports it."""
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_dropped: int = 0
    """Bytes of stdout not kept (the head is dropped, the tail kept)."""
    stderr_dropped: int = 0
    limits_enforced: bool = False
    limits_note: str = ""
    """Why limits are not enforced, when they are not."""
    violations: tuple[Violation, ...] = ()
    sandbox_id: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "exited" and self.exit_code == 0

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        import signal

        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return str(self.signal)
