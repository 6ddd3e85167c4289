"""The ``corral`` command line. It parses input, calls the library, and prints; nothing more.

Imports stay lazy: ``corral sandbox run -- true`` must start, sandbox and finish in well under
150 ms, so each command imports what it needs when it runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import click
import typer

from corral.errors import CorralError, UsageError

if TYPE_CHECKING:
    from corral.sandbox.spec import RunResult

app = typer.Typer(
    name="corral",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Run AI coding agents in sandboxes whose only way out is a filtering proxy.",
)
sandbox_app = typer.Typer(no_args_is_help=True, help="Run any command in a locked-down sandbox.")
app.add_typer(sandbox_app, name="sandbox")
audit_app = typer.Typer(no_args_is_help=True, help="Check egress audit logs.")
app.add_typer(audit_app, name="audit")


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


@sandbox_app.command("run")
def sandbox_run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.", show_default=False)],
    workspace: Annotated[
        Optional[Path],
        typer.Option(
            "--workspace",
            "-w",
            help="Host directory the command may write (default: a fresh empty one, removed afterwards).",
        ),
    ] = None,
    ro: Annotated[Optional[list[Path]], typer.Option("--ro", help="Host path to show read-only (repeatable).")] = None,
    env: Annotated[
        Optional[list[str]],
        typer.Option("--env", "-e", help="NAME (from the host) or NAME=VALUE (repeatable); nothing else is passed in."),
    ] = None,
    deny: Annotated[Optional[list[Path]], typer.Option("--deny", help="Host path that must stay invisible.")] = None,
    memory: Annotated[Optional[str], typer.Option(help="Memory limit, e.g. 512M or 2G.")] = None,
    pids: Annotated[Optional[str], typer.Option(help="Limit on processes and threads.")] = None,
    cpus: Annotated[Optional[str], typer.Option(help="CPU share in cores, e.g. 0.5.")] = None,
    timeout: Annotated[Optional[str], typer.Option(help="Wall-clock timeout, e.g. 30s or 5m.")] = None,
    allow_domain: Annotated[
        Optional[list[str]],
        typer.Option(
            "--allow-domain",
            help="Host the command may reach through the proxy: example.com, "
            "*.example.com, 127.0.0.1:8080 (repeatable). Without one, there is no network at all.",
        ),
    ] = None,
    deny_domain: Annotated[
        Optional[list[str]], typer.Option("--deny-domain", help="Host never to reach; deny wins (repeatable).")
    ] = None,
    audit_log: Annotated[
        Optional[Path], typer.Option("--audit-log", help="Append every egress decision to this JSONL file.")
    ] = None,
) -> None:
    """Run CMD in a sandbox: no host secrets, only the workspace writable, and no network but the proxy.

    Exits with the command's exit code; 124 on timeout, 137 when killed (out of memory included).
    """
    import tempfile

    from corral.sandbox.bwrap import BwrapSandbox
    from corral.sandbox.spec import Limits, SandboxSpec
    from corral.settings import get_settings
    from corral.units import parse_count, parse_cpus, parse_duration, parse_size

    settings = get_settings()
    limits = Limits(
        memory=parse_size(memory, what="memory limit") if memory is not None else settings.memory,
        pids=parse_count(pids, what="pids limit") if pids is not None else settings.pids,
        cpus=parse_cpus(cpus) if cpus is not None else settings.cpus,
        timeout=parse_duration(timeout, what="timeout") if timeout is not None else settings.timeout,
    )
    egress = None
    if allow_domain or deny_domain or audit_log:
        from corral.egress.policy import Policy

        policy = Policy(allow_domain or (), deny_domain or ())  # a bad pattern stops here, before anything starts
        if not allow_domain:
            msg = "--deny-domain and --audit-log need at least one --allow-domain; without one there is no network."
            raise UsageError(msg)
        from corral.egress.audit import AuditLog
        from corral.egress.door import Door

        egress = Door(settings.runtime, policy, audit=AuditLog(audit_log) if audit_log is not None else None)
    scratch = None if workspace is not None else tempfile.mkdtemp(prefix="corral-ws-")
    try:
        spec = SandboxSpec(
            command=tuple(command),
            workspace=(workspace or Path(scratch or ".")).absolute(),
            ro_binds=tuple(p.absolute() for p in ro or ()),
            env=_env(env or []),
            deny=tuple(p.absolute() for p in deny or ()),
            limits=limits,
            egress=egress.socket if egress is not None else None,
        )
        sandbox = BwrapSandbox(settings)
        sandbox.check(spec)
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
    raise typer.Exit(result.exit_code)


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


@app.command()
def doctor() -> None:
    """Probe this machine for what sandboxes need; exit 0 only if they can run."""
    from rich.console import Console

    from corral.doctor import is_ready, run_checks
    from corral.settings import get_settings

    checks = run_checks(get_settings())
    console = Console(highlight=False)
    for check in checks:
        mark = "[green]ok[/]  " if check.ok else ("[red]FAIL[/]" if check.required else "[yellow]warn[/]")
        console.print(f"{mark} {check.name:<22} {check.detail}", soft_wrap=True)
        if not check.ok and check.remedy:
            console.print(f"     {'':<22} [bold]fix:[/] {check.remedy}", soft_wrap=True)
    ready = is_ready(checks)
    console.print("sandboxes can run here." if ready else "[red]sandboxes cannot run here[/]; see the fixes above.")
    raise typer.Exit(0 if ready else 1)


@audit_app.command("verify")
def audit_verify(
    file: Annotated[Path, typer.Argument(help="The JSONL audit log (its .head checkpoint is read beside it).")],
) -> None:
    """Check that no line of an audit log was edited, inserted, reordered or removed; exit 1 if one was."""
    from corral.egress.audit import verify

    if not file.is_file():
        msg = f"The audit log {file} does not exist or is not a file; give the path passed to --audit-log."
        raise UsageError(msg)
    problems = verify(file)
    for problem in problems:
        typer.echo(problem, err=True)
    if problems:
        typer.echo(f"{file}: TAMPERED ({len(problems)} problem(s))")
        raise typer.Exit(1)
    lines = sum(1 for _ in file.open("rb"))
    typer.echo(f"{file}: intact, {lines} line(s), every hash chained")


@app.command()
def version() -> None:
    """Print corral's version."""
    from corral import __version__

    typer.echo(__version__)


def main() -> None:
    """The entry point, and the CLI's one error boundary."""
    try:
        code = app(standalone_mode=False)
    except click.ClickException as err:
        err.show()
        code = err.exit_code
    except click.Abort:
        sys.stderr.write("Aborted.\n")
        code = 130
    except CorralError as err:
        sys.stderr.write(f"Error: {err}\n")
        code = err.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
