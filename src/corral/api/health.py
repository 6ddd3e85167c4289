"""Health: the seed's ``/health`` and ``/oauth/status``, Coder's ``/healthz``, ``/readyz``, and ``/admin/drain``."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from corral.api.app import Pool, error_body, service_of
from corral.api.auth import SecretRequired
from corral.api.models import Credential, Health, Healthz, OAuthStatus, Ready

__all__ = ["MIN_HOURS", "credential_report", "health", "not_ready", "router"]

router = APIRouter(tags=["health"])

MIN_HOURS = 2.0
"""A credential with fewer hours left than this makes ``/health`` say ``degraded``."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def credential_report(home: Path, environ: Mapping[str, str], now: datetime | None = None) -> dict[str, Any]:
    """``CredentialStore.status`` plus ``expired``; a credential file that cannot be read is reported, not raised."""
    from corral.errors import CorralError
    from corral.secrets import CredentialStore

    try:
        report = CredentialStore(home).status(environ, now)
    except CorralError as err:
        report = {"configured": False, "kind": None, "source": None, "expires_at": None, "hours_remaining": None}
        report["error"] = str(err)
    hours = report["hours_remaining"]
    report["expired"] = hours is not None and hours <= 0
    return report


def health(report: Mapping[str, Any], timestamp: str) -> Health:
    """The seed's health: ``degraded`` when the credential is missing, expired, or has under ``MIN_HOURS`` left."""
    hours = report["hours_remaining"]
    healthy = report["configured"] and not report["expired"] and (hours is None or hours >= MIN_HOURS)
    oauth = Credential(
        configured=report["configured"],
        expired=report["expired"],
        expires_at=report["expires_at"],
        hours_remaining=hours,
    )
    return Health(status="healthy" if healthy else "degraded", timestamp=timestamp, oauth=oauth)


def not_ready(pool: Pool, home: Path, environ: Mapping[str, str]) -> list[str]:
    """Why this runner should get no new job now, one sentence each; empty when it is ready."""
    from corral.errors import CredentialsError
    from corral.secrets import resolve_credential

    reasons = []
    if pool.draining:
        reasons.append("The runner is draining and claims no new job.")
    if pool.active_sessions >= pool.capacity:
        reasons.append(f"The runner is at capacity ({pool.active_sessions} / {pool.capacity} sessions).")
    try:
        resolve_credential(home, environ)
    except CredentialsError as err:
        reasons.append(f"claude-code jobs cannot run: {err}")
    return reasons


@router.get("/health")
def get_health(request: Request) -> Health:
    """The seed's health check (no secret needed): the credential's state, never its value."""
    service = service_of(request)
    return health(credential_report(service.settings.home, service.environ), _now())


@router.get("/oauth/status", dependencies=[SecretRequired])
def oauth_status(request: Request) -> OAuthStatus:
    """The credential's state with its kind and where it comes from (never its value)."""
    service = service_of(request)
    report = credential_report(service.settings.home, service.environ)
    return OAuthStatus.model_validate({name: report.get(name) for name in OAuthStatus.model_fields})


@router.get("/healthz")
async def healthz_route(request: Request) -> Healthz:
    """The runner's health as Coder's metadata scripts read it (no secret needed); answered on the loop."""
    return healthz(request)


def healthz(request: Request) -> Healthz:
    """The body of ``/healthz``: reads the pool's counters only."""
    from corral import __version__

    pool = service_of(request).pool
    draining = pool.draining
    return Healthz(
        status="draining" if draining else "ok",
        runner_id=pool.runner_id,
        version=__version__,
        capacity=pool.capacity,
        active_sessions=pool.active_sessions,
        draining=draining,
        last_poll_age_ms=pool.last_poll_age_ms,
    )


@router.get("/readyz", responses={503: {"description": "Draining, at capacity, or no usable credential."}})
def readyz(request: Request) -> Any:
    """200 when the runner can take a job now; 503 with the reasons when it cannot."""
    service = service_of(request)
    reasons = not_ready(service.pool, service.settings.home, service.environ)
    if reasons:
        return JSONResponse(error_body("not_ready", " ".join(reasons)), status_code=503)
    return Ready(status="ready")


@router.post("/admin/drain", status_code=202, dependencies=[SecretRequired])
def drain(request: Request) -> Healthz:
    """Stop claiming jobs, let running ones finish (then interrupt them); ``corral serve`` then exits."""
    service_of(request).on_drain()
    return healthz(request)
