"""/healthz, /readyz and /admin/drain in process with the fake pool; the pure parts of corral serve."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral import __version__
from corral.api.app import create_app
from corral.cli.serve import check_bind, is_loopback, on_exit_argv, parse_capacity, parse_drain_timeout
from corral.errors import UsageError
from corral.jobs.store import JobStore, open_store
from corral.settings import Settings
from tests.fake_pool import FakePool, InProcess

KEY = {"ANTHROPIC_API_KEY": "sk-ant-api03-health-test-key"}


@pytest.fixture
def store(settings: Settings) -> Iterator[JobStore]:
    opened = open_store(settings)
    yield opened
    opened.close()


@pytest.fixture
def pool(settings: Settings, store: JobStore) -> FakePool:
    return FakePool(settings, store, capacity=3, runner_id="runner-a")


def test_the_lifespan_starts_and_stops_the_pool(settings: Settings, store: JobStore, pool: FakePool) -> None:
    app = create_app(settings, pool=pool, store=store, environ=KEY)
    assert not pool.started
    with InProcess(app):
        assert (pool.started, pool.stopped) == (True, False)
    assert pool.stopped


def test_healthz_reports_what_coder_reads(settings: Settings, store: JobStore, pool: FakePool) -> None:
    pool.active, pool.poll_age = 2, 1500
    with InProcess(create_app(settings, pool=pool, store=store, environ={})) as api:
        body = api.get("/healthz").json()
        pool.is_draining = True
        draining = api.get("/healthz").json()
    assert body == {
        "status": "ok",
        "runner_id": "runner-a",
        "version": __version__,
        "capacity": 3,
        "active_sessions": 2,
        "draining": False,
        "last_poll_age_ms": 1500,
    }
    assert (draining["status"], draining["draining"]) == ("draining", True)


def test_readyz_is_503_while_draining_at_capacity_or_without_a_credential(
    settings: Settings, store: JobStore, pool: FakePool
) -> None:
    with InProcess(create_app(settings, pool=pool, store=store, environ=KEY)) as api:
        ready = api.get("/readyz")
        pool.active = 3
        full = api.get("/readyz")
        pool.active, pool.is_draining = 0, True
        draining = api.get("/readyz")
    with InProcess(create_app(settings, pool=FakePool(settings, store), store=store, environ={})) as api:
        no_key = api.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    for response, words in ((full, "3 / 3"), (draining, "draining"), (no_key, "No Claude credential")):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "not_ready"
        assert words in response.json()["error"]["message"]


def test_admin_drain_needs_the_secret_and_starts_the_drain(settings: Settings, store: JobStore, pool: FakePool) -> None:
    asked: list[bool] = []
    settings = Settings(home=settings.home, runner_secret="drain-secret")
    app = create_app(settings, pool=pool, store=store, environ=KEY, on_drain=lambda: asked.append(True))
    with InProcess(app) as api:
        refused = api.post("/admin/drain")
        accepted = api.post("/admin/drain", headers={"X-Runner-Secret": "drain-secret"})
    assert (refused.status_code, asked[:0]) == (401, [])
    assert accepted.status_code == 202
    assert asked == [True]


def test_admin_drain_by_default_drains_the_pool(settings: Settings, store: JobStore, pool: FakePool) -> None:
    with InProcess(create_app(settings, pool=pool, store=store, environ=KEY)) as api:
        assert api.post("/admin/drain").status_code == 202
        for _ in range(100):
            if pool.draining:
                break
            import time

            time.sleep(0.02)
    assert ("drain", 30.0) in pool.calls


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5", ""])
def test_a_capacity_that_is_not_a_whole_number_of_1_or_more_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="is not a whole number of 1 or more"):
        parse_capacity(text)


def test_a_good_capacity_and_drain_timeout_parse() -> None:
    assert (parse_capacity("16"), parse_capacity(" 1 ")) == (16, 1)
    assert (parse_drain_timeout("30"), parse_drain_timeout("2m"), parse_drain_timeout("0")) == (30.0, 120.0, 0.0)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.1.2.3", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_without_a_secret_is_refused_and_loopback_is_announced() -> None:
    with pytest.raises(UsageError, match=r"refuses to listen on 0\.0\.0\.0 without CORRAL_RUNNER_SECRET"):
        check_bind("0.0.0.0", "")
    notice = check_bind("127.0.0.1", "")
    assert notice is not None
    assert "127.0.0.1" in notice
    assert check_bind("0.0.0.0", "s") is None


def test_on_exit_is_split_like_a_shell_but_never_run_by_one() -> None:
    assert on_exit_argv("touch '/tmp/a b' ; rm x") == ["touch", "/tmp/a b", ";", "rm", "x"]
    with pytest.raises(UsageError, match="quotes"):
        on_exit_argv("echo 'open")
    with pytest.raises(UsageError, match="empty"):
        on_exit_argv("  ")


def test_a_taken_port_is_refused_with_a_sentence() -> None:
    import socket

    from corral.cli.serve import bind

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UsageError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind("127.0.0.1", port)
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
