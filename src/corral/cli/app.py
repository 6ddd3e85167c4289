"""The typer application: every command, its options and help. Commands import what they use lazily."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from corral.cli.auth import auth_app
from corral.cli.tokens import tokens_app
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
jobs_app = typer.Typer(no_args_is_help=True, help="Read and cancel jobs: the local store, or CORRAL_URL.")
app.add_typer(jobs_app, name="jobs")
app.add_typer(auth_app, name="auth")
app.add_typer(tokens_app, name="tokens")


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


@app.command("run")
def run_(
    prompt: Annotated[str, typer.Argument(help="What the agent should do.", show_default=False)],
    repo: Annotated[str, typer.Option("--repo", help="The git repository to work on (URL).", show_default=False)],
    ref: Annotated[
        Optional[str], typer.Option(help="Branch, tag or commit to start from (default: the remote's HEAD).")
    ] = None,
    push: Annotated[
        bool, typer.Option("--push", help="Push the job branch with the bot token when the job succeeds.")
    ] = False,
    timeout: Annotated[
        Optional[str], typer.Option(help="Wall-clock limit of the agent, e.g. 30m (default: the setting job_timeout).")
    ] = None,
    allow_domain: Annotated[
        Optional[list[str]],
        typer.Option("--allow-domain", help="Host the agent may reach besides the API gateway (repeatable)."),
    ] = None,
    model: Annotated[Optional[str], typer.Option(help="The model the agent uses.")] = None,
    max_turns: Annotated[
        Optional[int], typer.Option("--max-turns", help="Stop the agent after this many turns.")
    ] = None,
    max_budget: Annotated[
        Optional[float], typer.Option("--max-budget-usd", help="Stop the agent past this estimated cost.")
    ] = None,
    env: Annotated[
        Optional[list[str]],
        typer.Option("--env", "-e", help="NAME=VALUE for the agent's environment (repeatable); corral's own win."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the stored job as JSON instead of the summary.")
    ] = False,
) -> None:
    """Run the agent on PROMPT in a fresh checkout of the repository, in the sandbox; store and report the job.

    Exits 0 when the job succeeded, 1 when it failed, 124 when it timed out, 130 when cancelled.
    """
    from corral.cli.jobs import open_store, run_job
    from corral.jobs.models import JobOptions
    from corral.runner.job import JobRunner
    from corral.settings import get_settings
    from corral.units import parse_duration

    options = JobOptions(
        model=model,
        max_turns=max_turns,
        max_budget_usd=max_budget,
        timeout=parse_duration(timeout, what="--timeout") if timeout is not None else None,
        allow_domains=tuple(allow_domain or ()),
        push=push,
        env=tuple(env or ()),
    )
    runner = JobRunner(get_settings(), open_store())
    job = runner.submit(prompt, repo, ref=ref, options=options)
    raise typer.Exit(run_job(runner, job, as_json=as_json))


@app.command()
def serve(
    host: Annotated[
        str,
        typer.Option(help="Address to listen on; other than loopback only with CORRAL_RUNNER_SECRET or an API token."),
    ] = ("127.0.0.1"),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    capacity: Annotated[
        Optional[str], typer.Option(help="Jobs the embedded runner runs at once (default: the setting capacity, 4).")
    ] = None,
    drain_timeout: Annotated[
        str, typer.Option("--drain-timeout", help="On SIGTERM, how long running jobs get to finish, e.g. 30s or 5m.")
    ] = "30s",
    on_exit: Annotated[
        Optional[str],
        typer.Option("--on-exit", help="Command to run after draining (split like a shell, run without one)."),
    ] = None,
) -> None:
    """Serve the HTTP API (the seed contract, /v1 jobs, /healthz) with an embedded runner.

    SIGTERM drains: no new job is claimed, running ones get --drain-timeout to finish, then are
    interrupted; --on-exit runs, and corral exits 0.
    """
    import dataclasses

    from corral.cli.serve import parse_capacity, parse_drain_timeout
    from corral.cli.serve import serve as serve_
    from corral.settings import get_settings

    settings = get_settings()
    settings = dataclasses.replace(
        settings, capacity=parse_capacity(settings.capacity if capacity is None else capacity)
    )
    code = serve_(settings, host=host, port=port, drain_timeout=parse_drain_timeout(drain_timeout), on_exit=on_exit)
    raise typer.Exit(code)


@jobs_app.command("list")
def jobs_list(
    state: Annotated[
        Optional[str], typer.Option(help="Only jobs in this state (queued, running, succeeded...).")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the jobs, newest first."""
    from corral.cli.jobs import job_source, list_jobs
    from corral.settings import get_settings

    source = job_source(get_settings())
    try:
        list_jobs(source, state=state, limit=limit, as_json=as_json)
    finally:
        source.close()


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)]) -> None:
    """Print one job, with its result, as JSON."""
    from corral.cli.jobs import job_source, show_job
    from corral.settings import get_settings

    source = job_source(get_settings())
    try:
        show_job(source, job_id)
    finally:
        source.close()


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)],
    raw: Annotated[
        bool, typer.Option("--raw", help="Only the agent's own output lines, verbatim (stream-json).")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events as they come, until the job ends.")
    ] = False,
) -> None:
    """Print the job's event log."""
    from corral.cli.jobs import job_source, print_events
    from corral.settings import get_settings

    source = job_source(get_settings())
    try:
        print_events(source.follow(job_id) if follow else source.events(job_id), raw=raw)
    finally:
        source.close()


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The job's id.", show_default=False)]) -> None:
    """Cancel a job; without CORRAL_URL only a queued one (a running one belongs to the process that runs it)."""
    from corral.cli.jobs import job_source
    from corral.settings import get_settings

    source = job_source(get_settings())
    try:
        job = source.cancel(job_id)
    finally:
        source.close()
    typer.echo(f"{job.state.value} job {job.id}")


@app.command()
def start(
    agent: Annotated[
        str, typer.Argument(help="The agent, as named in corral.toml ([agents.NAME]).", show_default=False)
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan and stop; start and write nothing.")
    ] = False,
    cwd: Annotated[
        bool,
        typer.Option(
            "--cwd", help="Work on a copy of the current directory (.git included); offer to keep the changes."
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask; with --cwd keep the changes as a patch.")
    ] = False,
    remote_control: Annotated[
        bool,
        typer.Option(
            "--remote-control",
            help=(
                "Let claude.ai and the Claude apps control the session: your adopted claude.ai login is copied "
                "into the sandbox (not the gateway), and a refreshed login is carried back at the end."
            ),
        ),
    ] = False,
    manifest: Annotated[
        Optional[Path], typer.Option("--manifest", help="The manifest (default: corral.toml here or in a parent).")
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Pin the session's name (default: AGENT, AGENT-2...).")
    ] = None,
) -> None:
    """Start AGENT from corral.toml as an interactive Claude Code session in its sandbox; remove it all at the end."""
    from corral.cli.start import StartArgs
    from corral.cli.start import start as start_

    raise typer.Exit(start_(StartArgs(agent, manifest, dry_run, cwd, yes, remote_control, name)))


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
