"""The ``CORRAL_URL`` client of ``corral jobs``: the same reads as the local store, from a running ``corral serve``.

``RemoteJobs`` answers ``list``, ``get``, ``events``, ``follow`` and ``cancel`` like
``corral.cli.jobs.LocalJobs`` does, over the ``/v1/`` API, with ``CORRAL_RUNNER_SECRET`` as
``X-Runner-Secret``. An error the server answers is raised as the ``CorralError`` of its code, with
the server's sentence.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from corral import errors
from corral.errors import CorralError, UsageError

if TYPE_CHECKING:
    import httpx

    from corral.jobs.models import Event, Job, JobState

__all__ = ["RemoteJobs", "error_for", "parse_sse"]

TIMEOUT = 30.0
"""Seconds a request may take (an event stream may stay silent longer: it has no read timeout)."""


def _classes() -> dict[str, type[CorralError]]:
    found: dict[str, type[CorralError]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, CorralError):
            found.setdefault(cls.code, cls)
    return found


def error_for(status: int, body: Any, url: str) -> CorralError:
    """The ``CorralError`` of an error answer ``{"error": {"code", "message"}}`` (any other body too)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        code, message = str(error.get("code")), str(error["message"])
    else:
        code, message = "error", f"The server at {url} answered {status} without an error body; check its log."
    if status == 401:
        message += " (corral jobs sends CORRAL_RUNNER_SECRET)"
    cls = _classes().get(code, UsageError if 400 <= status < 500 else CorralError)
    return cls(message)


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[int, str, str]]:
    """``(id, event, data)`` of each server-sent event in ``lines`` (comments and other fields skipped)."""
    seq, kind, data = 0, "message", list[str]()
    for line in lines:
        if not line:
            if data or seq:
                yield seq, kind, "\n".join(data)
            seq, kind, data = 0, "message", list[str]()
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            seq = int(value)
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


class RemoteJobs:
    """The jobs of the server at ``url``."""

    def __init__(self, url: str, secret: str = "", *, transport: httpx.BaseTransport | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"X-Runner-Secret": secret} if secret else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT, transport=transport)

    def close(self) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
        return self._answer(response)

    def _unreachable(self, err: Exception) -> UsageError:
        msg = (
            f"corral cannot reach the server at CORRAL_URL={self.url} ({err}); start `corral serve` there, "
            "or unset CORRAL_URL to read the local store."
        )
        return UsageError(msg)

    def _answer(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_error:
            raise error_for(response.status_code, body, self.url)
        return body

    def list(self, *, state: JobState | None = None, limit: int = 50) -> builtins.list[Job]:
        from corral.jobs.models import Job

        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = state.value
        return [Job.from_dict(item) for item in self._call("GET", "/v1/jobs", params=params)["jobs"]]

    def get(self, job_id: str) -> Job:
        from corral.jobs.models import Job

        return Job.from_dict(self._call("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        from corral.jobs.models import Job

        return Job.from_dict(self._call("POST", f"/v1/jobs/{job_id}/cancel"))

    def events(self, job_id: str, *, after: int = 0) -> builtins.list[Event]:
        from corral.jobs.models import Event

        answer = self._call(
            "GET", f"/v1/jobs/{job_id}/events", params={"after": after}, headers={"Accept": "application/json"}
        )
        return [Event.from_dict(item) for item in answer]

    def follow(self, job_id: str, *, after: int = 0) -> Iterator[Event]:
        """The events stored so far (with their times), then new ones as they come, until the job ends."""
        import httpx

        from corral.jobs.models import Event, utc_now

        for event in self.events(job_id, after=after):
            after = event.seq
            yield event
        timeout = httpx.Timeout(TIMEOUT, read=None)
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            with self._client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                if response.is_error:
                    response.read()
                    self._answer(response)
                for seq, kind, data in parse_sse(response.iter_lines()):
                    yield Event(job_id=job_id, seq=seq, at=utc_now(), kind=kind, data=data)
        except httpx.HTTPError as err:
            raise self._unreachable(err) from None
