"""Sandboxes: run a command with no way out but what its spec grants."""

from corral.sandbox.spec import Limits, RunResult, SandboxSpec, Violation

__all__ = ["Limits", "RunResult", "SandboxSpec", "Violation"]
