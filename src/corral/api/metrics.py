"""``GET /metrics``: Prometheus text, read from the pool and the store at scrape time.

The job counters and histograms count the jobs that finished since this process started: each
scrape reads only the jobs that finished since the last one (by ``finished_at``, on its index)
and adds them to running totals, so a scrape costs the same whatever the store's size. They are
store-wide: on a database that several runners share, each reports the same job numbers.
"""

from __future__ import annotations

import bisect
import json
import threading
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from corral.api.auth import AuthRequired

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from corral.api.app import Service

__all__ = ["DURATION_BUCKETS", "WAIT_BUCKETS", "Histogram", "JobTally", "RunnerCollector", "registry", "router"]

DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
"""Upper bounds, in seconds, of ``corral_job_duration_seconds`` (running to the end state)."""
WAIT_BUCKETS = (0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Upper bounds, in seconds, of ``corral_job_queue_wait_seconds`` (submitted to running)."""
BATCH = 500
"""Finished jobs read per query."""
LOOKBACK = timedelta(seconds=60)
"""Each scrape reads again this far behind the newest finish it saw (a writer may commit late)."""
TOKEN_KINDS = ("input", "output", "cache_creation", "cache_read")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

router = APIRouter(tags=["health"])


class Histogram:
    """Counts per bucket and a sum; ``buckets()`` in Prometheus' cumulative form."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        total, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class JobTally:
    """Running totals of the jobs that finished since ``since``; ``update`` reads the new ones."""

    def __init__(self, since: datetime) -> None:
        self.since = since
        self.finished: dict[str, int] = {state: 0 for state in ("succeeded", "failed", "cancelled", "timed_out")}
        self.started = 0
        """Jobs that finished and had entered ``running`` since ``since``."""
        self.duration = Histogram(DURATION_BUCKETS)
        self.wait = Histogram(WAIT_BUCKETS)
        self.tokens: dict[tuple[str, str], int] = {}
        self.cost: dict[str, float] = {}
        self.seen: dict[str, datetime] = {}
        """Jobs counted whose finish is within ``LOOKBACK`` of the newest one: never counted twice."""
        self.newest = since
        self.lock = threading.Lock()

    def add(self, row: Any) -> None:
        """Count one finished job (a row of ``jobs``)."""
        self.seen[row.id] = row.finished_at
        self.finished[row.state] = self.finished.get(row.state, 0) + 1
        if row.started_at is not None and row.started_at >= self.since:
            self.started += 1
            self.duration.observe(max((row.finished_at - row.started_at).total_seconds(), 0.0))
            self.wait.observe(max((row.started_at - row.created_at).total_seconds(), 0.0))
        model = json.loads(row.options).get("model") or "default"
        result = json.loads(row.result) if row.result else {}
        usage = result.get("usage") or {}
        for kind in TOKEN_KINDS:
            key = (model, kind)
            self.tokens[key] = self.tokens.get(key, 0) + int(usage.get(f"{kind}_tokens") or 0)
        self.cost[model] = self.cost.get(model, 0.0) + float(result.get("cost_usd") or 0.0)

    def update(self, engine: Engine, limit: int = 20 * BATCH) -> None:
        """Count the jobs that finished since the last update, at most ``limit`` of them (the rest next time)."""
        from sqlalchemy import and_, or_, select

        from corral.jobs.sql import JOBS

        columns = [JOBS.c[name] for name in ("id", "state", "options", "result", "created_at", "started_at")]
        query = select(*columns, JOBS.c.finished_at).where(JOBS.c.finished_at.is_not(None))
        start = max(self.since, self.newest - LOOKBACK)
        cursor: tuple[datetime, str] | None = None
        read = 0
        with self.lock, engine.connect() as conn:
            while read < limit:
                if cursor is None:
                    where = JOBS.c.finished_at >= start
                else:
                    at, last = cursor
                    where = or_(JOBS.c.finished_at > at, and_(JOBS.c.finished_at == at, JOBS.c.id > last))
                page = conn.execute(query.where(where).order_by(JOBS.c.finished_at, JOBS.c.id).limit(BATCH)).all()
                for row in page:
                    if row.id not in self.seen:
                        self.add(row)
                    self.newest = max(self.newest, row.finished_at)
                read += len(page)
                if len(page) < BATCH:
                    break
                cursor = (page[-1].finished_at, page[-1].id)
            self.seen = {job: at for job, at in self.seen.items() if at >= self.newest - LOOKBACK}


class RunnerCollector:
    """The collector of one application: the pool's gauges, the store's counts, egress, the credential."""

    def __init__(self, service: Service, since: datetime) -> None:
        self.service = service
        self.tally = JobTally(since)

    def describe(self) -> list[Metric]:
        return []  # registering must not read the store

    def collect(self) -> Iterator[Metric]:
        from corral import __version__
        from corral.api.health import credential_report
        from corral.egress.proxy import DECISIONS

        service, pool = self.service, self.service.pool
        info = GaugeMetricFamily("corral_runner_info", "The runner's id and version.", labels=["runner_id", "version"])
        info.add_metric([pool.runner_id, __version__], 1.0)
        yield info
        yield GaugeMetricFamily("corral_runner_capacity", "Jobs this runner runs at once.", value=pool.capacity)
        yield GaugeMetricFamily("corral_runner_active_sessions", "Jobs running now.", value=pool.active_sessions)
        engine = _engine(service)
        tally = self.tally
        tally.update(engine)  # before _live: a job that ends in between is missed once, never counted twice
        queued, live_started = self._live(engine)
        yield GaugeMetricFamily("corral_queue_depth", "Jobs queued, waiting for a runner.", value=queued)
        with tally.lock:
            yield CounterMetricFamily(
                "corral_jobs_started", "Jobs that entered running since start.", value=tally.started + live_started
            )
            finished = CounterMetricFamily("corral_jobs_finished", "Jobs that ended, by state.", labels=["state"])
            for state, count in sorted(tally.finished.items()):
                finished.add_metric([state], count)
            yield finished
            for name, doc, histogram in (
                ("corral_job_duration_seconds", "From running to the end state.", tally.duration),
                ("corral_job_queue_wait_seconds", "From submitted to running.", tally.wait),
            ):
                yield HistogramMetricFamily(name, doc, buckets=histogram.buckets(), sum_value=histogram.sum)
            tokens = CounterMetricFamily("corral_tokens", "Tokens used by finished jobs.", labels=["model", "kind"])
            for (model, kind), count in sorted(tally.tokens.items()):
                tokens.add_metric([model, kind], count)
            yield tokens
            cost = CounterMetricFamily("corral_cost_usd", "Estimated cost of finished jobs.", labels=["model"])
            for model, usd in sorted(tally.cost.items()):
                cost.add_metric([model], usd)
            yield cost
        egress = CounterMetricFamily("corral_egress_decisions", "Egress decisions, by verdict.", labels=["verdict"])
        for verdict, count in sorted(DECISIONS.counts().items()):
            egress.add_metric([verdict], count)
        yield egress
        hours = credential_report(service.settings.home, service.environ)["hours_remaining"]
        credential = GaugeMetricFamily("corral_credential_hours_remaining", "Hours until the credential expires.")
        if hours is not None:  # unknown for tokens and keys: no sample
            credential.add_metric([], float(hours))
        yield credential

    def _live(self, engine: Engine) -> tuple[int, int]:
        """Jobs queued now, and unfinished jobs that entered running since start (not yet in the tally)."""
        from sqlalchemy import func, select

        from corral.jobs.models import JobState
        from corral.jobs.sql import JOBS

        unfinished = [JobState.QUEUED, JobState.PREPARING, JobState.RUNNING, JobState.INTERRUPTED]
        with engine.connect() as conn:
            queued = conn.execute(select(func.count()).where(JOBS.c.state == JobState.QUEUED.value)).scalar_one()
            query = select(func.count()).where(
                JOBS.c.state.in_([state.value for state in unfinished]), JOBS.c.started_at >= self.tally.since
            )
            started = conn.execute(query).scalar_one()
        return int(queued), int(started)


def _engine(service: Service) -> Engine:
    from corral.jobs.sql import SqlJobStore

    store = service.store
    if not isinstance(store, SqlJobStore):
        msg = f"/metrics reads an SQL job store, and {type(store).__name__} is not one."
        raise TypeError(msg)
    return store.engine


def registry(service: Service, since: datetime) -> CollectorRegistry:
    """A registry of its own for one application (never the global one: apps come and go in tests)."""
    own = CollectorRegistry(auto_describe=False)
    own.register(RunnerCollector(service, since))
    return own


@router.get("/metrics", dependencies=[AuthRequired], response_class=Response)
def metrics(request: Request) -> Response:
    """The runner's metrics in the Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE)
