"""The watchdog with a recording stand-in for the supervised process: when it fires, what it sends, when it stops."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import cast

from corral.runner.watchdog import Watchdog
from corral.sandbox.process import Supervised


class Recorder:
    """Records the signals a watchdog sends, as ``Supervised`` would receive them."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int | None, str]] = []

    def interrupt(self, signum: int, why: str) -> None:
        self.sent.append(("interrupt", signum, why))

    def kill(self, why: str = "killed") -> None:
        self.sent.append(("kill", None, why))


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def patrols() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "corral-watchdog"]


def test_a_cancelled_run_is_asked_politely_then_less_so() -> None:
    cancel = threading.Event()
    dog = Watchdog(cancel, idle=None, startup=None, grace=0.2)
    process = Recorder()
    dog.watch(cast(Supervised, process))
    cancel.set()
    wait_for(lambda: len(process.sent) == 3)
    assert process.sent == [
        ("interrupt", signal.SIGINT, "cancelled"),
        ("interrupt", signal.SIGTERM, "cancelled"),
        ("kill", None, "cancelled"),
    ]
    dog.stop()
    assert dog.fired == "cancelled"


def test_a_silent_run_trips_the_idle_timeout_and_one_that_speaks_does_not() -> None:
    wait_for(lambda: not patrols())  # the patrol of an earlier test has ended
    quiet, talking = Recorder(), Recorder()
    silent = Watchdog(threading.Event(), idle=0.3, startup=None, grace=1.0)
    heard = Watchdog(threading.Event(), idle=0.3, startup=None, grace=1.0)
    silent.watch(cast(Supervised, quiet))
    heard.watch(cast(Supervised, talking))
    assert len(patrols()) == 1  # one thread watches both runs
    deadline = time.monotonic() + 5.0
    while not quiet.sent and time.monotonic() < deadline:
        heard.heard(started=True)
        time.sleep(0.05)
    silent.stop()  # within the grace: the SIGTERM is never sent
    assert silent.fired == "idle_timeout"
    assert quiet.sent == [("interrupt", signal.SIGINT, "idle_timeout")]
    assert heard.fired is None
    assert talking.sent == []
    heard.stop()
    time.sleep(1.3)
    assert quiet.sent == [("interrupt", signal.SIGINT, "idle_timeout")]


def test_a_run_that_never_starts_trips_the_startup_timeout() -> None:
    process = Recorder()
    dog = Watchdog(threading.Event(), idle=None, startup=0.2, grace=5.0)
    dog.watch(cast(Supervised, process))
    dog.heard(started=False)  # stderr only: not started yet
    wait_for(lambda: bool(process.sent))
    dog.stop()
    assert dog.fired == "startup_timeout"
    assert process.sent == [("interrupt", signal.SIGINT, "startup_timeout")]


def test_after_stop_nothing_fires_and_the_patrol_ends() -> None:
    cancel = threading.Event()
    process = Recorder()
    dog = Watchdog(cancel, idle=0.05, startup=None, grace=0.1)
    dog.watch(cast(Supervised, process))
    dog.stop()
    cancel.set()
    time.sleep(0.5)
    assert dog.fired is None
    assert process.sent == []
    wait_for(lambda: not patrols())
