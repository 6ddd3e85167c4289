"""The job store on SQLAlchemy: SQLite on one machine, and any database SQLAlchemy speaks later.

Every write runs in one transaction that first reads the job row ``FOR UPDATE``; on SQLite
that transaction starts with ``BEGIN IMMEDIATE`` (the write lock is taken before the read),
so writers queue behind it (this process's on a lock of its own, other processes' through
WAL and ``busy_timeout``) instead of reading a state that is about to change. On SQLite an
appended event is one statement that takes its own seq, without ``BEGIN`` or that read, and the
one-statement reads have no ``BEGIN`` either: each round trip gives up the GIL. A move and the
log entries that go with it (its ``state`` event) are one transaction, and the statements of
these paths are built once.
The schema is owned by the alembic migrations in ``migrations/``; ``SqlJobStore.open`` brings a
database to their head.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    DateTime,
    Dialect,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from corral.errors import ConflictError, NotFoundError, SettingsError, UsageError
from corral.jobs.models import TERMINAL, Event, Job, JobOptions, JobResult, JobState, next_state, utc_now

__all__ = ["HEAD_REVISION", "TOKENS", "Base", "EventRow", "JobRow", "SqlJobStore", "TokenRow"]

HEAD_REVISION = "0003"
"""The newest migration in ``migrations/versions``; a test keeps it equal to alembic's head."""

BUSY_TIMEOUT_MS = 30_000
"""How long an SQLite writer waits for another one before giving up."""

_CHANGES = frozenset({"result", "error", "session_id", "options", "owner", "heartbeat_at", "attempts"})


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite stores it naive, in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            msg = f"The time {value.isoformat()} has no timezone; corral stores every time in UTC."
            raise UsageError(msg)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class JobRow(Base):
    """One job; ``options`` and ``result`` hold the JSON of ``JobOptions`` and ``JobResult``."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index(None, "state", "created_at"),
        Index(None, "created_at"),
        Index(None, "idempotency_key", unique=True),
        Index(None, "parent_id"),
        Index(None, "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    repo: Mapped[str] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(Text)
    agent: Mapped[str] = mapped_column(String(64))
    options: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    session_id: Mapped[str | None] = mapped_column(String(128))
    owner: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    parent_id: Mapped[str | None] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))


class EventRow(Base):
    """One line of a job's event log; the primary key (job_id, seq) keeps ``seq`` unique per job."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)


