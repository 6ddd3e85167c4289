"""The /v1 jobs API in process with the fake pool: every route and every error shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.api.app import create_app
from corral.api.jobs import sse_frame
from corral.jobs.models import Event, JobState, utc_now
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings
from tests.fake_pool import FakePool, InProcess

SECRET = "jobs-secret"
AUTH = {"X-Runner-Secret": SECRET}
REPO = "https://example.com/r.git"


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def pool(settings: Settings, store: JobStore) -> FakePool:
    return FakePool(settings, store)


@pytest.fixture
def api(settings: Settings, store: JobStore, pool: FakePool) -> Iterator[InProcess]:
    settings = Settings(home=settings.home, runner_secret=SECRET)
    with InProcess(create_app(settings, pool=pool, store=store, environ={})) as client:
        yield client


def submit(api: InProcess, **body: object) -> dict[str, object]:
    response = api.post("/v1/jobs", json={"prompt": "do it", "repo": REPO, **body}, headers=AUTH)
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def parse_sse(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        frame: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            frame[name] = frame[name] + "\n" + value if name in frame else value
        frames.append(frame)
    return frames


def test_submit_takes_every_option_and_answers_202_with_the_stored_job(api: InProcess, store: JobStore) -> None:
    body = submit(
        api,
        ref="main",
        model="m1",
        max_turns=3,
        max_budget_usd=1.5,
        timeout="2m",
        allow_domains=["example.org"],
        push=True,
        env=["A=b"],
    )
    job = store.get(str(body["id"]))
    assert body["state"] == "queued"
    assert (job.ref, job.agent, job.prompt, job.repo) == ("main", "claude-code", "do it", REPO)
    options = job.options
    assert (options.model, options.max_turns, options.max_budget_usd, options.timeout) == ("m1", 3, 1.5, 120.0)
    assert (options.allow_domains, options.push, options.env) == (("example.org",), True, ("A=b",))


def test_the_same_idempotency_key_answers_the_same_job(api: InProcess, store: JobStore) -> None:
    first = api.post("/v1/jobs", json={"prompt": "a", "repo": REPO}, headers={**AUTH, "Idempotency-Key": "k1"})
    again = api.post("/v1/jobs", json={"prompt": "a", "repo": REPO}, headers={**AUTH, "Idempotency-Key": "k1"})
    other = api.post("/v1/jobs", json={"prompt": "a", "repo": REPO}, headers={**AUTH, "Idempotency-Key": "k2"})
    assert first.json()["id"] == again.json()["id"] != other.json()["id"]
    assert len(store.list()) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "p", "repo": REPO, "colour": "red"},
        {"prompt": "p"},
        {"prompt": "p", "repo": REPO, "max_turns": 0},
        {"prompt": "p", "repo": REPO, "push": "sometimes"},
    ],
)
def test_a_bad_job_body_is_422_in_the_one_shape_and_stores_nothing(
    api: InProcess, store: JobStore, body: dict[str, object]
) -> None:
    response = api.post("/v1/jobs", json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"
    assert store.list() == []


def test_an_option_the_job_model_refuses_is_400_with_its_sentence(api: InProcess, store: JobStore) -> None:
    response = api.post("/v1/jobs", json={"prompt": "p", "repo": REPO, "env": ["no-equals"]}, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert "'no-equals'" in response.json()["error"]["message"]
    assert store.list() == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/x"), ("POST", "/v1/jobs/x/cancel")],
)
def test_every_v1_route_needs_the_secret(api: InProcess, store: JobStore, method: str, path: str) -> None:
    response = api.request(method, path, json={"prompt": "p", "repo": REPO})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert store.list() == []


def test_list_filters_by_state_and_pages(api: InProcess, pool: FakePool) -> None:
    ids = [str(submit(api, prompt=f"job {n}")["id"]) for n in range(5)]
    pool.finish(ids[1])
    first = api.get("/v1/jobs?limit=2", headers=AUTH).json()
    second = api.get(f"/v1/jobs?limit=2&offset={first['next_offset']}", headers=AUTH).json()
    last = api.get(f"/v1/jobs?limit=2&offset={second['next_offset']}", headers=AUTH).json()
    seen = [job["id"] for page in (first, second, last) for job in page["jobs"]]
    assert sorted(seen) == sorted(ids)
    assert len(set(seen)) == 5
    assert last["next_offset"] is None
    done = api.get("/v1/jobs?state=succeeded", headers=AUTH).json()
    assert [job["id"] for job in done["jobs"]] == [ids[1]]
    bad = api.get("/v1/jobs?state=sleeping", headers=AUTH)
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
    assert "'sleeping'" in bad.json()["error"]["message"]
    beyond = api.get("/v1/jobs?offset=5", headers=AUTH).json()
    assert (beyond["jobs"], beyond["next_offset"]) == ([], None)
    huge = api.get(f"/v1/jobs?offset={2**70}", headers=AUTH)  # past a database integer: refused, not a 500
    assert (huge.status_code, huge.json()["error"]["code"]) == (422, "invalid_request")


def test_show_and_the_404_of_an_unknown_job(api: InProcess) -> None:
    job = submit(api)
    shown = api.get(f"/v1/jobs/{job['id']}", headers=AUTH).json()
    assert shown == job
    missing = api.get("/v1/jobs/0123456789abcdef", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert "0123456789abcdef" in missing.json()["error"]["message"]


def test_cancel_a_queued_job_then_409_once_it_has_ended(api: InProcess, store: JobStore) -> None:
    job = submit(api)
    cancelled = api.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled" == store.get(str(job["id"])).state.value
    again = api.post(f"/v1/jobs/{job['id']}/cancel", headers=AUTH)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    assert "cancelled" in again.json()["error"]["message"]


def test_a_follow_up_message_goes_to_the_pool_and_answers_202(api: InProcess, pool: FakePool) -> None:
    job = submit(api)
    early = api.post(f"/v1/jobs/{job['id']}/messages", json={"prompt": "and then"}, headers=AUTH)
    assert (early.status_code, early.json()["error"]["code"]) == (409, "conflict")
    pool.finish(str(job["id"]))
    response = api.post(f"/v1/jobs/{job['id']}/messages", json={"prompt": "and then"}, headers=AUTH)
    assert response.status_code == 202
    assert ("follow_up", (job["id"], "and then")) in pool.calls
    empty = api.post(f"/v1/jobs/{job['id']}/messages", json={"prompt": ""}, headers=AUTH)
    assert empty.status_code == 422


def test_egress_is_checked_then_given_to_the_pool(api: InProcess, pool: FakePool) -> None:
    job = submit(api)
    response = api.request("PATCH", f"/v1/jobs/{job['id']}/egress", json={"allow": ["pypi.org"]}, headers=AUTH)
    assert response.status_code == 200
    assert ("set_egress", (job["id"], ["pypi.org"])) in pool.calls
    broad = api.request("PATCH", f"/v1/jobs/{job['id']}/egress", json={"allow": ["*.com"]}, headers=AUTH)
    assert (broad.status_code, broad.json()["error"]["code"]) == (400, "bad_policy")
    assert len([call for call in pool.calls if call[0] == "set_egress"]) == 1


def test_events_replay_as_sse_and_resume_after_last_event_id(api: InProcess, pool: FakePool, store: JobStore) -> None:
    job_id = str(submit(api)["id"])
    pool.finish(job_id)
    stored = store.events(job_id)
    response = api.get(f"/v1/jobs/{job_id}/events", headers=AUTH)
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = parse_sse(response.text)
    assert [(int(f["id"]), f["event"], f["data"]) for f in frames] == [(e.seq, e.kind, e.data) for e in stored]
    resumed = parse_sse(api.get(f"/v1/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": "3"}).text)
    assert [int(f["id"]) for f in resumed] == [e.seq for e in stored if e.seq > 3]
    as_json = api.get(f"/v1/jobs/{job_id}/events?after=2", headers={**AUTH, "Accept": "application/json"}).json()
    assert [item["seq"] for item in as_json] == [e.seq for e in stored if e.seq > 2]
    assert as_json[0]["at"] == stored[2].to_dict()["at"]
    bad = api.get(f"/v1/jobs/{job_id}/events", headers={**AUTH, "Last-Event-ID": "three"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "bad_request")
    missing = api.get("/v1/jobs/nope/events", headers=AUTH)
    assert missing.status_code == 404


def test_events_without_follow_end_at_once_for_a_live_job(api: InProcess, store: JobStore) -> None:
    job_id = str(submit(api)["id"])
    frames = parse_sse(api.get(f"/v1/jobs/{job_id}/events?follow=false", headers=AUTH).text)
    assert [f["data"] for f in frames] == ["queued"]
    assert store.get(job_id).state is JobState.QUEUED


def test_an_sse_frame_carries_a_multi_line_data_as_several_data_lines() -> None:
    event = Event(job_id="j", seq=7, at=utc_now(), kind="stderr", data="one\ntwo\r")
    assert sse_frame(event) == "id: 7\nevent: stderr\ndata: one\ndata: two\n\n"


def test_unknown_routes_and_methods_answer_in_the_one_shape(api: InProcess) -> None:
    unknown = api.get("/v2/nothing")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "not_found")
    assert "/v2/nothing" in unknown.json()["error"]["message"]
    wrong = api.request("DELETE", "/health")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")


def test_openapi_lists_every_route(api: InProcess) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/execute", "/health", "/oauth/status", "/healthz", "/readyz", "/admin/drain", "/v1/jobs"):
        assert path in paths
    assert set(paths["/v1/jobs/{job_id}/egress"]) == {"patch"}
