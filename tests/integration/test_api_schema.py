"""schemathesis against ``/openapi.json``: no generated request makes the API answer a server error.

A server error is a 500, or any other 5xx the operation does not declare (``/readyz`` declares its 503).

The app is built with ``create_app`` in this process and called over ASGI (no socket, no network),
with a real SQLite store and ``tests.fake_pool.FakePool`` as the runner: the fuzzer's jobs are
stored and answered like real ones, but none starts a sandbox or reaches for a repository it names.
The runner secret is set, and schemathesis sends it, so the routes behind it are fuzzed too (a
second pass without it must only ever be refused). Examples per operation are bounded so the whole
run stays near a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis  # a test dependency (pyproject's test extras): missing, it fails, never skips
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, settings

from corral.api.app import create_app
from corral.jobs.store import open_store
from corral.settings import Settings
from tests.fake_pool import FakePool

SECRET = "schema-test-secret-0123456789"
EXAMPLES = 25


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    home = tmp_path_factory.mktemp("schema-home")
    config = Settings(home=Path(home), git_allow_local=False, runner_secret=SECRET)
    store = open_store(config)
    built = create_app(config, pool=FakePool(config, store), store=store, environ={})
    with running_lifespan(built):  # the service exists while the fuzzer calls the app
        yield built
    store.close()


@contextlib.contextmanager
def running_lifespan(app: FastAPI) -> Iterator[None]:
    """Run the app's lifespan on an event loop in a thread until the ``with`` ends."""
    up, down = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    async def hold() -> None:
        async with app.router.lifespan_context(app):
            up.set()
            while not down.is_set():
                await asyncio.sleep(0.05)

    def main() -> None:
        try:
            asyncio.run(hold())
        except BaseException as err:  # reported below
            failed.append(err)
            up.set()

    thread = threading.Thread(target=main, name="schema-lifespan")
    thread.start()
    assert up.wait(30), "the lifespan did not start"
    assert not failed, failed
    try:
        yield
    finally:
        down.set()
        thread.join(30)


def test_no_generated_request_gets_a_server_error(app: FastAPI) -> None:
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    problems: list[str] = []
    operations = 0
    for found in schema.get_all_operations():
        operation = found.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call(headers={"X-Runner-Secret": SECRET})
            declared = case.operation.definition.raw.get("responses", {})
            if response.status_code == 500 or (
                response.status_code > 500 and str(response.status_code) not in declared
            ):
                problems.append(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")

        check()
    assert operations >= 10  # the schema lists the seed, health and /v1 routes
    assert not problems, problems[:5]
