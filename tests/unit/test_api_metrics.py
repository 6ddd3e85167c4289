"""``GET /metrics`` in process with the fake pool: Prometheus text whose values are the pool's and the store's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from corral import __version__
from corral.api.app import create_app
from corral.api.health import credential_report
from corral.api.metrics import DURATION_BUCKETS, Histogram
from corral.egress.proxy import DECISIONS
from corral.jobs.models import Job, JobOptions, JobState
from corral.jobs.sql import JOBS, SqlJobStore
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings
from tests.fake_pool import FakePool, InProcess

REPO = "https://example.com/r.git"
ENV = {"ANTHROPIC_API_KEY": "sk-ant-api03-metrics-test-key"}


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


def scrape(api: InProcess) -> dict[str, Any]:
    """Every sample of ``/metrics`` by (name, sorted labels); parsed with prometheus_client's own parser."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[Any, float] = {}
    families = {}
    for family in text_string_to_metric_families(response.text):
        families[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return {"samples": samples, "types": families}


def value(scraped: dict[str, Any], name: str, **labels: str) -> float:
    return float(scraped["samples"][(name, tuple(sorted(labels.items())))])


def seconds(later: datetime | None, earlier: datetime | None) -> float:
    assert later is not None
    assert earlier is not None
    return (later - earlier).total_seconds()


def test_metrics_match_the_pool_and_the_store(settings: Settings, store: JobStore) -> None:
    pool = FakePool(settings, store, capacity=3, runner_id="runner-m")
    pool.active = 2
    with InProcess(create_app(settings, pool=pool, store=store, environ=ENV)) as api:
        empty = scrape(api)
        opus = pool.submit("p", REPO, options=JobOptions(model="opus"))
        plain = pool.submit("p", REPO)
        dropped = pool.submit("p", REPO)
        running = pool.submit("p", REPO)
        pool.submit("p", REPO)  # stays queued
        pool.finish(opus.id)
        pool.finish(plain.id)
        pool.cancel(dropped.id)
        pool.move(running.id, JobState.PREPARING)
        pool.move(running.id, JobState.RUNNING)
        DECISIONS.add("deny")
        egress = DECISIONS.counts()
        scraped = scrape(api)
        again = scrape(api)
    finished = [store.get(job.id) for job in (opus, plain, dropped)]

    assert value(empty, "corral_jobs_finished_total", state="succeeded") == 0
    assert value(empty, "corral_jobs_started_total") == 0
    assert value(scraped, "corral_runner_info", runner_id="runner-m", version=__version__) == 1
    assert value(scraped, "corral_runner_capacity") == pool.capacity
    assert value(scraped, "corral_runner_active_sessions") == pool.active_sessions
    assert value(scraped, "corral_queue_depth") == len(store.list(state=JobState.QUEUED))
    by_state: dict[str, int] = {}
    for job in finished:
        by_state[job.state.value] = by_state.get(job.state.value, 0) + 1
    assert by_state == {"succeeded": 2, "cancelled": 1}
    for state, count in by_state.items():
        assert value(scraped, "corral_jobs_finished_total", state=state) == count
    assert value(scraped, "corral_jobs_finished_total", state="failed") == 0
    started = [job for job in (*finished, store.get(running.id)) if job.started_at is not None]
    assert value(scraped, "corral_jobs_started_total") == len(started) == 3

    ran = [job for job in finished if job.started_at is not None]
    durations = [seconds(job.finished_at, job.started_at) for job in ran]
    waits = [seconds(job.started_at, job.created_at) for job in ran]
    assert value(scraped, "corral_job_duration_seconds_count") == len(ran) == 2
    assert value(scraped, "corral_job_duration_seconds_sum") == pytest.approx(sum(durations))
    assert value(scraped, "corral_job_queue_wait_seconds_sum") == pytest.approx(sum(waits))
    assert value(scraped, "corral_job_duration_seconds_bucket", le="+Inf") == 2
    assert scraped["types"]["corral_job_duration_seconds"] == "histogram"

    for model, jobs in (("opus", [store.get(opus.id)]), ("default", [store.get(plain.id), store.get(dropped.id)])):
        results = [job.result for job in jobs if job.result is not None]
        assert value(scraped, "corral_tokens_total", model=model, kind="input") == sum(
            r.usage.input_tokens for r in results
        )
        assert value(scraped, "corral_tokens_total", model=model, kind="output") == sum(
            r.usage.output_tokens for r in results
        )
        assert value(scraped, "corral_cost_usd_total", model=model) == pytest.approx(
            sum(r.cost_usd or 0 for r in results)
        )
    assert value(scraped, "corral_egress_decisions_total", verdict="deny") == egress["deny"]
    assert value(scraped, "corral_egress_decisions_total", verdict="allow") == egress["allow"]
    report = credential_report(settings.home, ENV)
    assert report["hours_remaining"] is None  # an API key does not expire: no sample
    assert not [key for key in scraped["samples"] if key[0] == "corral_credential_hours_remaining"]

    # a second scrape counts nothing twice
    for key, number in scraped["samples"].items():
        if key[0].startswith(("corral_jobs_", "corral_job_", "corral_tokens", "corral_cost")):
            assert again["samples"][key] == number, key


def test_jobs_that_finished_before_the_process_started_are_not_counted(settings: Settings, store: JobStore) -> None:
    pool = FakePool(settings, store)
    old = pool.finish(pool.submit("p", REPO).id)
    with InProcess(create_app(settings, pool=pool, store=store, environ=ENV)) as api:
        new = pool.finish(pool.submit("p", REPO).id)
        scraped = scrape(api)
    assert isinstance(old, Job)
    assert old.finished_at is not None
    assert new.finished_at is not None
    assert old.finished_at < new.finished_at
    assert value(scraped, "corral_jobs_finished_total", state="succeeded") == 1


def test_a_job_committed_late_is_still_counted_once(settings: Settings, store: JobStore) -> None:
    pool = FakePool(settings, store)
    with InProcess(create_app(settings, pool=pool, store=store, environ=ENV)) as api:
        first = pool.finish(pool.submit("p", REPO).id)
        late = pool.finish(pool.submit("p", REPO).id)
        assert isinstance(store, SqlJobStore)
        assert first.finished_at is not None
        with store.engine.begin() as conn:  # as if its writer committed after a scrape that saw a newer finish
            conn.execute(update(JOBS).where(JOBS.c.id == late.id).values(finished_at=None))
        before = value(scrape(api), "corral_jobs_finished_total", state="succeeded")
        with store.engine.begin() as conn:
            conn.execute(update(JOBS).where(JOBS.c.id == late.id).values(finished_at=first.finished_at))
        after = value(scrape(api), "corral_jobs_finished_total", state="succeeded")
        last = value(scrape(api), "corral_jobs_finished_total", state="succeeded")
    assert (before, after, last) == (1, 2, 2)


def test_metrics_need_jobs_read_once_auth_is_on(settings: Settings, store: JobStore) -> None:
    secured = Settings(home=settings.home, runner_secret="metrics-secret")
    with InProcess(create_app(secured, pool=FakePool(secured, store), store=store, environ=ENV)) as api:
        refused = api.get("/metrics")
        allowed = api.get("/metrics", headers={"X-Runner-Secret": "metrics-secret"})
    assert (refused.status_code, allowed.status_code) == (401, 200)


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram(DURATION_BUCKETS)
    for number in (5.0, 10.0, 11.0, 10_000.0):
        histogram.observe(number)
    buckets = dict(histogram.buckets())
    assert (buckets["10.0"], buckets["30.0"], buckets["7200.0"], buckets["+Inf"]) == (2, 3, 3, 4)
    assert histogram.sum == 10_026.0
