"""The seed contract, as the old runner's clients call it: ``POST /execute`` runs a job and answers when it ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, Request

from corral.api.app import service_of
from corral.api.auth import SecretRequired
from corral.api.models import DiffSummary, ExecuteRequest, ExecuteResponse

if TYPE_CHECKING:
    from corral.jobs.models import Job

__all__ = ["SETUP_GRACE", "diff_summary", "execute_response", "router"]

router = APIRouter(tags=["seed"])

EXECUTE_POLL = 0.2
"""Seconds between looks at a job ``POST /execute`` waits for."""
SETUP_GRACE = 300.0
"""Seconds ``/execute`` waits past the job's own time limit (queueing, checkout, commit) before answering."""


def diff_summary(diff: str, files: list[str]) -> DiffSummary:
    """Files changed and lines added and removed, counted from a unified diff."""
    insertions = deletions = 0
    for line in diff.splitlines():
        if line.startswith("+") and not line.startswith("+++"):
            insertions += 1
        elif line.startswith("-") and not line.startswith("---"):
            deletions += 1
    return DiffSummary(files_changed=files, insertions=insertions, deletions=deletions)


def execute_response(job: Job) -> ExecuteResponse:
    """The seed's answer for ``job``, ended or not (a job still running is not a success)."""
    from corral.jobs.models import JobState

    result = job.result
    return ExecuteResponse(
        job_id=job.id,
        state=job.state.value,
        success=job.state is JobState.SUCCEEDED,
        result=(result.summary if result is not None else "") or (job.error or ""),
        reason=result.reason if result is not None else None,
        branch=result.branch if result is not None else None,
        commit=result.commit if result is not None else None,
        diff_summary=diff_summary(result.diff, list(result.files_changed))
        if result is not None
        else DiffSummary(files_changed=[], insertions=0, deletions=0),
        cost_usd=result.cost_usd if result is not None else None,
        usage=result.usage.to_dict() if result is not None else {},
        duration_ms=result.duration_ms if result is not None else None,
        error=job.error,
    )


@router.post("/execute", dependencies=[SecretRequired])
async def execute(body: ExecuteRequest, request: Request) -> ExecuteResponse:
    """Run the prompt against the repository with the Claude Code agent and answer when the job ends.

    The wait is a poll on the event loop, not a blocked worker thread: many callers may wait at once.
    """
    import anyio

    from corral.jobs.models import ENDED, JobOptions

    service = service_of(request)
    timeout = body.timeout_ms / 1000 if body.timeout_ms is not None else None
    options = JobOptions(timeout=timeout)
    job = await anyio.to_thread.run_sync(lambda: service.pool.submit(body.prompt, body.repo_url, options=options))
    limit = timeout or service.settings.job_timeout
    deadline = None if limit is None else anyio.current_time() + limit + SETUP_GRACE
    while job.state not in ENDED and (deadline is None or anyio.current_time() < deadline):
        await anyio.sleep(EXECUTE_POLL)
        job = await anyio.to_thread.run_sync(service.pool.wait, job.id, 0.0)
    return execute_response(job)
