"""``corral serve``: the API on uvicorn with an embedded runner; SIGTERM (or ``POST /admin/drain``) drains.

A drain stops the pool claiming jobs, lets the running ones finish within ``--drain-timeout``
(then interrupts them), ends the server, runs ``--on-exit`` (an argv split with ``shlex``, never
a shell) and exits 0. While it drains the server keeps answering, so ``/healthz`` says so. A
second SIGINT or SIGTERM ends the server at once (the pool interrupts what still runs).
"""

from __future__ import annotations

import ipaddress
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

from corral.errors import UsageError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from corral.settings import Settings

__all__ = ["Drainer", "bind", "check_bind", "has_tokens", "is_loopback", "on_exit_argv", "parse_capacity", "serve"]

ON_EXIT_TIMEOUT = 300.0
"""Seconds ``--on-exit`` may run before it is killed."""


def parse_capacity(text: str | int) -> int:
    """The number of jobs the runner runs at once: a whole number of 1 or more."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = 0
    if value < 1:
        msg = f"The capacity {text!r} is not a whole number of 1 or more; give how many jobs may run at once, e.g. 4."
        raise UsageError(msg)
    return value


def parse_drain_timeout(text: str) -> float:
    """``--drain-timeout`` as seconds (``30``, ``30s``, ``2m``); zero interrupts running jobs at once."""
    from corral.units import parse_duration

    if text.strip() in ("0", "0s"):
        return 0.0
    return parse_duration(text, what="--drain-timeout")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, secret: str, tokens: bool = False) -> str | None:
    """Refuse a non-loopback ``host`` without auth (a runner secret, or any API token); the notice to print, if any."""
    if secret or tokens:
        return None
    if not is_loopback(host):
        msg = (
            f"corral serve refuses to listen on {host} without CORRAL_RUNNER_SECRET or an API token: anyone who "
            "can reach it could run jobs with your credential; make a token with `corral tokens create --scope "
            "jobs:write`, set CORRAL_RUNNER_SECRET, or listen on --host 127.0.0.1."
        )
        raise UsageError(msg)
    return (
        f"CORRAL_RUNNER_SECRET is not set and there is no API token: listening on {host} (this machine only) "
        "without auth; make a token with `corral tokens create` or set CORRAL_RUNNER_SECRET to serve other machines."
    )


def has_tokens(settings: Settings) -> bool:
    """Whether the store holds any API token (revoked and expired ones count: auth stays on)."""
    from corral.api.tokens import TokenStore
    from corral.jobs.store import open_store

    store = open_store(settings)
    try:
        return TokenStore.of(store).configured()
    finally:
        store.close()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything starts, so that a taken port is a sentence, not a log line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio sets TCP_NODELAY only then
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        msg = f"corral serve cannot listen on {host}:{port} ({err.strerror}); choose another --port or --host."
        raise UsageError(msg) from None
    return sock


def on_exit_argv(command: str) -> list[str]:
    """The argv of ``--on-exit COMMAND``: split like a shell would, but run without one."""
    try:
        argv = shlex.split(command)
    except ValueError as err:
        msg = f"The --on-exit command {command!r} cannot be split into arguments ({err}); fix its quotes."
        raise UsageError(msg) from None
    if not argv:
        msg = "The --on-exit command is empty; give the program to run, or leave the option out."
        raise UsageError(msg)
    return argv


class Drainer:
    """Drains once: ``pool.drain(timeout)`` in a thread, then ``end()`` (which stops the server)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.app: FastAPI | None = None
        self.end: Callable[[], None] = lambda: None
        self.started = threading.Event()
        self.done = threading.Event()
        self._lock = threading.Lock()

    def begin(self) -> None:
        with self._lock:
            if self.started.is_set():
                return
            self.started.set()
        threading.Thread(target=self._drain, name="corral-drain", daemon=True).start()

    def _drain(self) -> None:
        try:
            if self.app is not None and hasattr(self.app.state, "service"):
                self.app.state.service.pool.drain(self.timeout)
        finally:
            self.done.set()
            self.end()


def _server(config: Any, drainer: Drainer) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if drainer.started.is_set():
                sys.stderr.write(f"corral: {signal.Signals(sig).name} again: stopping now.\n")
                self.should_exit = True
                return
            sys.stderr.write(
                f"corral: {signal.Signals(sig).name}: draining (running jobs get {drainer.timeout:g}s to finish).\n"
            )
            drainer.begin()

    return Server(config)


def serve(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    drain_timeout: float = 30.0,
    on_exit: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Serve until drained (or stopped twice), run ``on_exit``, and return the exit code (0)."""
    import uvicorn

    from corral.api.app import create_app

    argv = on_exit_argv(on_exit) if on_exit is not None else None
    notice = check_bind(host, settings.runner_secret, has_tokens(settings))
    if notice:
        sys.stderr.write(f"corral: {notice}\n")
    sock = bind(host, port)
    drainer = Drainer(drain_timeout)
    app = create_app(settings, environ=environ, on_drain=drainer.begin)
    drainer.app = app
    config = uvicorn.Config(
        app, host=host, port=port, lifespan="on", timeout_graceful_shutdown=5, log_level="info", access_log=False
    )
    server = _server(config, drainer)

    def end() -> None:
        server.should_exit = True

    drainer.end = end
    sys.stderr.write(f"corral: serving on http://{host}:{port} with capacity {settings.capacity}\n")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if argv is not None:
        _run_on_exit(argv)
    return 0


def _run_on_exit(argv: list[str]) -> None:
    sys.stderr.write(f"corral: running --on-exit {shlex.join(argv)}\n")
    try:
        done = subprocess.run(argv, check=False, timeout=ON_EXIT_TIMEOUT)
    except FileNotFoundError:
        sys.stderr.write(f"corral: the --on-exit program {argv[0]!r} does not exist; nothing was run.\n")
        return
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"corral: --on-exit ran past {ON_EXIT_TIMEOUT:g}s and was killed.\n")
        return
    if done.returncode != 0:
        sys.stderr.write(f"corral: --on-exit exited with code {done.returncode}.\n")
