"""The job model: the state machine as a table, dict round trips, option checks."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest

from corral.errors import ConflictError, UsageError
from corral.jobs.models import (
    TERMINAL,
    Event,
    Job,
    JobOptions,
    JobResult,
    JobState,
    Usage,
    new_job,
    next_state,
)

S = JobState

# The rules as the design states them, written out here rather than read from the module.
ALLOWED: dict[JobState, set[JobState]] = {
    S.QUEUED: {S.PREPARING, S.CANCELLED, S.FAILED, S.INTERRUPTED},
    S.PREPARING: {S.RUNNING, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.INTERRUPTED},
    S.RUNNING: {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.INTERRUPTED},
    S.INTERRUPTED: {S.QUEUED, S.FAILED, S.CANCELLED},
}
PAIRS = [(current, new) for current in JobState for new in JobState]


def test_the_states_and_the_terminal_ones() -> None:
    assert [state.value for state in JobState] == [
        "queued",
        "preparing",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "interrupted",
    ]
    assert {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT} == TERMINAL
    assert S.INTERRUPTED not in TERMINAL


@pytest.mark.parametrize(
    ("current", "new"), [pair for pair in PAIRS if pair[1] in ALLOWED.get(pair[0], set())], ids=str
)
def test_allowed_transition(current: JobState, new: JobState) -> None:
    assert next_state(current, new) is new


@pytest.mark.parametrize(
    ("current", "new"), [pair for pair in PAIRS if pair[1] not in ALLOWED.get(pair[0], set())], ids=str
)
def test_refused_transition(current: JobState, new: JobState) -> None:
    with pytest.raises(ConflictError, match=f"^Job state cannot go from {current} to {new}: ") as info:
        next_state(current, new)
    if current not in TERMINAL:
        # The message lists exactly the ways out of the current state.
        listed = re.findall(r"[a-z_]+", str(info.value).split(" it can go to ")[1])
        assert set(listed) - {"or"} == {state.value for state in ALLOWED[current]}


@pytest.mark.parametrize("terminal", sorted(TERMINAL), ids=str)
def test_terminal_states_have_no_way_out(terminal: JobState) -> None:
    for new in JobState:
        with pytest.raises(ConflictError) as info:
            next_state(terminal, new)
        assert str(info.value) == f"Job state cannot go from {terminal} to {new}: the job has ended."


def test_the_refusal_is_a_sentence() -> None:
    with pytest.raises(ConflictError) as info:
        next_state(S.SUCCEEDED, S.RUNNING)
    assert str(info.value) == "Job state cannot go from succeeded to running: the job has ended."
    assert info.value.status == 409


def _full_result() -> JobResult:
    return JobResult(
        is_error=True,
        reason="usage_limit",
        summary="Stopped at the usage limit.",
        subtype="error_during_execution",
        session_id="5f0c-session",
        num_turns=7,
        cost_usd=0.125,
        usage=Usage(input_tokens=10, output_tokens=20, cache_creation_input_tokens=30, cache_read_input_tokens=40),
        duration_ms=1234,
        exit_code=1,
        branch="corral/0123456789abcdef",
        commit="a" * 40,
        diff="--- a/x\n+++ b/x\n",
        files_changed=("x", "dir/y.py"),
        pushed=True,
        usage_limit_resets_at=datetime(2025, 6, 1, 12, 30, tzinfo=timezone(timedelta(hours=2))),
        violations=("blocked evil.example:443",),
        base="b" * 40,
    )


def _full_job() -> Job:
    job = new_job(
        "Fix the tests",
        "https://example.com/repo.git",
        ref="main",
        options=JobOptions(
            model="opus",
            max_turns=5,
            max_budget_usd=2.5,
            timeout=60,
            allow_domains=("pypi.org", "files.pythonhosted.org"),
            permission_mode="acceptEdits",
            append_system_prompt="Be brief.",
            push=True,
            command=("aider", "--message", "{prompt}"),
        ),
        parent_id="fedcba9876543210",
        idempotency_key="client-key-1",
    )
    return dataclasses.replace(
        job,
        state=S.SUCCEEDED,
        started_at=job.created_at + timedelta(seconds=1),
        finished_at=job.created_at + timedelta(seconds=9),
        result=_full_result(),
        error="none really",
        session_id="5f0c-session",
        owner="host-1234",
        heartbeat_at=job.created_at + timedelta(seconds=5),
        attempts=2,
    )


def test_job_round_trips_through_json() -> None:
    job = _full_job()
    data = json.loads(json.dumps(job.to_dict()))
    assert Job.from_dict(data) == job
    assert data["options"]["allow_domains"] == ["pypi.org", "files.pythonhosted.org"]
    assert data["result"]["files_changed"] == ["x", "dir/y.py"]
    assert data["result"]["usage"]["cache_read_input_tokens"] == 40
    assert data["state"] == "succeeded"
    assert data["options"]["command"] == ["aider", "--message", "{prompt}"]
    assert (data["owner"], data["attempts"], data["parent_id"]) == ("host-1234", 2, "fedcba9876543210")
    assert data["heartbeat_at"].endswith("Z")
    assert data["idempotency_key"] == "client-key-1"
    assert data["result"]["base"] == "b" * 40


def test_times_are_utc_with_a_z() -> None:
    result = _full_result()
    assert result.to_dict()["usage_limit_resets_at"] == "2025-06-01T10:30:00Z"
    job = _full_job()
    text = job.to_dict()["created_at"]
    assert text.endswith("Z")
    assert datetime.fromisoformat(text) == job.created_at
    assert Job.from_dict(job.to_dict()).created_at.tzinfo is UTC


def test_a_time_without_timezone_is_refused() -> None:
    event = Event(job_id="j", seq=1, at=datetime(2025, 1, 1), kind="note", data="x")
    with pytest.raises(UsageError, match="has no timezone"):
        event.to_dict()


def test_minimal_records_round_trip() -> None:
    job = new_job("p", "r")
    assert Job.from_dict(job.to_dict()) == job
    result = JobResult(is_error=False, reason="completed")
    assert JobResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    assert JobOptions.from_dict({}) == JobOptions()
    event = Event(job_id=job.id, seq=3, at=job.created_at, kind="agent", data='{"type":"system"}')
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event
    assert Usage.from_dict(Usage(1, 2, 3, 4).to_dict()) == Usage(1, 2, 3, 4)


def test_from_dict_refuses_unknown_fields() -> None:
    with pytest.raises(UsageError, match="JobOptions has no field 'max_turnz'; its fields are: "):
        JobOptions.from_dict({"max_turnz": 3})


def test_usage_adds_up() -> None:
    total = Usage(1, 2, 3, 4) + Usage(10, 20, 30, 40)
    assert total == Usage(11, 22, 33, 44)
    assert total.total == 110
    assert Usage().total == 0


def test_new_job() -> None:
    job = new_job("Add a README", "https://example.com/r.git")
    assert re.fullmatch(r"[0-9a-f]{16}", job.id)
    assert job.state is S.QUEUED
    assert job.agent == "claude-code"
    assert job.options == JobOptions()
    assert job.created_at == job.updated_at
    assert job.created_at.tzinfo is UTC
    assert abs(datetime.now(UTC) - job.created_at) < timedelta(seconds=5)
    assert job.branch == f"corral/{job.id}"
    assert new_job("p", "r").id != new_job("p", "r").id


@pytest.mark.parametrize("prompt", ["", "  \n\t"])
def test_new_job_refuses_an_empty_prompt(prompt: str) -> None:
    with pytest.raises(UsageError, match="The prompt is empty"):
        new_job(prompt, "https://example.com/r.git")


def test_new_job_refuses_an_empty_repo() -> None:
    with pytest.raises(UsageError, match="The repository is empty"):
        new_job("p", " ")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_turns", 0, "The option max_turns must be a whole number of 1 or more, not 0."),
        ("max_turns", -3, "The option max_turns must be a whole number of 1 or more, not -3."),
        ("max_turns", 2.5, "The option max_turns must be a whole number of 1 or more, not 2.5."),
        ("max_turns", True, "The option max_turns must be a whole number of 1 or more, not True."),
        ("max_budget_usd", 0, "The option max_budget_usd must be a number greater than 0, not 0."),
        ("max_budget_usd", -1.5, "The option max_budget_usd must be a number greater than 0, not -1.5."),
        ("max_budget_usd", float("nan"), "The option max_budget_usd must be a number greater than 0, not nan."),
        ("timeout", 0.0, "The option timeout must be a number greater than 0, not 0.0."),
        ("timeout", float("inf"), "The option timeout must be a number greater than 0, not inf."),
        ("timeout", "60", "The option timeout must be a number greater than 0, not '60'."),
        ("model", "", "The option model must be a non-empty string or left out, not ''."),
        ("permission_mode", " ", "The option permission_mode must be a non-empty string or left out, not ' '."),
        ("allow_domains", "pypi.org", "The option allow_domains must be a list of strings, not 'pypi.org'."),
        ("allow_domains", ("a", 1), "The option allow_domains must be a list of strings, not ('a', 1)."),
        ("command", "true", "The option command must be a list of strings, not 'true'."),
    ],
)
def test_option_validation(field: str, value: object, message: str) -> None:
    with pytest.raises(UsageError) as info:
        JobOptions(**{field: value})  # type: ignore[arg-type]
    assert str(info.value) == message


def test_valid_options_are_kept() -> None:
    options = JobOptions(max_turns=1, max_budget_usd=0.01, timeout=1, allow_domains=["a.example"])  # type: ignore[arg-type]
    assert options.allow_domains == ("a.example",)
    assert options.max_turns == 1


def test_importing_jobs_does_not_import_sqlalchemy() -> None:
    code = "import sys, corral.jobs; print(sorted(m for m in ('sqlalchemy', 'alembic') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_a_new_job_has_no_owner_and_no_attempt_yet() -> None:
    job = new_job("p", "r", parent_id="0123456789abcdef", idempotency_key="k")
    assert (job.owner, job.heartbeat_at, job.attempts) == (None, None, 0)
    assert (job.parent_id, job.idempotency_key) == ("0123456789abcdef", "k")


@pytest.mark.parametrize("key", ["", "k" * 201])
def test_an_idempotency_key_of_a_bad_length_is_refused(key: str) -> None:
    with pytest.raises(UsageError, match=f"idempotency key must be 1 to 200 characters, not {len(key)}"):
        new_job("p", "r", idempotency_key=key)
