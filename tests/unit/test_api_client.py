"""The CORRAL_URL client's pure parts, and the local side of ``corral jobs cancel`` and ``logs --follow``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from corral.cli.jobs import LocalJobs, cancel_job
from corral.cli.remote import RemoteJobs, error_for, parse_sse
from corral.errors import ConflictError, CorralError, NotFoundError, PolicyError, UsageError
from corral.jobs.models import JobState, new_job
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


def test_an_error_answer_becomes_the_corral_error_of_its_code() -> None:
    for code, cls in (("not_found", NotFoundError), ("conflict", ConflictError), ("bad_policy", PolicyError)):
        err = error_for(400, {"error": {"code": code, "message": f"It is {code}."}}, "http://x")
        assert type(err) is cls
        assert str(err) == f"It is {code}."
    unauthorized = error_for(401, {"error": {"code": "unauthorized", "message": "Send the secret."}}, "http://x")
    assert type(unauthorized) is UsageError
    assert str(unauthorized).startswith("Send the secret.")
    odd = error_for(502, "<html>bad gateway</html>", "http://x")
    assert type(odd) is CorralError
    assert "502" in str(odd)


def test_sse_lines_parse_into_events() -> None:
    lines = iter(
        ["id: 4", "event: agent", "data: {}", "", ": a comment", "id: 5", "event: note", "data: a", "data: b", ""]
    )
    assert list(parse_sse(lines)) == [(4, "agent", "{}"), (5, "note", "a\nb")]


def test_the_remote_client_sends_the_secret_and_raises_the_servers_error() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "No job abc."}})

    remote = RemoteJobs("http://corral.test/", "the-secret", transport=httpx.MockTransport(answer))
    with pytest.raises(NotFoundError, match="No job abc"):
        remote.get("abc")
    remote.close()
    assert seen[0].headers["X-Runner-Secret"] == "the-secret"
    assert str(seen[0].url) == "http://corral.test/v1/jobs/abc"


def test_an_unreachable_server_is_a_sentence_naming_corral_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    remote = RemoteJobs("http://127.0.0.1:9", transport=httpx.MockTransport(refuse))
    with pytest.raises(UsageError, match=r"CORRAL_URL=http://127\.0\.0\.1:9"):
        remote.list()
    remote.close()


def test_locally_only_a_queued_job_can_be_cancelled(store: JobStore) -> None:
    queued = store.add(new_job("p", "https://example.com/r.git"))
    assert cancel_job(store, queued.id).state is JobState.CANCELLED
    assert store.events(queued.id)[-1].data == "cancelled"
    with pytest.raises(ConflictError, match="already ended"):
        cancel_job(store, queued.id)
    running = store.add(new_job("p", "https://example.com/r.git"))
    store.update(running.id, state=JobState.PREPARING)
    with pytest.raises(ConflictError, match="CORRAL_URL"):
        cancel_job(store, running.id)
    assert store.get(running.id).state is JobState.PREPARING


def test_follow_on_the_local_store_prints_new_events_until_the_job_ends(store: JobStore) -> None:
    job = store.add(new_job("p", "https://example.com/r.git"))
    store.append_event(job.id, "state", "queued")

    def run() -> None:
        store.update(job.id, state=JobState.PREPARING)
        store.append_event(job.id, "note", "working")
        store.update(job.id, state=JobState.FAILED)
        store.append_event(job.id, "state", "failed")

    timer = threading.Timer(0.3, run)
    timer.start()
    seen = [event.data for event in LocalJobs(store).follow(job.id)]
    timer.join()
    assert seen == ["queued", "working", "failed"]
