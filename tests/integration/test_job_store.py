"""The SQL job store on real SQLite files, with real threads and real processes."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event

import corral.jobs
from corral.errors import ConflictError, NotFoundError, SettingsError, UsageError
from corral.jobs.models import Job, JobOptions, JobResult, JobState, Usage, new_job
from corral.jobs.sql import HEAD_REVISION, Base, SqlJobStore, _wal
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings

S = JobState


def _said_ready(proc: subprocess.Popen[str]) -> bool:
    """Whether the child said "ready"; when it died first, fail with what it printed on stderr."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = proc.stdout.readline()
    assert line, f"the child ended before it was ready: {proc.stderr.read()[-3000:]}"
    return line.strip() == "ready"


# A separate process that opens the store, says "ready", reads a job id, appends N events.
APPENDER = """
import sys
from pathlib import Path
from corral.jobs.store import open_store
from corral.settings import Settings

home, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = open_store(Settings(home=Path(home)))
print("ready", flush=True)
job_id = sys.stdin.readline().strip()
for i in range(count):
    store.append_event(job_id, "note", f"{tag}:{i}")
store.close()
print("done", flush=True)
"""

# A separate process that claims jobs until none is left and prints the ids it got.
CLAIMER = """
import sys
from pathlib import Path
from corral.jobs.store import open_store
from corral.settings import Settings

store = open_store(Settings(home=Path(sys.argv[1])))
print("ready", flush=True)
sys.stdin.readline()
got = []
while (job := store.claim(sys.argv[2])) is not None:
    got.append(job.id)
store.close()
print(" ".join(got), flush=True)
"""

# A separate process that times opening an up-to-date store and says whether alembic was loaded.
OPENER = """
import sys, time
from pathlib import Path
from corral.jobs.store import open_store
from corral.settings import Settings

start = time.perf_counter()
import corral.jobs.sql, sqlalchemy.dialects.sqlite  # what the first open imports; timed on its own
imported = time.perf_counter()
store = open_store(Settings(home=Path(sys.argv[1])))
opened = time.perf_counter()
store.close()
print(f"{(imported - start) * 1000:.1f} {(opened - imported) * 1000:.1f} {'alembic' in sys.modules}")
"""


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


def _in_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released together; their results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    return results


def test_add_get_update_events(store: JobStore) -> None:
    job = store.add(new_job("Fix it", "https://example.com/r.git", ref="dev", options=JobOptions(max_turns=3)))
    assert store.get(job.id) == job

    preparing = store.update(job.id, state=S.PREPARING)
    assert preparing.state is S.PREPARING
    assert preparing.updated_at > job.updated_at
    assert preparing.started_at is None

    running = store.update(job.id, state=S.RUNNING, session_id="sess-1")
    assert running.started_at is not None
    assert running.started_at == running.updated_at
    assert running.finished_at is None
    assert running.session_id == "sess-1"

    result = JobResult(is_error=False, reason="completed", usage=Usage(5, 6), files_changed=("a.txt",))
    done = store.update(job.id, state=S.SUCCEEDED, result=result)
    assert done.finished_at == done.updated_at
    assert done.started_at == running.started_at
    assert done.result == result
    assert store.get(job.id) == done

    noted = store.update(job.id, error="a note after the end")
    assert noted.state is S.SUCCEEDED
    assert noted.error == "a note after the end"

    first = store.append_event(job.id, "state", "queued")
    second = store.append_event(job.id, "agent", '{"type":"system","subtype":"init"}')
    assert (first.seq, second.seq) == (1, 2)
    assert store.events(job.id) == [first, second]
    assert store.events(job.id, after=1) == [second]
    assert store.events(job.id, limit=1) == [first]
    assert store.events(job.id, after=2) == []


