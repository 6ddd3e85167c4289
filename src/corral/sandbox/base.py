"""The shape every sandbox backend has."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from corral.sandbox.process import OutputSink, Supervised
from corral.sandbox.spec import RunResult, SandboxSpec

__all__ = ["SandboxBackend"]


class SandboxBackend(Protocol):
    """Runs one command in a sandbox to its end. Implementations: ``bwrap``, and ``FakeSandbox`` for tests."""

    def check(self, spec: SandboxSpec) -> None:
        """Raise a ``CorralError`` if ``spec`` cannot run here; start nothing."""

    def reap(self) -> list[str]:
        """Remove what runs of killed callers left behind (in slots nobody holds); what was removed."""
        ...

    def run(
        self,
        spec: SandboxSpec,
        *,
        on_output: OutputSink | None = None,
        stdin: int | None = None,
        on_start: Callable[[Supervised], None] | None = None,
        tty: int | None = None,
    ) -> RunResult:
        """Run ``spec``, streaming output to ``on_output``; kill the whole tree at its timeout.

        ``tty`` is the slave of a pseudo-terminal the caller opened: the command's stdin, stdout
        and stderr (nothing is piped then, and ``stdin`` is ignored).
        """
        ...