class TokenRow(Base):
    """One API token: only the SHA-256 of its value is stored; ``scopes`` are separated by spaces."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index(None, "token_hash", unique=True),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


JOBS = cast(Table, JobRow.__table__)
EVENTS = cast(Table, EventRow.__table__)
TOKENS = cast(Table, TokenRow.__table__)


def _job(row: Row[Any]) -> Job:
    return Job(
        id=row.id,
        prompt=row.prompt,
        repo=row.repo,
        ref=row.ref,
        agent=row.agent,
        options=JobOptions.from_dict(json.loads(row.options)),
        state=JobState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        result=None if row.result is None else JobResult.from_dict(json.loads(row.result)),
        error=row.error,
        session_id=row.session_id,
        owner=row.owner,
        heartbeat_at=row.heartbeat_at,
        attempts=row.attempts,
        parent_id=row.parent_id,
        idempotency_key=row.idempotency_key,
    )


def _not_found(job_id: str) -> NotFoundError:
    return NotFoundError(f"No job has the id {job_id!r}; `corral jobs list` shows the jobs.")


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode (the file keeps it). The switch takes an exclusive lock, and
    SQLite answers "locked" at once, without its busy handler, while another connection holds the
    write lock (as when two processes create a new store together); so a locked switch is tried
    again, within ``BUSY_TIMEOUT_MS``."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _sqlite_setup(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and transactions that corral begins itself."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # pysqlite must not begin or commit on its own
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _wal(cursor)
        for pragma in ("synchronous=NORMAL", "foreign_keys=ON"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        options = connection.get_execution_options()
        if options.get("corral_one_statement", False):
            return  # one statement is a transaction of its own
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get("corral_write", False) else "BEGIN")


class SqlJobStore:
    """``JobStore`` on an SQLAlchemy engine; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(corral_write=True)
        self._one_writer = engine.dialect.name == "sqlite"
        """Whether the database lets one writer in at a time (SQLite): then one statement needs
        neither a transaction around it nor a row lock before it."""
        self._statement = engine.execution_options(corral_one_statement=True)
        """Runs one statement (a read, or a write behind ``_write_lock``) without ``BEGIN`` and
        ``COMMIT``: two round trips fewer, in each of which the thread would give up the GIL."""
        self._write_lock = threading.Lock() if self._one_writer else contextlib.nullcontext()
        """SQLite's own wait for its write lock polls in sleeps of 1 to 100 ms; this process's writers
        queue on a lock of their own instead (other processes still meet ``busy_timeout``)."""

    @contextlib.contextmanager
    def _writing(self, *, one_statement: bool = False) -> Iterator[Connection]:
        """A write transaction, behind this process's other writers; for ``one_statement`` (on a
        database that lets one writer in at a time), the statement's own transaction."""
        writer = self._statement if one_statement and self._one_writer else self._writer
        with self._write_lock, writer.begin() as conn:
            yield conn

    @classmethod
    def open(cls, url: str) -> SqlJobStore:
        """Connect to ``url`` and migrate its schema to the newest revision."""
        engine = create_engine(url)
        if engine.dialect.name == "sqlite":
            _sqlite_setup(engine)
        store = cls(engine)
        try:
            store._migrate()
        except DBAPIError as err:
            engine.dispose()
            msg = f"The job store {store._name} cannot be opened ({err.orig}); check database_url and its permissions."
            raise SettingsError(msg) from None
        except BaseException:
            engine.dispose()
            raise
        return store

    @property
    def engine(self) -> Engine:
        """The engine, for the tables that share this database (``corral.api.tokens``, ``corral.api.metrics``)."""
        return self._engine

    @property
    def writer(self) -> Engine:
        """The engine whose transactions take the write lock first (``BEGIN IMMEDIATE`` on SQLite)."""
        return self._writer

    @property
    def _name(self) -> str:
        return self._engine.url.render_as_string(hide_password=True)

    def _revisions(self) -> builtins.list[str]:
        with self._engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return []
            return builtins.list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())

    def _migrate(self) -> None:
        if self._revisions() == [HEAD_REVISION]:
            return  # the fast path: alembic is not even imported
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        config = Config()
        config.set_main_option("script_location", "corral.jobs:migrations")
        known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
        unknown = [revision for revision in self._revisions() if revision not in known]
        if unknown:
            msg = (
                f"The job store {self._name} has the schema revision {unknown[0]!r}, which this "
                "corral does not know: a newer corral wrote it. Upgrade corral, or set database_url to another store."
            )
            raise SettingsError(msg)
        with self._writing() as conn:  # one writer migrates; the others wait, then find it done
            config.attributes["connection"] = conn
            command.upgrade(config, "head")

    def close(self) -> None:
        self._engine.dispose()

    def add(self, job: Job, *, log: Sequence[tuple[str, str]] = ()) -> Job:
        if job.state is not JobState.QUEUED:
            msg = f"A job is stored as queued before anything else happens; job {job.id!r} is {job.state}."
            raise ConflictError(msg)
        _check_log(log)
        try:
            with self._writing() as conn:
                if job.idempotency_key is not None:
                    row = conn.execute(_BY_KEY, {"key": job.idempotency_key}).one_or_none()
                    if row is not None:
                        return _job(row)
                conn.execute(_INSERT_JOB, self._columns(job))
                _append(conn, job.id, log, job.created_at, last=0)
        except IntegrityError:
            if job.idempotency_key is not None:  # another database client stored the key first
                with self._engine.connect() as conn:
                    row = conn.execute(_BY_KEY, {"key": job.idempotency_key}).one_or_none()
                if row is not None:
                    return _job(row)
            msg = f"A job with the id {job.id!r} is already stored; give the new job another id."
            raise ConflictError(msg) from None
        return job

    def claim(self, owner: str) -> Job | None:
        now = utc_now()
        with self._writing() as conn:
            row = conn.execute(_OLDEST_QUEUED).one_or_none()
            if row is None:
                return None
            values = {
                "state": JobState.PREPARING.value,
                "owner": owner,
                "heartbeat_at": now,
                "attempts": row.attempts + 1,
                "updated_at": now,
            }
            moved = self._set(conn, row.id, JobState.QUEUED.value, values)
            if moved is None:
                return None  # taken by a database without the lock semantics we asked for; look again
            _append(conn, row.id, (("state", JobState.PREPARING.value),), now)
        return _job(moved)

    def _set(self, conn: Connection, job_id: str, state: str, values: dict[str, Any]) -> Row[Any] | None:
        """Set ``values`` on the job if it is still in ``state`` (a compare-and-set); the new row, or None."""
        where = {"b_id": job_id, "b_state": state}
        if self._engine.dialect.update_returning:
            return conn.execute(_SET_RETURNING, {**values, **where}).one_or_none()
        if conn.execute(_SET, {**values, **where}).rowcount != 1:
            return None
        return conn.execute(_JOB, {"job_id": job_id}).one()

    @staticmethod
    def _columns(job: Job) -> dict[str, Any]:
        return {
            "id": job.id,
            "prompt": job.prompt,
            "repo": job.repo,
            "ref": job.ref,
            "agent": job.agent,
            "options": json.dumps(job.options.to_dict()),
            "state": job.state.value,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "result": None if job.result is None else json.dumps(job.result.to_dict()),
            "error": job.error,
            "session_id": job.session_id,
            "owner": job.owner,
            "heartbeat_at": job.heartbeat_at,
            "attempts": job.attempts,
            "parent_id": job.parent_id,
            "idempotency_key": job.idempotency_key,
        }

    def get(self, job_id: str) -> Job:
        with self._statement.connect() as conn:
            row = conn.execute(_JOB, {"job_id": job_id}).one_or_none()
        if row is None:
            raise _not_found(job_id)
        return _job(row)

    def list(self, *, state: JobState | None = None, limit: int = 50, offset: int = 0) -> builtins.list[Job]:
        if limit < 1 or offset < 0:
            msg = f"A page of jobs needs a limit of 1 or more and an offset of 0 or more, not {limit} and {offset}."
            raise UsageError(msg)
        query = select(JOBS).order_by(JOBS.c.created_at.desc(), JOBS.c.id.desc()).limit(limit).offset(offset)
        if state is not None:
            query = query.where(JOBS.c.state == JobState(state).value)
        with self._statement.connect() as conn:
            return [_job(row) for row in conn.execute(query)]

    def update(
        self, job_id: str, *, state: JobState | None = None, log: Sequence[tuple[str, str]] = (), **changes: Any
    ) -> Job:
        unknown = sorted(set(changes) - _CHANGES)
        if unknown:
            msg = f"A job update cannot change {unknown[0]!r}; it can change: state, {', '.join(sorted(_CHANGES))}."
            raise UsageError(msg)
        plain = ("error", "session_id", "owner", "heartbeat_at", "attempts")
        values: dict[str, Any] = {name: changes[name] for name in plain if name in changes}
        if "options" in changes:
            options = changes["options"]
            if not isinstance(options, JobOptions):
                msg = f"A job's options are JobOptions, not {type(options).__name__}."
                raise UsageError(msg)
            values["options"] = json.dumps(options.to_dict())
        if "result" in changes:
            result = changes["result"]
            if result is not None and not isinstance(result, JobResult):
                msg = f"A job's result is a JobResult or None, not {type(result).__name__}."
                raise UsageError(msg)
            values["result"] = None if result is None else json.dumps(result.to_dict())
        _check_log(log)
        with self._writing() as conn:
            current = conn.execute(_STATE_LOCKED, {"job_id": job_id}).scalar_one_or_none()
            if current is None:
                raise _not_found(job_id)
            now = utc_now()
            values["updated_at"] = now
            if state is not None:
                new = next_state(JobState(current), JobState(state))
                values["state"] = new.value
                if new is JobState.RUNNING:
                    values["started_at"] = now
                if new in TERMINAL:
                    values["finished_at"] = now
            # The state in the WHERE clause makes this a compare-and-set even without the lock.
            row = self._set(conn, job_id, current, values)
            if row is None:
                msg = f"Job {job_id!r} changed state while it was being updated; read it again and retry."
                raise ConflictError(msg)
            _append(conn, job_id, log, now)
        return _job(row)

    def append_event(self, job_id: str, kind: str, data: str) -> Event:
        _check_log(((kind, data),))
        at = utc_now()
        try:
            with self._writing(one_statement=True) as conn:
                # Locking the job row serialises the writers of one job on databases with row locks.
                if not self._one_writer and conn.execute(_STATE_LOCKED, {"job_id": job_id}).first() is None:
                    raise _not_found(job_id)
                seq = _append(conn, job_id, ((kind, data),), at)
        except IntegrityError:  # the events' foreign key: no such job
            raise _not_found(job_id) from None
        return Event(job_id=job_id, seq=seq, at=at, kind=kind, data=data)

    def events(self, job_id: str, *, after: int = 0, limit: int | None = None) -> builtins.list[Event]:
        query = select(EVENTS).where(EVENTS.c.job_id == job_id, EVENTS.c.seq > after).order_by(EVENTS.c.seq)
        if limit is not None:
            if limit < 0:
                msg = f"The number of events to read must be 0 or more, not {limit}."
                raise UsageError(msg)
            query = query.limit(limit)
        with self._engine.connect() as conn:
            found = [Event(job_id=r.job_id, seq=r.seq, at=r.at, kind=r.kind, data=r.data) for r in conn.execute(query)]
            if not found and conn.execute(select(JOBS.c.id).where(JOBS.c.id == job_id)).one_or_none() is None:
                raise _not_found(job_id)
        return found


