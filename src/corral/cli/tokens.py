"""``corral tokens``: make, list and revoke the API tokens of ``corral serve``, in the local store.

``create`` prints the token alone on stdout (``TOKEN=$(corral tokens create --scope jobs:read)``),
once: the store keeps only its hash. ``list`` never shows a token's value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from corral.api.tokens import TokenStore

__all__ = ["describe", "tokens_app"]

tokens_app = typer.Typer(
    no_args_is_help=True, help="Make, list and revoke API tokens for corral serve (Authorization: Bearer)."
)


@contextmanager
def _tokens() -> Iterator[TokenStore]:
    from corral.api.tokens import TokenStore
    from corral.jobs.store import open_store
    from corral.settings import get_settings

    store = open_store(get_settings())
    try:
        yield TokenStore.of(store)
    finally:
        store.close()


_TIMES = (
    ("created", "created_at"),
    ("expires", "expires_at"),
    ("revoked", "revoked_at"),
    ("last used", "last_used_at"),
)


def describe(token: dict[str, Any]) -> str:
    """One line of ``corral tokens list``: id, status, scopes, name, and the times that are set."""
    times = "; ".join(f"{label} {token[key]}" for label, key in _TIMES if token[key] is not None)
    scopes = ",".join(token["scopes"])
    return f"{token['id']}  {token['status']:<8} {scopes:<21} {token['name'] or '-'}  ({times})"


@tokens_app.command("create")
def create(
    scope: Annotated[
        list[str],
        typer.Option("--scope", help="jobs:read, jobs:write or admin (repeatable; admin implies the others)."),
    ],
    name: Annotated[str, typer.Option(help="A name to recognise the token by, e.g. the client that uses it.")] = "",
    expires: Annotated[
        Optional[str], typer.Option(help="How long the token lives, e.g. 12h, 30d or 2w (default: until revoked).")
    ] = None,
) -> None:
    """Make an API token and print it, once, on stdout (the store keeps only its hash)."""
    from corral.api.tokens import parse_expires

    expires_in = None if expires is None else parse_expires(expires)
    with _tokens() as tokens:
        token, value = tokens.create(scope, name=name, expires_in=expires_in)
    until = token.to_dict()["expires_at"] or "revoked"
    typer.echo(
        f"Created API token {token.id} ({', '.join(token.scopes)}; valid until {until}). "
        "It is shown this once: store it now.",
        err=True,
    )
    typer.echo(value.reveal())


@tokens_app.command("list")
def list_(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the tokens with their scopes and status (never their values)."""
    with _tokens() as tokens:
        found = [token.to_dict() for token in tokens.list()]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        typer.echo("no API tokens: corral serve needs none on loopback; `corral tokens create --scope ...` makes one")
    for token in found:
        typer.echo(describe(token))


@tokens_app.command("revoke")
def revoke(token_id: Annotated[str, typer.Argument(help="The token's id (from corral tokens list).")]) -> None:
    """Revoke a token: corral serve refuses it from the next request on."""
    with _tokens() as tokens:
        token = tokens.revoke(token_id)
    typer.echo(f"revoked API token {token.id} at {token.to_dict()['revoked_at']}")
