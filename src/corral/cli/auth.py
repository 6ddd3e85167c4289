"""``corral auth``: set, adopt, show and forget the Claude credential and the git token.

Secret values come from stdin (or a prompt that does not echo), never from the command line,
where ``ps`` and shell history would show them; nothing here ever prints one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TextIO

import typer

from corral.errors import CredentialsError, UsageError

if TYPE_CHECKING:
    from corral.secrets import CredentialStore

__all__ = ["auth_app", "describe", "read_secret"]

auth_app = typer.Typer(
    no_args_is_help=True, help="Set, adopt, show or forget the Claude credential and the git token of jobs."
)

SECRET_LIMIT = 64 << 10
"""Characters read from stdin at most: a token is a few hundred."""
TAKES_EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}
"""Lets a command refuse a token given as an argument without click echoing it back in its error."""
KIND_HELP = "oauth_token or api_key; by default the token's prefix says (sk-ant-oat... or sk-ant-api...)."
LABELS = {"oauth_token": "OAuth token", "api_key": "API key"}


def _store() -> CredentialStore:
    from corral.secrets import CredentialStore
    from corral.settings import get_settings

    return CredentialStore(get_settings().home)


def _no_arguments(ctx: typer.Context) -> None:
    if ctx.args:
        msg = (
            f"`corral auth {ctx.info_name}` takes no secret on the command line, where ps and shell history show it; "
            "pipe it into stdin, or run the command in a terminal and paste it at the prompt."
        )
        raise UsageError(msg)


def read_secret(prompt: str, stream: TextIO | None = None) -> str:
    """A secret typed at a terminal without echo (getpass), or everything piped into ``stream`` (stdin)."""
    stream = sys.stdin if stream is None else stream
    if stream.isatty():
        import getpass

        value = getpass.getpass(prompt)
    else:
        value = stream.read(SECRET_LIMIT + 1)
    if len(value) > SECRET_LIMIT:
        msg = f"The input is longer than {SECRET_LIMIT} characters, which no token is; give the token alone."
        raise UsageError(msg)
    if not value.strip():
        msg = "No token was given on stdin; pipe it in, or run the command in a terminal and paste it at the prompt."
        raise UsageError(msg)
    return value


def describe(report: Mapping[str, Any]) -> list[str]:
    """The lines ``corral auth status`` prints for a ``CredentialStore.status()`` report."""
    if report["kind"] is None:
        lines = ["credential: none"]
    else:
        lines = [f"credential: {LABELS[report['kind']]} ({report['kind']}), from {report['source']}"]
    hours = report["hours_remaining"]
    if hours is not None:
        when = f"in {hours:.1f} hours" if hours > 0 else f"{-hours:.1f} hours ago"
        lines.append(f"expires:    {report['expires_at']} ({when})")
    git = {None: "none", "stored": "stored"}.get(report["git_token_source"], f"from {report['git_token_source']}")
    lines.append(f"git token:  {git}")
    return lines


@auth_app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as one JSON object.")] = False,
) -> None:
    """Show the Claude credential jobs use (kind, source, expiry) and the git token's source; exit 11 if none works."""
    report = _store().status(os.environ)
    if as_json:
        import json

        typer.echo(json.dumps(report))
    else:
        for line in describe(report):
            typer.echo(line)
    if not report["configured"]:
        raise CredentialsError(report["error"])


def _set_token(ctx: typer.Context, kind: str | None) -> None:
    _no_arguments(ctx)
    store = _store()
    credential = store.set_token(read_secret("Claude token (not shown): "), kind)
    typer.echo(f"Stored the {LABELS[credential.kind]} in {store.claude_file}; every job uses it from now on.")


@auth_app.command("set-token", context_settings=TAKES_EXTRA)
def set_token(
    ctx: typer.Context, kind: Annotated[Optional[str], typer.Option("--kind", help=KIND_HELP)] = None
) -> None:
    """Store a Claude token read from stdin (at a terminal: typed, not echoed); it replaces an adopted login."""
    _set_token(ctx, kind)


@auth_app.command("login", context_settings=TAKES_EXTRA)
def login(ctx: typer.Context, kind: Annotated[Optional[str], typer.Option("--kind", help=KIND_HELP)] = None) -> None:
    """Like set-token, with a hint: `claude setup-token` prints such a token (valid for a year)."""
    typer.echo("Paste the token that `claude setup-token` prints (run it wherever a browser is at hand).", err=True)
    _set_token(ctx, kind)


@auth_app.command("import-claude-dir")
def import_claude_dir(
    directory: Annotated[
        Path,
        typer.Argument(help="The Claude Code config directory (~/.claude or CLAUDE_CONFIG_DIR).", show_default=False),
    ],
) -> None:
    """Adopt an existing Claude Code login by reference: corral rereads its token for every job, never refreshes it."""
    credential = _store().import_claude_dir(directory)
    where = credential.source.removeprefix("claude login at ")
    typer.echo(f"Adopted the Claude Code login in {where}; claude on this host must keep it fresh.")
    hours = credential.hours_remaining()
    if credential.expires_at is not None and hours is not None:
        when = credential.expires_at.isoformat(timespec="seconds")
        if hours > 0:
            typer.echo(f"Its access token expires at {when} (in {hours:.1f} hours).")
        else:
            typer.echo(f"Warning: its access token expired at {when}; run claude with it so it refreshes.", err=True)


@auth_app.command("set-git-token", context_settings=TAKES_EXTRA)
def set_git_token(ctx: typer.Context) -> None:
    """Store the bot token that pushes job branches, read from stdin like set-token."""
    _no_arguments(ctx)
    store = _store()
    store.set_git_token(read_secret("Git token (not shown): "))
    typer.echo(f"Stored the git token in {store.git_file}; job branches are pushed with it.")


@auth_app.command("logout")
def logout() -> None:
    """Forget the stored token or adopted login and the git token (an adopted login's own files stay)."""
    from corral.secrets import ENV_NAMES, GIT_TOKEN_ENV

    store = _store()
    try:
        adopted = store.adopted_dir()
    except CredentialsError:
        adopted = None
    store.clear()
    typer.echo(f"Removed the stored credentials from {store.directory}.")
    if adopted is not None:
        typer.echo(f"The Claude Code login in {adopted} itself is untouched; corral no longer reads it.")
    still = [name for name in (*ENV_NAMES.values(), GIT_TOKEN_ENV) if os.environ.get(name, "").strip()]
    if still:
        typer.echo(f"Still used from the environment: {', '.join(still)}.")
