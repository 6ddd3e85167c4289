"""API tokens: scoped, expiring, revocable bearer tokens, stored as SHA-256 hashes; and their admin routes.

A token is ``corral_`` and 32 random bytes (URL-safe base64). It is shown once, when it is
made; the store keeps only its SHA-256, so a leaked database gives no usable token. A scope is
``jobs:read``, ``jobs:write`` or ``admin`` (which implies the others). The token table lives in the
job store's database (``corral.jobs.sql.TokenRow``, migration ``0003``).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, insert, select, update

from corral.api.auth import AuthRequired
from corral.errors import NotFoundError, UsageError
from corral.jobs.models import utc_now
from corral.jobs.sql import TOKENS
from corral.secrets import Secret

if TYPE_CHECKING:
    from sqlalchemy.engine import Row

    from corral.jobs.store import JobStore

__all__ = [
    "PREFIX",
    "SCOPES",
    "ApiToken",
    "Scope",
    "TokenStore",
    "hash_token",
    "new_token_value",
    "parse_expires",
    "parse_scopes",
    "router",
]

Scope = Literal["jobs:read", "jobs:write", "admin"]
SCOPES: tuple[Scope, ...] = ("jobs:read", "jobs:write", "admin")
"""Every scope; ``admin`` implies the others."""

PREFIX = "corral_"
"""What every token starts with, so that secret scanners and people recognise one."""

TOUCH_INTERVAL = timedelta(seconds=60)
"""``last_used_at`` is written at most this often per token (a read is not a write on every request)."""

MAX_NAME = 200
_EXPIRES = re.compile(r"\s*(\d+)\s*([smhdw])\s*", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def new_token_value() -> str:
    """A fresh token: ``corral_`` and 32 random bytes, URL-safe."""
    return PREFIX + secrets.token_urlsafe(32)


def hash_token(value: str) -> str:
    """The SHA-256 of a token, in hex: what the store keeps and looks up."""
    return hashlib.sha256(value.encode()).hexdigest()


def parse_scopes(values: Iterable[str]) -> tuple[Scope, ...]:
    """The scopes given, checked, without repeats, in the order of ``SCOPES``; at least one."""
    given = [value.strip() for value in values]
    for value in given:
        if value not in SCOPES:
            msg = f"The scope {value!r} is unknown; choose jobs:read, jobs:write or admin."
            raise UsageError(msg)
    if not given:
        msg = "A token needs at least one scope; give --scope jobs:read, jobs:write or admin."
        raise UsageError(msg)
    return tuple(scope for scope in SCOPES if scope in given)


def parse_expires(text: str) -> timedelta:
    """How long a token lives: ``90m``, ``12h``, ``30d``, ``2w`` (a whole number and a unit)."""
    match = _EXPIRES.fullmatch(text)
    if match is None or int(match[1]) == 0:
        msg = f"The expiry {text!r} is not a positive duration; write it like 12h, 30d or 2w."
        raise UsageError(msg)
    return timedelta(**{_UNITS[match[2].lower()]: int(match[1])})


@dataclasses.dataclass(frozen=True)
class ApiToken:
    """One stored token, without its value (which is never stored)."""

    id: str
    name: str
    scopes: tuple[Scope, ...]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def status(self, now: datetime) -> Literal["active", "expired", "revoked"]:
        """``revoked`` wins over ``expired``; only an ``active`` token is accepted."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def allows(self, scope: Scope) -> bool:
        """Whether the token carries ``scope`` (``admin`` carries every scope)."""
        return scope in self.scopes or "admin" in self.scopes

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")

        return {
            "id": self.id,
            "name": self.name,
            "scopes": list(self.scopes),
            "status": self.status(now or utc_now()),
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "revoked_at": iso(self.revoked_at),
            "last_used_at": iso(self.last_used_at),
        }


_ANY_TOKEN = select(TOKENS.c.id).limit(1)
"""Built once: SQLAlchemy remembers the cache key of a statement object it has seen."""


def _token(row: Row[Any]) -> ApiToken:
    scopes = tuple(scope for scope in SCOPES if scope in row.scopes.split())
    return ApiToken(row.id, row.name, scopes, row.created_at, row.expires_at, row.revoked_at, row.last_used_at)