def _check_log(log: Sequence[tuple[str, str]]) -> None:
    for kind, _data in log:
        if not kind or len(kind) > 32:
            msg = f"An event kind is a name of 1 to 32 characters, not {kind!r}."
            raise UsageError(msg)


def _append(
    conn: Connection, job_id: str, log: Sequence[tuple[str, str]], at: datetime, *, last: int | None = None
) -> int:
    """Append ``log`` (kind, data) to the job's events after ``last`` (default: its newest); the seq
    of the last entry appended (0 if none was, without ``last``).

    Without ``last``, each entry takes the job's next seq in the statement that inserts it where
    the database returns inserted values; elsewhere the newest seq is read first.
    """
    if last is None and conn.dialect.insert_returning:
        seq = 0
        for kind, data in log:
            seq = conn.execute(_NEXT_EVENT, {"job_id": job_id, "at": at, "kind": kind, "data": data}).scalar_one()
        return seq
    if last is None:
        last = conn.execute(_LAST_SEQ, {"job_id": job_id}).scalar_one()
    for seq, (kind, data) in enumerate(log, last + 1):
        conn.execute(_INSERT_EVENT, {"job_id": job_id, "seq": seq, "at": at, "kind": kind, "data": data})
    return last + len(log)


# The statements of the hot paths, built once: SQLAlchemy keys its cache of compiled SQL by a key it
# computes from the statement object and remembers on it, so reusing one skips building and keying.
_JOB = select(JOBS).where(JOBS.c.id == bindparam("job_id"))
_STATE_LOCKED = select(JOBS.c.state).where(JOBS.c.id == bindparam("job_id")).with_for_update()
_BY_KEY = select(JOBS).where(JOBS.c.idempotency_key == bindparam("key"))
_OLDEST_QUEUED = (
    select(JOBS)
    .where(JOBS.c.state == JobState.QUEUED.value)
    .order_by(JOBS.c.created_at, JOBS.c.id)
    .limit(1)
    .with_for_update(skip_locked=True)
)
_SET = update(JOBS).where(JOBS.c.id == bindparam("b_id"), JOBS.c.state == bindparam("b_state"))
"""Sets the columns named by the parameters (besides ``b_id`` and ``b_state``)."""
_SET_RETURNING = _SET.returning(*JOBS.c)
_INSERT_JOB = insert(JOBS)
_INSERT_EVENT = insert(EVENTS)
_LAST_SEQ = select(func.coalesce(func.max(EVENTS.c.seq), 0)).where(EVENTS.c.job_id == bindparam("job_id"))
_EVENT_JOB = bindparam("job_id", type_=EVENTS.c.job_id.type)
_NEXT_EVENT = (
    insert(EVENTS)
    .from_select(
        ["job_id", "seq", "at", "kind", "data"],
        select(
            _EVENT_JOB,
            func.coalesce(func.max(EVENTS.c.seq), 0) + 1,
            bindparam("at", type_=EVENTS.c.at.type),
            bindparam("kind", type_=EVENTS.c.kind.type),
            bindparam("data", type_=EVENTS.c.data.type),
        ).where(EVENTS.c.job_id == _EVENT_JOB),
    )
    .returning(EVENTS.c.seq)
)
"""Appends one event with the job's next seq, in one statement."""