def test_update_refuses_a_transition_the_rules_refuse(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    with pytest.raises(ConflictError, match="from queued to succeeded"):
        store.update(job.id, state=S.SUCCEEDED, error="x")
    assert store.get(job.id) == job  # nothing of the refused update was written
    with pytest.raises(UsageError, match="cannot change 'prompt'"):
        store.update(job.id, prompt="other")


def test_update_and_add_write_their_log_in_the_same_transaction(store: JobStore) -> None:
    job = store.add(new_job("p", "r"), log=(("state", "queued"), ("note", "from the API")))
    assert [(e.seq, e.kind, e.data) for e in store.events(job.id)] == [
        (1, "state", "queued"),
        (2, "note", "from the API"),
    ]
    store.append_event(job.id, "agent", "a line")
    moved = store.update(job.id, state=S.PREPARING, owner="r-1", log=(("note", "claimed"), ("state", "preparing")))
    assert moved.owner == "r-1"
    events = store.events(job.id)
    assert [(e.seq, e.data) for e in events[-2:]] == [(4, "claimed"), (5, "preparing")]
    assert {e.at for e in events[-2:]} == {moved.updated_at}
    with pytest.raises(ConflictError, match="from preparing to queued"):
        store.update(job.id, state=S.QUEUED, log=(("state", "queued"),))
    with pytest.raises(UsageError, match="An event kind is a name of 1 to 32 characters"):
        store.update(job.id, state=S.RUNNING, log=(("", "x"),))
    assert store.get(job.id) == moved  # neither refused update wrote anything, nor its log
    assert len(store.events(job.id)) == 5
    keyed = store.add(new_job("p", "r", idempotency_key="k"), log=(("state", "queued"),))
    assert store.add(new_job("p", "r", idempotency_key="k"), log=(("state", "queued"),)) == keyed
    assert len(store.events(keyed.id)) == 1  # the stored job's log is not written again


def test_an_interrupted_job_can_be_queued_again(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    for state in (S.PREPARING, S.RUNNING, S.INTERRUPTED, S.QUEUED, S.PREPARING, S.RUNNING, S.TIMED_OUT):
        job = store.update(job.id, state=state)
    assert job.state is S.TIMED_OUT
    assert job.finished_at is not None
    with pytest.raises(ConflictError, match="the job has ended"):
        store.update(job.id, state=S.QUEUED)


def test_add_refuses_a_taken_id_and_a_job_that_is_not_queued(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    with pytest.raises(ConflictError, match=f"A job with the id '{job.id}' is already stored"):
        store.add(dataclasses.replace(job, prompt="other"))
    with pytest.raises(ConflictError, match="is running"):
        store.add(dataclasses.replace(new_job("p", "r"), state=S.RUNNING))
    assert store.get(job.id).prompt == "p"


def test_an_unknown_job_is_not_found(store: JobStore) -> None:
    message = "No job has the id 'nope'; `corral jobs list` shows the jobs."
    calls: list[Callable[[], object]] = [
        lambda: store.get("nope"),
        lambda: store.update("nope", state=S.PREPARING),
        lambda: store.append_event("nope", "note", "x"),
        lambda: store.events("nope"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as info:
            call()
        assert str(info.value) == message


def test_list_is_newest_first_and_filters(store: JobStore) -> None:
    base = new_job("p", "r").created_at
    jobs = []
    for minutes in (3, 1, 2):
        job = new_job(f"job {minutes}", "r")
        at = base + timedelta(minutes=minutes)
        jobs.append(store.add(dataclasses.replace(job, created_at=at, updated_at=at)))
    store.update(jobs[0].id, state=S.CANCELLED)

    assert [job.prompt for job in store.list()] == ["job 3", "job 2", "job 1"]
    assert [job.prompt for job in store.list(limit=2)] == ["job 3", "job 2"]
    assert [job.prompt for job in store.list(state=S.QUEUED)] == ["job 2", "job 1"]
    assert [job.state for job in store.list(state=S.CANCELLED)] == [S.CANCELLED]
    assert store.list(state=S.RUNNING) == []
    assert [job.prompt for job in store.list(limit=2, offset=1)] == ["job 2", "job 1"]
    assert store.list(offset=3) == []
    with pytest.raises(UsageError, match="a limit of 1 or more and an offset of 0 or more, not 0 and 0"):
        store.list(limit=0)
    with pytest.raises(UsageError, match="not 1 and -1"):
        store.list(limit=1, offset=-1)


def test_two_threads_moving_one_job_from_the_same_state_do_not_both_win(store: JobStore) -> None:
    for _ in range(20):
        job_id = store.add(new_job("p", "r")).id

        def move(_i: int, job_id: str = job_id) -> Job:
            return store.update(job_id, state=S.PREPARING)

        outcomes = _in_threads(2, move)
        winners = [outcome for outcome in outcomes if isinstance(outcome, Job)]
        losers = [outcome for outcome in outcomes if isinstance(outcome, ConflictError)]
        assert len(winners) == 1, outcomes
        assert len(losers) == 1, outcomes
        assert "from preparing to preparing" in str(losers[0])
        assert store.get(job_id).state is S.PREPARING


def test_append_event_from_four_threads_numbers_every_event_once(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    outcomes = _in_threads(4, lambda t: [store.append_event(job.id, "note", f"{t}:{i}").seq for i in range(200)])
    assert not [outcome for outcome in outcomes if isinstance(outcome, Exception)], outcomes
    events = store.events(job.id)
    assert [event.seq for event in events] == list(range(1, 801))
    assert sorted(event.data for event in events) == sorted(f"{t}:{i}" for t in range(4) for i in range(200))
    for t, seqs in enumerate(outcomes):
        assert isinstance(seqs, list)
        assert seqs == sorted(seqs)  # one writer sees its own events in order
        assert [int(e.data.split(":")[1]) for e in events if e.data.startswith(f"{t}:")] == list(range(200))


def test_append_event_while_another_thread_moves_the_state(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    states = (S.PREPARING, S.RUNNING, S.SUCCEEDED)

    def work(i: int) -> object:
        if i == 0:
            return [store.append_event(job.id, "agent", f"line {n}").seq for n in range(300)]
        return [store.update(job.id, state=state).state for state in states]

    appended, moved = _in_threads(2, work)
    assert appended == list(range(1, 301))
    assert moved == list(states)


def test_append_event_from_two_processes_numbers_every_event_once(settings: Settings) -> None:
    count = 200
    # The children open the store before it exists, so they also race to create the schema.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(settings.home), tag, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert _said_ready(proc)
        store = open_store(settings)
        try:
            job = store.add(new_job("p", "r"))
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(job.id + "\n")
                proc.stdin.flush()
            mine = [store.append_event(job.id, "note", f"parent:{i}").seq for i in range(50)]
            for proc in procs:
                out, _ = proc.communicate(timeout=120)
                assert proc.returncode == 0
                assert out.strip() == "done"
            events = store.events(job.id)
        finally:
            store.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    total = 2 * count + 50
    assert [event.seq for event in events] == list(range(1, total + 1))
    for tag in ("a", "b"):
        assert [e.data for e in events if e.data.startswith(f"{tag}:")] == [f"{tag}:{i}" for i in range(count)]
    assert mine == sorted(mine)


def test_a_two_megabyte_line_round_trips(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    line = json.dumps({"type": "assistant", "text": "é\u2603x" * (2 * 1024 * 1024 // 3)})
    assert len(line.encode()) > 2 * 1024 * 1024
    store.append_event(job.id, "agent", line)
    store.append_event(job.id, "agent", "next")
    events = store.events(job.id)
    assert events[0].data == line
    assert [event.seq for event in events] == [1, 2]


def test_reopening_keeps_everything(settings: Settings) -> None:
    first = open_store(settings)
    try:
        job = first.add(new_job("p", "r", options=JobOptions(allow_domains=("pypi.org",), push=True)))
        job = first.update(job.id, state=S.PREPARING)
        job = first.update(job.id, state=S.FAILED, error="the clone failed")
        other = first.add(new_job("q", "r"))
        events = [first.append_event(job.id, "note", f"n{i}") for i in range(3)]
    finally:
        first.close()

    again = open_store(settings)
    try:
        assert again.get(job.id) == job
        assert again.get(other.id) == other
        assert again.events(job.id) == events
        assert again.append_event(job.id, "note", "later").seq == 4
    finally:
        again.close()


def test_open_store_makes_home_private(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    opened = open_store(Settings(home=home))
    opened.close()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert (home / "corral.db").is_file()


def test_open_store_uses_database_url(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.db"
    settings = Settings(home=tmp_path / "unused", database_url=f"sqlite:///{target}")
    opened = open_store(settings)
    try:
        job = opened.add(new_job("p", "r"))
    finally:
        opened.close()
    assert not settings.home.exists()
    with sqlite3.connect(target) as conn:
        assert conn.execute("SELECT id FROM jobs").fetchall() == [(job.id,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_the_migrated_schema_matches_the_tables(settings: Settings) -> None:
    open_store(settings).close()
    engine = create_engine(f"sqlite:///{settings.home / 'corral.db'}")
    try:
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            assert MigrationContext.configure(conn).get_current_heads() == (HEAD_REVISION,)
    finally:
        engine.dispose()


def test_head_revision_is_alembics_head_inside_the_package() -> None:
    config = Config()
    config.set_main_option("script_location", "corral.jobs:migrations")
    scripts = ScriptDirectory.from_config(config)
    assert scripts.get_heads() == [HEAD_REVISION]
    package = Path(corral.jobs.__file__).parent
    assert Path(scripts.dir).resolve() == (package / "migrations").resolve()


def test_an_up_to_date_store_opens_without_alembic(settings: Settings) -> None:
    open_store(settings).close()
    out = subprocess.run(
        [sys.executable, "-c", OPENER, str(settings.home)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    imports, opening, alembic_loaded = out.split()
    print(f"opening an up-to-date store took {opening} ms, after {imports} ms of importing SQLAlchemy")
    assert alembic_loaded == "False"


def test_a_store_from_a_newer_corral_is_refused(settings: Settings) -> None:
    open_store(settings).close()
    with sqlite3.connect(settings.home / "corral.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    conn.close()
    with pytest.raises(SettingsError, match="has the schema revision '9999', which this corral does not know"):
        open_store(settings)


def test_a_file_that_is_not_a_database_is_refused(settings: Settings) -> None:
    (settings.home / "corral.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(SettingsError, match=r"cannot be opened \(file is not a database\); check database_url"):
        open_store(settings)


def test_update_and_events_refuse_bad_arguments(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    with pytest.raises(UsageError, match="A job's result is a JobResult or None, not dict"):
        store.update(job.id, result={"is_error": False})
    with pytest.raises(UsageError, match="must be 0 or more, not -1"):
        store.events(job.id, limit=-1)
    with pytest.raises(UsageError, match="An event kind is a name of 1 to 32 characters"):
        store.append_event(job.id, "", "x")
    assert store.get(job.id) == job
    assert store.events(job.id) == []


def test_opening_a_store_while_another_connection_writes_its_new_file_waits_for_it(settings: Settings) -> None:
    """Switching a new database to WAL takes an exclusive lock, and SQLite answers "locked" at once,
    without waiting, while another connection holds the write lock (as when two processes create
    the store together); the opener tries again until the writer is done."""
    settings.home.mkdir(parents=True, exist_ok=True)
    writer = sqlite3.connect(settings.home / "corral.db", isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE another_writer (x)")
    done = threading.Timer(0.3, writer.execute, ("COMMIT",))
    done.start()
    started = time.perf_counter()
    try:
        store = open_store(settings)
    finally:
        done.join()
        writer.close()
    waited = time.perf_counter() - started
    store.close()
    assert waited >= 0.25
    check = sqlite3.connect(settings.home / "corral.db")
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    check.close()


def test_a_locked_switch_to_wal_is_tried_again_and_any_other_error_is_not() -> None:
    class Cursor:
        def __init__(self, *errors: sqlite3.OperationalError) -> None:
            self.errors = list(errors)
            self.calls = 0

        def execute(self, _sql: str) -> None:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    def error(message: str, code: int) -> sqlite3.OperationalError:
        err = sqlite3.OperationalError(message)
        err.sqlite_errorcode = code  # type: ignore[attr-defined]
        return err

    locked = Cursor(error("database is locked", sqlite3.SQLITE_BUSY), error("database is locked", sqlite3.SQLITE_BUSY))
    _wal(locked)
    assert locked.calls == 3
    broken = Cursor(error("disk I/O error", sqlite3.SQLITE_IOERR))
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _wal(broken)
    assert broken.calls == 1


def test_an_append_and_a_read_are_one_statement_each_on_sqlite(store: JobStore) -> None:
    """Each round trip to SQLite gives up the GIL, which a busy server pays for in waits: an appended
    event is one INSERT that takes its own seq, and a job read one SELECT, neither wrapped in
    BEGIN and COMMIT."""
    assert isinstance(store, SqlJobStore)
    job = store.add(new_job("p", "r"))
    sent: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        sent.append(statement.split()[0].upper())

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        assert [store.append_event(job.id, "note", str(i)).seq for i in range(3)] == [1, 2, 3]
        assert sent == ["INSERT"] * 3
        sent.clear()
        assert store.get(job.id).id == job.id
        assert [j.id for j in store.list()] == [job.id]
        assert sent == ["SELECT", "SELECT"]
        sent.clear()
        store.update(job.id, state=S.PREPARING, log=(("state", "preparing"),))
        assert sent == ["BEGIN", "SELECT", "UPDATE", "INSERT"]  # a move and its event: one transaction
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    assert [e.data for e in store.events(job.id)] == ["0", "1", "2", "preparing"]


def test_time_a_thousand_appends(store: JobStore) -> None:
    job = store.add(new_job("p", "r"))
    start = time.perf_counter()
    for i in range(1000):
        store.append_event(job.id, "agent", f'{{"type":"assistant","n":{i}}}')
    elapsed = time.perf_counter() - start
    print(f"1000 appends took {elapsed * 1000:.0f} ms ({elapsed:.4f} ms each)")
    assert store.events(job.id, after=999)[0].seq == 1000


def test_claim_takes_the_oldest_queued_job_with_a_lease(store: JobStore) -> None:
    assert store.claim("r-1") is None
    first, second = store.add(new_job("a", "r")), store.add(new_job("b", "r"))
    claimed = store.claim("r-1")
    assert claimed is not None
    assert claimed.id == first.id
    assert (claimed.state, claimed.owner, claimed.attempts) == (S.PREPARING, "r-1", 1)
    assert claimed.heartbeat_at is not None
    assert abs((claimed.heartbeat_at - claimed.updated_at).total_seconds()) < 1
    assert [e.data for e in store.events(first.id)] == ["preparing"]
    assert store.get(first.id) == claimed
    beat = store.update(first.id, heartbeat_at=claimed.heartbeat_at + timedelta(seconds=5))
    assert beat.heartbeat_at == claimed.heartbeat_at + timedelta(seconds=5)
    store.update(first.id, state=S.INTERRUPTED)
    store.update(first.id, state=S.QUEUED, owner=None)
    again = store.claim("r-2")
    assert again is not None
    assert (again.id, again.owner, again.attempts) == (first.id, "r-2", 2)  # older than the second job
    last = store.claim("r-2")
    assert last is not None
    assert last.id == second.id
    assert store.claim("r-2") is None


def test_a_stored_idempotency_key_returns_the_stored_job(store: JobStore) -> None:
    first = store.add(new_job("a", "r", idempotency_key="key-1"))
    again = store.add(new_job("another prompt", "r", idempotency_key="key-1"))
    assert again == first
    assert len(store.list()) == 1
    assert store.add(new_job("a", "r", idempotency_key="key-2")).id != first.id


def test_update_stores_options(store: JobStore) -> None:
    job = store.add(new_job("a", "r", options=JobOptions(allow_domains=("a.example",))))
    changed = store.update(job.id, options=JobOptions(allow_domains=("b.example",)))
    assert store.get(job.id).options.allow_domains == changed.options.allow_domains == ("b.example",)
    with pytest.raises(UsageError, match="options are JobOptions"):
        store.update(job.id, options={"allow_domains": []})


def test_two_stores_claiming_from_eight_threads_never_take_a_job_twice(settings: Settings) -> None:
    stores = [open_store(settings), open_store(settings)]
    try:
        ids = {stores[0].add(new_job(f"p{i}", "r")).id for i in range(60)}

        def claim_all(i: int) -> list[str]:
            got = []
            while (job := stores[i % 2].claim(f"runner-{i % 2}")) is not None:
                got.append(job.id)
            return got

        results = _in_threads(8, claim_all)
    finally:
        for opened in stores:
            opened.close()
    taken = [job_id for result in results for job_id in result]  # type: ignore[attr-defined]
    assert sorted(taken) == sorted(ids)  # every job once, none twice
    assert sum(1 for result in results if result) >= 2


def test_two_processes_claiming_never_take_a_job_twice(settings: Settings) -> None:
    store = open_store(settings)
    try:
        ids = {store.add(new_job(f"p{i}", "r")).id for i in range(80)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLAIMER, str(settings.home), f"proc-{n}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(2)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                assert _said_ready(proc)
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        owners = {job.id: job.owner for job in store.list(limit=200)}
    finally:
        store.close()
    taken = outputs[0] + outputs[1]
    assert sorted(taken) == sorted(ids)
    assert all(owners[job_id] == "proc-0" for job_id in outputs[0])
    assert all(owners[job_id] == "proc-1" for job_id in outputs[1])
