"""The seed contract in process: POST /execute, GET /health, GET /oauth/status, with the fake pool."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from corral.api.app import create_app
from corral.api.seed import diff_summary
from corral.jobs.models import JobState
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings
from tests.fake_pool import DIFF, FakePool, InProcess

SECRET = "s3cret-for-tests"
API_KEY = "sk-ant-api03-unit-test-key-abcdef"


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


def serve(settings: Settings, store: JobStore, environ: dict[str, str] | None = None) -> tuple[InProcess, FakePool]:
    pool = FakePool(settings, store)
    app = create_app(settings, pool=pool, store=store, environ=environ if environ is not None else {})
    return InProcess(app), pool


def execute_body() -> dict[str, object]:
    return {"prompt": "write hello", "repo_url": "https://example.com/r.git", "timeout_ms": 600000}


@pytest.mark.parametrize("headers", [{}, {"X-Runner-Secret": "wrong"}, {"X-Runner-Secret": ""}])
def test_execute_without_the_right_secret_is_401_and_stores_nothing(
    settings: Settings, store: JobStore, headers: dict[str, str]
) -> None:
    settings = Settings(home=settings.home, runner_secret=SECRET)
    client, pool = serve(settings, store)
    with client:
        response = client.post("/execute", json=execute_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert "X-Runner-Secret" in response.json()["error"]["message"]
    assert SECRET not in response.text
    assert store.list() == []
    assert pool.calls == []


def test_execute_runs_the_job_and_answers_its_result(settings: Settings, store: JobStore) -> None:
    settings = Settings(home=settings.home, runner_secret=SECRET)
    client, pool = serve(settings, store)
    with client:
        response = client.post("/execute", json=execute_body(), headers={"X-Runner-Secret": SECRET})
    assert response.status_code == 200, response.text
    body = response.json()
    job = store.get(body["job_id"])
    assert job.state is JobState.SUCCEEDED
    assert job.options.timeout == 600.0
    assert job.agent == "claude-code"
    assert ("wait", (job.id, 0.0)) in pool.calls  # looked at from the event loop, never a blocked wait
    assert job.result is not None
    assert body["success"] is True
    assert body["state"] == "succeeded"
    assert body["result"] == job.result.summary
    assert body["branch"] == f"corral/{job.id}"
    assert body["diff_summary"] == {"files_changed": ["hello.txt"], "insertions": 2, "deletions": 0}
    assert body["cost_usd"] == job.result.cost_usd
    assert body["usage"]["input_tokens"] == job.result.usage.input_tokens
    assert body["duration_ms"] == job.result.duration_ms


def test_execute_ignores_fields_it_does_not_know_and_needs_no_secret_when_none_is_set(
    settings: Settings, store: JobStore
) -> None:
    client, _ = serve(settings, store)
    with client:
        response = client.post("/execute", json={**execute_body(), "branch": "main", "callback_url": "x"})
    assert response.status_code == 200, response.text
    assert store.get(response.json()["job_id"]).repo == "https://example.com/r.git"


def test_a_job_that_has_not_ended_is_no_success(
    settings: Settings, store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait ends at the job's time limit (here the setting, 0.3 s) plus the setup grace (here none)."""
    from corral.api import seed

    monkeypatch.setattr(seed, "SETUP_GRACE", 0.0)
    client, pool = serve(dataclasses.replace(settings, job_timeout=0.3), store)
    pool.auto_finish = False
    with client:
        body = client.post("/execute", json={"prompt": "p", "repo_url": "https://example.com/r.git"}).json()
    assert (body["success"], body["state"], body["diff_summary"]["files_changed"]) == (False, "queued", [])
    assert store.get(body["job_id"]).options.timeout is None


@pytest.mark.parametrize(
    "body",
    [{"repo_url": "https://example.com/r.git"}, {**execute_body(), "timeout_ms": 0}, {**execute_body(), "prompt": ""}],
)
def test_a_bad_execute_body_is_422_in_the_one_shape(
    settings: Settings, store: JobStore, body: dict[str, object]
) -> None:
    client, _ = serve(settings, store)
    with client:
        response = client.post("/execute", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("The request is invalid at ")
    assert store.list() == []


def adopt_login(tmp_path: Path, home: Path, expires_in: timedelta) -> str:
    """An adopted Claude Code login expiring in ``expires_in``; its token."""
    from corral.secrets import CredentialStore

    token = "sk-ant-oat01-unit-" + "t" * 20
    directory = tmp_path / "claude-login"
    directory.mkdir()
    expires = datetime.now(UTC) + expires_in
    oauth = {"accessToken": token, "expiresAt": int(expires.timestamp() * 1000)}
    (directory / ".credentials.json").write_text(json.dumps({"claudeAiOauth": oauth}))
    CredentialStore(home).import_claude_dir(directory)
    return token


def test_health_is_degraded_without_a_credential(settings: Settings, store: JobStore) -> None:
    client, _ = serve(settings, store)
    with client:
        body = client.get("/health").json()
    assert body["status"] == "degraded"
    assert body["oauth"] == {"configured": False, "expired": False, "expires_at": None, "hours_remaining": None}
    assert datetime.fromisoformat(body["timestamp"]).tzinfo is not None


def test_health_is_healthy_with_an_api_key_and_never_shows_it(settings: Settings, store: JobStore) -> None:
    client, _ = serve(settings, store, {"ANTHROPIC_API_KEY": API_KEY})
    with client:
        response = client.get("/health")
    assert response.json()["status"] == "healthy"
    assert response.json()["oauth"]["configured"] is True
    assert API_KEY not in response.text


@pytest.mark.parametrize(
    ("expires_in", "status", "expired"),
    [
        (timedelta(hours=10), "healthy", False),
        (timedelta(hours=1), "degraded", False),
        (timedelta(hours=-1), "degraded", True),
    ],
)
def test_health_follows_the_expiry_of_an_oauth_login(
    settings: Settings, store: JobStore, tmp_path: Path, expires_in: timedelta, status: str, expired: bool
) -> None:
    token = adopt_login(tmp_path, settings.home, expires_in)
    client, _ = serve(settings, store)
    with client:
        response = client.get("/health")
    body = response.json()
    assert (body["status"], body["oauth"]["expired"]) == (status, expired)
    assert body["oauth"]["configured"] is not expired
    hours = body["oauth"]["hours_remaining"]
    assert abs(hours - expires_in.total_seconds() / 3600) < 0.1
    assert datetime.fromisoformat(body["oauth"]["expires_at"]) > datetime.now(UTC) + expires_in - timedelta(minutes=5)
    assert token not in response.text


def test_oauth_status_needs_the_secret_and_names_kind_and_source(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    settings = Settings(home=settings.home, runner_secret=SECRET)
    token = adopt_login(tmp_path, settings.home, timedelta(hours=5))
    client, _ = serve(settings, store)
    with client:
        refused = client.get("/oauth/status")
        response = client.get("/oauth/status", headers={"X-Runner-Secret": SECRET})
    assert refused.status_code == 401
    body = response.json()
    assert (body["kind"], body["configured"], body["error"]) == ("oauth_token", True, None)
    assert body["source"] == f"claude login at {(tmp_path / 'claude-login').resolve()}"
    assert token not in response.text


def test_diff_summary_counts_lines_but_not_file_headers() -> None:
    summary = diff_summary(DIFF + "--- a/x\n+++ b/x\n-old\n+new\n", ["hello.txt", "x"])
    assert (summary.insertions, summary.deletions, summary.files_changed) == (3, 1, ["hello.txt", "x"])
