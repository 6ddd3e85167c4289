"""The application factory: routes, the one error shape, and a lifespan that owns the pool and the store.

``create_app(settings)`` opens the store and starts a ``RunnerPool`` when the lifespan starts,
and stops the pool and closes the store (the one it opened) when it ends: nothing is started at
import or at build time. Every error is answered as ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from corral.errors import CorralError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from corral.api.tokens import TokenStore
    from corral.jobs.models import Job, JobOptions
    from corral.jobs.store import JobStore
    from corral.settings import Settings

__all__ = ["DEFAULT_DRAIN_TIMEOUT", "Pool", "Service", "create_app", "error_body", "service_of"]

DEFAULT_DRAIN_TIMEOUT = 30.0
"""Seconds running jobs get to finish when a drain is asked for (``--drain-timeout``)."""

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}


class Pool(Protocol):
    """What the API uses of ``corral.runner.pool.RunnerPool``."""

    runner_id: str
    capacity: int

    @property
    def active_sessions(self) -> int: ...
    @property
    def draining(self) -> bool: ...
    @property
    def last_poll_age_ms(self) -> int: ...
    def start(self) -> None: ...
    def submit(
        self,
        prompt: str,
        repo: str,
        *,
        ref: str | None = None,
        agent: str = "claude-code",
        options: JobOptions | None = None,
        idempotency_key: str | None = None,
    ) -> Job: ...
    def follow_up(self, job_id: str, prompt: str) -> Job: ...
    def cancel(self, job_id: str) -> Job: ...
    def wait(self, job_id: str, timeout: float | None = None) -> Job: ...
    def set_egress(self, job_id: str, allow: Sequence[str]) -> Job: ...
    def drain(self, timeout: float) -> None: ...
    def stop(self) -> None: ...


class Service:
    """What the routes share (``app.state.service``): settings, store, tokens, pool, and the drain switch."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        pool: Pool,
        environ: Mapping[str, str],
        on_drain: Callable[[], None],
        tokens: TokenStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.environ = environ
        self.on_drain = on_drain
        self.tokens = tokens
        self.stopping = threading.Event()
        """Set when the lifespan ends: live event streams stop following."""


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one shape of every error the API answers."""
    return {"error": {"code": code, "message": message}}


def _validation_message(err: RequestValidationError) -> str:
    """The first problem of a request that failed validation, as a sentence naming the field."""
    problems = []
    for item in err.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "the body"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    first = problems[0] if problems else "the request is invalid"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"The request is invalid at {first}{more}; fix it and send it again (see /openapi.json)."


def _install_errors(app: FastAPI) -> None:
    async def corral_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CorralError)
        return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"There is no route {request.url.path}; see /openapi.json for the routes."
        elif exc.status_code == 405:
            message = f"{request.url.path} does not answer {request.method}; see /openapi.json for its methods."
        else:
            message = str(exc.detail)
        code = _CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse(error_body("invalid_request", _validation_message(exc)), status_code=422)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        message = f"The server failed on {request.method} {request.url.path} ({type(exc).__name__}); see its log."
        return JSONResponse(error_body("internal_error", message), status_code=500)

    app.add_exception_handler(CorralError, corral_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, crashed)


def _drain_in_background(pool: Pool, timeout: float) -> Callable[[], None]:
    def drain() -> None:
        threading.Thread(target=pool.drain, args=(timeout,), name="corral-drain", daemon=True).start()

    return drain


def create_app(
    settings: Settings,
    *,
    pool: Pool | None = None,
    store: JobStore | None = None,
    environ: Mapping[str, str] | None = None,
    on_drain: Callable[[], None] | None = None,
) -> FastAPI:
    """The application of ``corral serve``.

    Without ``store`` the lifespan opens the one the settings name (and closes it); without
    ``pool`` it builds a ``RunnerPool`` of ``settings.capacity``. The lifespan starts the pool
    and stops it. ``on_drain`` is what ``POST /admin/drain`` calls (``corral serve`` passes one that
    also ends the server); by default it drains the pool in a thread.
    """
    from corral import __version__
    from corral.api import health, jobs, metrics, seed, tokens
    from corral.jobs.models import utc_now

    env = os.environ if environ is None else environ

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from corral.api.tokens import TokenStore
        from corral.jobs.store import open_store

        started = utc_now()
        owned = store is None
        opened = open_store(settings) if store is None else store
        try:
            if pool is None:
                from corral.runner.pool import RunnerPool

                running: Pool = RunnerPool(
                    settings,
                    opened,
                    capacity=settings.capacity,
                    environ=env,
                    requeue_interrupted=settings.requeue_interrupted,
                )
            else:
                running = pool
            drain = on_drain or _drain_in_background(running, DEFAULT_DRAIN_TIMEOUT)
            service = Service(settings, opened, running, env, drain, TokenStore.of(opened))
            app.state.service = service
            app.state.metrics = metrics.registry(service, started)
            running.start()
            try:
                yield
            finally:
                service.stopping.set()
                running.stop()
        finally:
            if owned:
                opened.close()

    app = FastAPI(
        title="corral",
        version=__version__,
        summary="Runs AI coding agents in sandboxes: the seed runner contract and the jobs API.",
        lifespan=lifespan,
        responses={
            401: {"model": _error_model(), "description": "No valid API token or runner secret."},
            403: {"model": _error_model(), "description": "The API token lacks the scope the route needs."},
            422: {"model": _error_model(), "description": "The request is invalid."},
        },
    )
    _install_errors(app)
    app.include_router(seed.router)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(tokens.router)
    app.include_router(metrics.router)
    _check_scopes(app)
    return app


def _check_scopes(app: FastAPI) -> None:
    """Every route is open or has its scope in ``ROUTE_SCOPES``, and every entry is a route: the table cannot drift."""
    from corral.api.auth import OPEN_ROUTES, ROUTE_SCOPES

    routes = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    for method, path in sorted(routes - set(ROUTE_SCOPES)):
        if path not in OPEN_ROUTES:
            msg = f"The route {method} {path} is neither open nor in ROUTE_SCOPES; give it its scope in auth.py."
            raise RuntimeError(msg)
    for method, path in sorted(set(ROUTE_SCOPES) - routes):
        msg = f"ROUTE_SCOPES names {method} {path}, which is not a route; remove it from auth.py."
        raise RuntimeError(msg)


def _error_model() -> type[Any]:
    from corral.api.models import ErrorResponse

    return ErrorResponse


def service_of(request: Request) -> Service:
    """The service of the application that answers ``request``."""
    service: Service = request.app.state.service
    return service
