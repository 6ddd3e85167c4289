"""``corral sandbox run``: its options as data, a parser that needs no CLI framework, and the run.

``corral sandbox run -- CMD`` is meant to be cheap enough to run per tool call, and importing
typer and click alone costs more than half of its 150 ms budget. So ``corral.cli.main`` first
tries ``parse``: the plain forms (``--flag value``, ``--flag=value``, ``-w``/``-e``, then ``--`` and
the command) are read here, and anything else — help, a typo, a missing value — goes to the typer
command in ``corral.cli.app``, which owns the help text and the usage errors. Both end in ``run``,
and a test checks that both parsers read the same options alike.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from corral.errors import UsageError

if TYPE_CHECKING:
    from corral.sandbox.spec import RunResult

__all__ = ["FLAGS", "RunArgs", "parse", "run"]


@dataclasses.dataclass
class RunArgs:
    """The options of ``corral sandbox run`` as typed, before any of them is checked."""

    command: list[str] = dataclasses.field(default_factory=list)
    workspace: str | None = None
    ro: list[str] = dataclasses.field(default_factory=list)
    env: list[str] = dataclasses.field(default_factory=list)
    deny: list[str] = dataclasses.field(default_factory=list)
    memory: str | None = None
    pids: str | None = None
    cpus: str | None = None
    timeout: str | None = None
    allow_domain: list[str] = dataclasses.field(default_factory=list)
    deny_domain: list[str] = dataclasses.field(default_factory=list)
    audit_log: str | None = None


FLAGS = {
    "--workspace": "workspace",
    "-w": "workspace",
    "--ro": "ro",
    "--env": "env",
    "-e": "env",
    "--deny": "deny",
    "--memory": "memory",
    "--pids": "pids",
    "--cpus": "cpus",
    "--timeout": "timeout",
    "--allow-domain": "allow_domain",
    "--deny-domain": "deny_domain",
    "--audit-log": "audit_log",
}
"""Every option of ``corral sandbox run`` and the ``RunArgs`` field it fills (lists repeat)."""


def parse(argv: list[str]) -> RunArgs | None:
    """Read the plain forms of the options; ``None`` when anything needs the full parser."""
    args = RunArgs()
    words = iter(argv)
    for word in words:
        if word == "--":
            args.command = list(words)
            return args if args.command else None
        flag, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        field = FLAGS.get(flag)
        if field is None:
            return None
        if not eq:
            value = next(words, "--")
            if value == "--" or (value.startswith("-") and value in FLAGS):
                return None
        current = getattr(args, field)
        if isinstance(current, list):
            current.append(value)
        else:
            setattr(args, field, value)
    return None


def _env(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name or not (name[0].isalpha() or name[0] == "_") or not name.replace("_", "").isalnum():
            msg = f"The environment name {name!r} in --env {item!r} is not valid; write --env NAME or --env NAME=VALUE."
            raise UsageError(msg)
        if not sep:
            if name not in os.environ:
                msg = f"The variable {name} is not set on the host; give it a value with --env {name}=VALUE."
                raise UsageError(msg)
            value = os.environ[name]
        env[name] = value
    return env


def run(args: RunArgs) -> int:
    """Run the command as asked; return the exit code for the process."""
    import tempfile

    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import get_settings
    from corral.units import parse_count, parse_cpus, parse_duration, parse_size

    settings = get_settings()
    limits = Limits(
        memory=parse_size(args.memory, what="memory limit") if args.memory is not None else settings.memory,
        pids=parse_count(args.pids, what="pids limit") if args.pids is not None else settings.pids,
        cpus=parse_cpus(args.cpus) if args.cpus is not None else settings.cpus,
        timeout=parse_duration(args.timeout, what="timeout") if args.timeout is not None else settings.timeout,
    )
    egress = None
    if args.allow_domain or args.deny_domain or args.audit_log:
        from corral.egress.policy import Policy

        policy = Policy(args.allow_domain, args.deny_domain)  # a bad pattern stops here, before anything starts
        if not args.allow_domain:
            msg = "--deny-domain and --audit-log need at least one --allow-domain; without one there is no network."
            raise UsageError(msg)
        from corral.egress.audit import AuditLog
        from corral.egress.door import Door

        egress = Door(settings.runtime, policy, audit=AuditLog(Path(args.audit_log)) if args.audit_log else None)
    scratch = None if args.workspace is not None else tempfile.mkdtemp(prefix="corral-ws-")
    try:
        spec = SandboxSpec(
            command=tuple(args.command),
            workspace=Path(args.workspace or scratch or ".").absolute(),
            ro_binds=tuple(Path(p).absolute() for p in args.ro),
            env=_env(args.env),
            deny=tuple(Path(p).absolute() for p in args.deny),
            limits=limits,
            egress=egress.socket if egress is not None else None,
        )
        sandbox = BwrapSandbox(settings)
        if egress is None:
            result = sandbox.run(spec, on_output=_echo, stdin=_stdin())
        else:
            with egress:
                result = egress.with_violations(sandbox.run(spec, on_output=_echo, stdin=_stdin()))
    finally:
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    _report(result, limits.memory)
    return result.exit_code


def _stdin() -> int | None:
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def _echo(stream: str, chunk: bytes) -> None:
    out = sys.stdout if stream == "stdout" else sys.stderr
    out.buffer.write(chunk)
    out.flush()


def _report(result: RunResult, memory: int | None) -> None:
    from corral.units import format_size

    lines = []
    if result.reason == "timeout":
        lines.append(f"corral: timed out after {result.duration:.1f}s; the whole process tree was killed.")
    elif result.reason == "oom":
        limit = format_size(memory) if memory else "its"
        lines.append(f"corral: out of memory: the sandbox reached its {limit} limit and was killed.")
    elif result.reason == "killed":
        lines.append(f"corral: the command was killed ({result.signal_name or 'SIGKILL'}).")
    if result.limits_note:
        lines.append(f"corral: {result.limits_note}.")
    if result.violations:
        lines.append("<sandbox_violations>")
        lines.extend(str(v) for v in result.violations)
        lines.append("</sandbox_violations>")
    if lines:
        sys.stderr.write("\n".join(lines) + "\n")
