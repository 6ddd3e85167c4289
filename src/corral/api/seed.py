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
def execute(body: ExecuteRequest, request: Request) -> ExecuteResponse:
    """Run the prompt against the repository with the Claude Code agent and answer when the job ends."""
    from corral.jobs.models import JobOptions

    service = service_of(request)
    timeout = body.timeout_ms / 1000 if body.timeout_ms is not None else None
    job = service.pool.submit(body.prompt, body.repo_url, options=JobOptions(timeout=timeout))
    limit = timeout or service.settings.job_timeout
    job = service.pool.wait(job.id, timeout=None if limit is None else limit + SETUP_GRACE)
    return execute_response(job)
