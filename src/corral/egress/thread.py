"""The proxy for synchronous callers: its event loop runs in a daemon thread.

The CLI is synchronous, so ``ProxyThread`` owns one ``EgressProxy`` and the loop it runs on,
and turns each call into a coroutine run on that loop. ``Endpoint.set_policy`` and
``Endpoint.violations`` are thread-safe on their own and may be called directly.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from corral.egress.audit import AuditLog
from corral.egress.endpoint import Endpoint
from corral.egress.policy import IPAddress, Policy
from corral.egress.proxy import EgressProxy, ProxyConfig
from corral.egress.resolver import Resolver
from corral.errors import UsageError

__all__ = ["ProxyThread"]

T = TypeVar("T")


class ProxyThread:
    """An ``EgressProxy`` on its own thread; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(
        self,
        config: ProxyConfig | None = None,
        *,
        audit: AuditLog | None = None,
        resolver: Resolver | None = None,
        local_addresses: Callable[[], frozenset[IPAddress]] | None = None,
        call_timeout: float = 30.0,
    ) -> None:
        self.proxy = EgressProxy(config, audit=audit, resolver=resolver, local_addresses=local_addresses)
        self.call_timeout = call_timeout
        self._loop = asyncio.new_event_loop()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="corral-egress", daemon=True)
        self._thread.start()

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the proxy's loop (other servers of a job share it) and return its result."""
        if self._stopped:
            coroutine.close()
            msg = "The egress proxy thread is stopped; start a new ProxyThread."
            raise UsageError(msg)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.call_timeout)

    def open(self, sandbox_id: str, socket_path: Path | str, policy: Policy, owner_uid: int | None = None) -> Endpoint:
        """Start serving ``sandbox_id`` at ``socket_path``; see ``EgressProxy.open``."""
        return self.call(self.proxy.open(sandbox_id, socket_path, policy, owner_uid=owner_uid))

    def endpoint(self, sandbox_id: str) -> Endpoint:
        return self.proxy.endpoint(sandbox_id)

    def close(self, sandbox_id: str) -> None:
        """Stop serving ``sandbox_id``: its connections end and are audited, its socket is removed."""
        self.call(self.proxy.close(sandbox_id))

    def stop(self, timeout: float = 10.0) -> None:
        """Close every endpoint and end the thread. Safe to call twice."""
        if self._stopped:
            return
        try:
            self.call(self.proxy.aclose())
        finally:
            self._stopped = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> ProxyThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