class TokenStore:
    """The API tokens in the job store's database; safe to share between threads."""

    def __init__(self, engine: Engine, writer: Engine | None = None) -> None:
        self._engine = engine
        self._writer = writer or engine
        self._configured = False

    @classmethod
    def of(cls, store: JobStore) -> TokenStore:
        """The tokens that live beside the jobs of ``store`` (it owns the connections: close it, not this)."""
        from corral.jobs.sql import SqlJobStore

        if not isinstance(store, SqlJobStore):
            msg = f"API tokens live in an SQL job store, and {type(store).__name__} is not one; use open_store()."
            raise UsageError(msg)
        return cls(store.engine, store.writer)

    def create(
        self, scopes: Iterable[str], *, name: str = "", expires_in: timedelta | None = None
    ) -> tuple[ApiToken, Secret]:
        """Store a new token and return it with its value: the only time the value is known."""
        if len(name) > MAX_NAME:
            msg = f"The token name is {len(name)} characters long; give one of at most {MAX_NAME}."
            raise UsageError(msg)
        now = utc_now()
        token = ApiToken(
            id=secrets.token_hex(8),
            name=name.strip(),
            scopes=parse_scopes(scopes),
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
        )
        value = new_token_value()
        row = {
            "id": token.id,
            "name": token.name,
            "scopes": " ".join(token.scopes),
            "token_hash": hash_token(value),
            "created_at": token.created_at,
            "expires_at": token.expires_at,
        }
        with self._writer.begin() as conn:
            conn.execute(insert(TOKENS).values(**row))
        return token, Secret(value)

    def list(self) -> builtins.list[ApiToken]:
        """Every token, revoked and expired ones included, oldest first."""
        with self._engine.connect() as conn:
            return [_token(row) for row in conn.execute(select(TOKENS).order_by(TOKENS.c.created_at, TOKENS.c.id))]

    def get(self, token_id: str) -> ApiToken:
        with self._engine.connect() as conn:
            row = conn.execute(select(TOKENS).where(TOKENS.c.id == token_id)).one_or_none()
        if row is None:
            msg = f"No API token has the id {token_id!r}; `corral tokens list` shows the tokens."
            raise NotFoundError(msg)
        return _token(row)

    def revoke(self, token_id: str) -> ApiToken:
        """Refuse the token from now on (the row stays, for the record); revoking twice changes nothing."""
        self.get(token_id)
        with self._writer.begin() as conn:
            query = update(TOKENS).where(TOKENS.c.id == token_id, TOKENS.c.revoked_at.is_(None))
            conn.execute(query.values(revoked_at=utc_now()))
        return self.get(token_id)

    def configured(self) -> bool:
        """Whether any token was ever made: then every route but the health checks needs auth.

        Revoked and expired tokens count, so revoking the last token never opens the server. No
        token is ever deleted, so once one is found the answer stays yes without asking again.
        """
        if not self._configured:
            with self._engine.connect() as conn:
                self._configured = conn.execute(_ANY_TOKEN).first() is not None
        return self._configured

    def find(self, value: str) -> ApiToken | None:
        """The stored token whose value is ``value`` (any status), or ``None``; hashes compared in constant time."""
        digest = hash_token(value)
        with self._engine.connect() as conn:
            row = conn.execute(select(TOKENS).where(TOKENS.c.token_hash == digest)).one_or_none()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return _token(row)

    def touch(self, token: ApiToken, now: datetime) -> None:
        """Record that ``token`` was used, at most once per ``TOUCH_INTERVAL``."""
        if token.last_used_at is not None and now - token.last_used_at < TOUCH_INTERVAL:
            return
        with self._writer.begin() as conn:
            conn.execute(update(TOKENS).where(TOKENS.c.id == token.id).values(last_used_at=now))


# -- the admin routes ------------------------------------------------------------------------------


class TokenRequest(BaseModel):
    """``POST /v1/tokens``: the scopes, a name, and how long the token lives (``30d``; forever without)."""

    model_config = ConfigDict(extra="forbid")

    scopes: Annotated[builtins.list[Scope], Field(min_length=1)]
    name: Annotated[str, Field(max_length=MAX_NAME)] = ""
    expires: str | None = Field(default=None, description="How long the token lives: 12h, 30d, 2w.")


router = APIRouter(prefix="/v1", tags=["tokens"])


def _tokens(request: Request) -> TokenStore:
    from corral.api.app import service_of

    return service_of(request).tokens


@router.get("/tokens", dependencies=[AuthRequired])
def list_tokens(request: Request) -> dict[str, Any]:
    """Every token with its scopes and status; never a token's value."""
    now = utc_now()
    return {"tokens": [token.to_dict(now) for token in _tokens(request).list()]}


@router.post("/tokens", status_code=201, dependencies=[AuthRequired])
def create_token(body: TokenRequest, request: Request) -> dict[str, Any]:
    """Make a token; the answer's ``token`` is its value, shown this once."""
    expires_in = None if body.expires is None else parse_expires(body.expires)
    token, value = _tokens(request).create(body.scopes, name=body.name, expires_in=expires_in)
    return {**token.to_dict(), "token": value.reveal()}


@router.delete("/tokens/{token_id}", dependencies=[AuthRequired])
def revoke_token(token_id: str, request: Request) -> dict[str, Any]:
    """Revoke a token: it is refused from now on."""
    return _tokens(request).revoke(token_id).to_dict()
