"""The typer application: every command, its options and help. Commands import what they use lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corral.errors import UsageError

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
    from corral.cli.sandbox_run import RunArgs, run

    args = RunArgs(
        command=command,
        workspace=str(workspace) if workspace is not None else None,
        ro=[str(p) for p in ro or ()],
        env=env or [],
        deny=[str(p) for p in deny or ()],
        memory=memory,
        pids=pids,
        cpus=cpus,
        timeout=timeout,
        allow_domain=allow_domain or [],
        deny_domain=deny_domain or [],
        audit_log=str(audit_log) if audit_log is not None else None,
    )
    raise typer.Exit(run(args))


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
