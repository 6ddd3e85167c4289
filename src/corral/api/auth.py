"""Who may call which route: API tokens with scopes (``Authorization: Bearer``), or the runner secret.

Every route that acts is in ``ROUTE_SCOPES`` with the scope it needs: ``jobs:read`` reads,
``jobs:write`` submits, cancels and steers jobs, ``admin`` drains and manages tokens. A request
passes when it carries an active token with that scope (``admin`` implies every scope) or the
runner secret in ``X-Runner-Secret`` (which acts as ``admin``). With no secret set and no token
ever made, every route is open, and ``corral serve`` listens on loopback only.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Header, HTTPException, Request

if TYPE_CHECKING:
    from corral.api.tokens import ApiToken, Scope

__all__ = [
    "OPEN_ROUTES",
    "ROUTE_SCOPES",
    "AuthRequired",
    "Refusal",
    "SecretRequired",
    "check_secret",
    "decide",
    "require_auth",
    "require_secret",
    "route_scope",
]

HEADER = "X-Runner-Secret"

ROUTE_SCOPES: Mapping[tuple[str, str], Scope] = {
    ("POST", "/execute"): "jobs:write",
    ("GET", "/oauth/status"): "jobs:read",
    ("GET", "/metrics"): "jobs:read",
    ("POST", "/v1/jobs"): "jobs:write",
    ("GET", "/v1/jobs"): "jobs:read",
    ("GET", "/v1/jobs/{job_id}"): "jobs:read",
    ("GET", "/v1/jobs/{job_id}/events"): "jobs:read",
    ("POST", "/v1/jobs/{job_id}/cancel"): "jobs:write",
    ("POST", "/v1/jobs/{job_id}/messages"): "jobs:write",
    ("PATCH", "/v1/jobs/{job_id}/egress"): "jobs:write",
    ("POST", "/admin/drain"): "admin",
    ("GET", "/v1/tokens"): "admin",
    ("POST", "/v1/tokens"): "admin",
    ("DELETE", "/v1/tokens/{token_id}"): "admin",
}
"""The scope each guarded route needs, by method and path template; a guarded route missing here needs admin."""

OPEN_ROUTES = frozenset({"/health", "/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
"""The routes anyone may call: the health checks and the OpenAPI pages."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a request is refused: 401 (no usable credential) or 403 (a token without the scope)."""

    status: int
    message: str


def _pattern(template: str) -> re.Pattern[str]:
    """``/v1/jobs/{job_id}`` as a regex that matches ``/v1/jobs/<one segment>``."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join("[^/]+" if part.startswith("{") else re.escape(part) for part in parts))


_PATTERNS = [(method, template, _pattern(template)) for method, template in ROUTE_SCOPES]


def route_scope(method: str, path: str) -> tuple[str, Scope]:
    """The template of the guarded route a request for ``method path`` reaches, and the scope it needs.

    A path that matches no entry needs ``admin`` (closed by default).
    """
    for entry_method, template, pattern in _PATTERNS:
        if entry_method == method.upper() and pattern.fullmatch(path):
            return template, ROUTE_SCOPES[(entry_method, template)]
    return path, "admin"


def check_secret(expected: str, given: str | None) -> str | None:
    """Why ``given`` is refused as the runner secret ``expected`` (a sentence), or ``None`` when it is accepted.

    With no secret configured everything is accepted; otherwise the comparison is in constant time.
    """
    if not expected:
        return None
    if given is None:
        return f"This route needs the runner secret in the {HEADER} header; send the value of CORRAL_RUNNER_SECRET."
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return f"The {HEADER} header does not match the runner secret; send the value of CORRAL_RUNNER_SECRET."
    return None


def _stamp(value: datetime | None) -> str:
    return "" if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def decide(
    needed: Scope,
    *,
    what: str,
    secret: str,
    given_secret: str | None,
    bearer: str | None,
    token: ApiToken | None,
    tokens_configured: bool,
    now: datetime,
) -> Refusal | None:
    """Whether a request for ``what`` (``METHOD /path``) that needs ``needed`` passes; the refusal if not.

    ``bearer`` is the token sent (or ``None``), ``token`` what the store found for it (or ``None``).
    """
    if not secret and not tokens_configured:
        return None  # nothing is configured: open, on loopback only
    make = f"`corral tokens create --scope {needed}` makes one"
    if given_secret is not None and secret:
        problem = check_secret(secret, given_secret)
        return None if problem is None else Refusal(401, problem)
    if bearer is None:
        also = f", or the runner secret in the {HEADER} header" if secret else ""
        return Refusal(401, f"{what} needs an API token with the scope {needed} (Authorization: Bearer){also}; {make}.")
    if token is None:
        return Refusal(401, f"The bearer token is not an API token of this server; check it, or {make}.")
    status = token.status(now)
    if status == "revoked":
        return Refusal(401, f"The API token {token.id} was revoked at {_stamp(token.revoked_at)}; {make}.")
    if status == "expired":
        return Refusal(401, f"The API token {token.id} expired at {_stamp(token.expires_at)}; {make}.")
    if not token.allows(needed):
        scopes = ", ".join(token.scopes)
        return Refusal(403, f"The API token {token.id} has the scopes {scopes}, but {what} needs {needed}; {make}.")
    return None


def _bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header; an empty string for any other scheme (never a match)."""
    if authorization is None:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def require_auth(
    request: Request,
    x_runner_secret: Annotated[str | None, Header(alias=HEADER)] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """The dependency of every guarded route: 401 or 403 before the route runs (nothing is stored)."""
    from corral.jobs.models import utc_now

    service = request.app.state.service
    path, needed = route_scope(request.method, request.url.path)
    bearer = _bearer(authorization)
    tokens = service.tokens
    token = tokens.find(bearer) if bearer else None
    now = utc_now()
    refusal = decide(
        needed,
        what=f"{request.method} {path}",
        secret=service.settings.runner_secret,
        given_secret=x_runner_secret,
        bearer=bearer,
        token=token,
        tokens_configured=tokens.configured(),
        now=now,
    )
    if refusal is not None:
        headers = {"WWW-Authenticate": "Bearer"} if refusal.status == 401 else None
        raise HTTPException(status_code=refusal.status, detail=refusal.message, headers=headers)
    if token is not None:
        tokens.touch(token, now)


AuthRequired = Depends(require_auth)
"""Add to a route's ``dependencies``: it then needs the scope ``ROUTE_SCOPES`` gives it."""

require_secret = require_auth
SecretRequired = AuthRequired
"""The former name of ``AuthRequired`` (routes that needed the secret now need their scope)."""
