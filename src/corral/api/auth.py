"""The runner secret: when ``CORRAL_RUNNER_SECRET`` is set, routes that act need it in ``X-Runner-Secret``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

__all__ = ["SecretRequired", "check_secret", "require_secret"]

HEADER = "X-Runner-Secret"


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


def require_secret(request: Request, x_runner_secret: Annotated[str | None, Header(alias=HEADER)] = None) -> None:
    """The dependency of every route that needs the secret: 401 before the route runs (nothing is stored)."""
    problem = check_secret(request.app.state.service.settings.runner_secret, x_runner_secret)
    if problem is not None:
        raise HTTPException(status_code=401, detail=problem)


SecretRequired = Depends(require_secret)
"""Add to a route's ``dependencies`` to make it need the secret."""
