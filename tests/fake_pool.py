"""A stand-in for ``corral.runner.pool.RunnerPool`` with the same interface, for unit tests of the API.

It stores jobs in the real store it is given and runs nothing: ``finish`` ends a job the way a
runner would (states and events included), and ``wait`` finishes a job with ``outcome`` when
``auto_finish`` is set. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from corral.errors import ConflictError
from corral.jobs.models import TERMINAL, Job, JobOptions, JobResult, JobState, Usage, new_job
from corral.jobs.store import JobStore
from corral.settings import Settings

DIFF = "diff --git a/hello.txt b/hello.txt\n--- /dev/null\n+++ b/hello.txt\n@@ -0,0 +1,2 @@\n+hi\n+there\n"


def success(job: Job) -> JobResult:
    return JobResult(
        is_error=False,
        reason="completed",
        summary=f"done: {job.prompt}",
        cost_usd=0.25,
        usage=Usage(input_tokens=10, output_tokens=5),
        duration_ms=1234,
        branch=job.branch,
        commit="0" * 40,
        diff=DIFF,
        files_changed=("hello.txt",),
    )


class FakePool:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        *,
        capacity: int = 4,
        runner_id: str | None = None,
        sandbox: object = None,
        environ: Mapping[str, str] | None = None,
        requeue_interrupted: int = 1,
    ) -> None:
        self.settings = settings
        self.store = store
        self.capacity = capacity
        self.runner_id = runner_id or f"fake-{secrets.token_hex(4)}"
        self.auto_finish = True
        self.active = 0
        self.poll_age = 5
        self.calls: list[tuple[str, Any]] = []
        self.started = self.stopped = self.is_draining = False
        self._keys: dict[str, str] = {}

    @property
    def active_sessions(self) -> int:
        return self.active

    @property
    def draining(self) -> bool:
        return self.is_draining

    @property
    def last_poll_age_ms(self) -> int:
        return self.poll_age

    def start(self) -> None:
        self.started = True

    def submit(
        self,
        prompt: str,
        repo: str,
        *,
        ref: str | None = None,
        agent: str = "claude-code",
        options: JobOptions | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        self.calls.append(("submit", {"prompt": prompt, "repo": repo, "ref": ref, "agent": agent, "options": options}))
        if idempotency_key is not None and idempotency_key in self._keys:
            return self.store.get(self._keys[idempotency_key])
        job = self.store.add(new_job(prompt, repo, ref=ref, agent=agent, options=options or JobOptions()))
        self.store.append_event(job.id, "state", job.state.value)
        if idempotency_key is not None:
            self._keys[idempotency_key] = job.id
        return job

    def move(self, job_id: str, state: JobState, **changes: Any) -> Job:
        job = self.store.update(job_id, state=state, **changes)
        self.store.append_event(job_id, "state", state.value)
        return job

    def finish(self, job_id: str) -> Job:
        """Run the job the way a runner would, as far as the store can see: states, agent lines, a result."""
        job = self.move(job_id, JobState.PREPARING)
        job = self.move(job_id, JobState.RUNNING)
        self.store.append_event(job_id, "agent", '{"type": "result", "result": "done"}')
        return self.move(job_id, JobState.SUCCEEDED, result=success(job))

    def follow_up(self, job_id: str, prompt: str) -> Job:
        self.calls.append(("follow_up", (job_id, prompt)))
        job = self.store.get(job_id)
        if job.state not in TERMINAL:
            raise ConflictError(f"The job {job_id} is still {job.state.value}; wait for it to end.")
        return job

    def cancel(self, job_id: str) -> Job:
        self.calls.append(("cancel", job_id))
        return self.move(job_id, JobState.CANCELLED)

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        self.calls.append(("wait", (job_id, timeout)))
        job = self.store.get(job_id)
        if self.auto_finish and job.state not in TERMINAL:
            job = self.finish(job_id)
        return job

    def set_egress(self, job_id: str, allow: Sequence[str]) -> Job:
        self.calls.append(("set_egress", (job_id, list(allow))))
        return self.store.get(job_id)

    def drain(self, timeout: float) -> None:
        self.calls.append(("drain", timeout))
        self.is_draining = True

    def stop(self) -> None:
        self.stopped = True


class InProcess:
    """An application over ``httpx.ASGITransport``, its lifespan running, driven from sync tests."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __enter__(self) -> InProcess:
        import httpx
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal()
        self.portal = self._portal_cm.__enter__()
        self._lifespan = self.portal.wrap_async_context_manager(self.app.router.lifespan_context(self.app))
        self._lifespan.__enter__()
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://corral.test", timeout=10)
        return self

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.portal.call(lambda: self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def __exit__(self, *exc: object) -> None:
        self.portal.call(self.client.aclose)
        self._lifespan.__exit__(None, None, None)
        self._portal_cm.__exit__(None, None, None)
