"""The jobs API under ``/v1/``: submit, list, show, follow the event log (SSE), cancel, follow up, egress."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from corral.api.app import Service, service_of
from corral.api.auth import SecretRequired
from corral.api.models import EgressRequest, JobList, JobRequest, JobView, MessageRequest
from corral.errors import ConflictError, UsageError

if TYPE_CHECKING:
    from corral.jobs.models import Event, Job, JobOptions

__all__ = ["POLL_INTERVAL", "job_options", "router", "sse_frame"]

router = APIRouter(prefix="/v1", tags=["jobs"], dependencies=[SecretRequired])

POLL_INTERVAL = 0.2
"""Seconds between looks at the store while an event stream follows a live job."""
MAX_LIMIT = 500
MAX_OFFSET = 1_000_000_000
"""Past any store's jobs, and within a database integer."""


def view(job: Job) -> JobView:
    return JobView.model_validate(job.to_dict())


def job_options(body: JobRequest) -> JobOptions:
    """The ``JobOptions`` of a request (``timeout`` as seconds or a duration such as ``30m``)."""
    from corral.jobs.models import JobOptions
    from corral.units import parse_duration

    timeout = body.timeout
    if isinstance(timeout, str):
        timeout = parse_duration(timeout, what="timeout")
    values: dict[str, Any] = {
        "model": body.model,
        "max_turns": body.max_turns,
        "max_budget_usd": body.max_budget_usd,
        "timeout": timeout,
        "allow_domains": tuple(body.allow_domains),
        "push": body.push,
        "env": tuple(body.env),
    }
    if body.command:
        values["command"] = tuple(body.command)
    try:
        return JobOptions(**values)
    except TypeError:
        msg = "This corral has no generic agent yet, so a job cannot carry a command; leave out command."
        raise UsageError(msg) from None


def sse_frame(event: Event) -> str:
    """One server-sent event: ``id`` the seq, ``event`` the kind, ``data`` the data (one ``data:`` per line)."""
    lines = event.data.split("\n") if event.data else [""]
    data = "".join(f"data: {line.removesuffix(chr(13))}\n" for line in lines)
    return f"id: {event.seq}\nevent: {event.kind}\n{data}\n"


def _after(last_event_id: str | None, after: int | None) -> int:
    if after is not None:
        return after
    if last_event_id is None or not last_event_id.strip():
        return 0
    try:
        seq = int(last_event_id)
    except ValueError:
        seq = -1
    if seq < 0:
        msg = f"The Last-Event-ID {last_event_id!r} is not an event number; send the id: of the last event you read."
        raise UsageError(msg)
    return seq


async def _stream(service: Service, job_id: str, after: int, follow: bool) -> AsyncIterator[str]:
    """The job's events after ``after``, then, with ``follow``, new ones as they are appended until the job ends."""
    from corral.jobs.models import TERMINAL

    store = service.store
    while True:
        job = await anyio.to_thread.run_sync(store.get, job_id)
        events = await anyio.to_thread.run_sync(functools.partial(store.events, job_id, after=after))
        for event in events:
            after = event.seq
            yield sse_frame(event)
        if events:
            continue
        if not follow or job.state in TERMINAL or service.stopping.is_set():
            return
        await anyio.sleep(POLL_INTERVAL)


@router.post("/jobs", status_code=202)
def submit(body: JobRequest, request: Request, idempotency_key: Annotated[str | None, Header()] = None) -> JobView:
    """Store a job as ``queued`` for the runner; the same ``Idempotency-Key`` answers the same job."""
    job = service_of(request).pool.submit(
        body.prompt,
        body.repo,
        ref=body.ref,
        agent=body.agent,
        options=job_options(body),
        idempotency_key=idempotency_key,
    )
    return view(job)


@router.get("/jobs")
def list_jobs(
    request: Request,
    state: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    """Jobs, newest first, only those in ``state`` if given; ``next_offset`` pages on."""
    from corral.jobs.models import JobState

    if state is not None and state not in set(JobState):
        msg = f"The state {state!r} is unknown; choose one of: {', '.join(JobState)}."
        raise UsageError(msg)
    found = service_of(request).store.list(state=JobState(state) if state else None, limit=limit + 1, offset=offset)
    more = len(found) > limit
    return JobList(jobs=[view(job) for job in found[:limit]], next_offset=offset + limit if more else None)


@router.get("/jobs/{job_id}")
def show(job_id: str, request: Request) -> JobView:
    """One job, with its result once it has one."""
    return view(service_of(request).store.get(job_id))


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}, "application/json": {}}}},
)
def events(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
    after: Annotated[int | None, Query(ge=0, description="Replay from after this seq (as Last-Event-ID).")] = None,
    follow: bool = True,
) -> Any:
    """The job's event log as server-sent events, from after ``Last-Event-ID``, then live until the job ends.

    With ``Accept: application/json`` it is one JSON list of the events stored so far (with their times).
    """
    service = service_of(request)
    service.store.get(job_id)  # 404 before the stream starts
    start = _after(last_event_id, after)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse([event.to_dict() for event in service.store.events(job_id, after=start)])
    return StreamingResponse(
        _stream(service, job_id, start, follow),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.post("/jobs/{job_id}/cancel")
def cancel(job_id: str, request: Request) -> JobView:
    """Cancel a job: a queued one never starts, a running one is stopped; an ended one is a conflict."""
    from corral.jobs.models import TERMINAL

    service = service_of(request)
    job = service.store.get(job_id)
    if job.state in TERMINAL:
        msg = f"The job {job_id} has already ended ({job.state.value}); there is nothing to cancel."
        raise ConflictError(msg)
    return view(service.pool.cancel(job_id))


@router.post("/jobs/{job_id}/messages", status_code=202)
def follow_up(job_id: str, body: MessageRequest, request: Request) -> JobView:
    """Continue the job's agent session with another prompt."""
    return view(service_of(request).pool.follow_up(job_id, body.prompt))


@router.patch("/jobs/{job_id}/egress")
def set_egress(job_id: str, body: EgressRequest, request: Request) -> JobView:
    """Replace the job's egress allowlist (the domains it may reach besides the gateway)."""
    from corral.egress.policy import Policy

    Policy(allow=tuple(body.allow))  # a bad pattern is refused before the pool sees it
    return view(service_of(request).pool.set_egress(job_id, body.allow))
