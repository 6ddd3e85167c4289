"""One sandbox's door to the proxy: a socket path the relay can reach, an endpoint behind it.

``Door`` is what a caller hands to ``SandboxSpec(egress=door.socket)``. It puts the socket where
the sandbox's host uid can reach it (``<runtime>/proxy/``, directories mode 0711, the socket
itself 0600 and chowned by the sandbox at start), opens the endpoint on a proxy (its own
``ProxyThread`` unless one is given), and afterwards closes it, so that the audit lines and the
violations of its connections are final.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from corral.egress.audit import AuditLog
from corral.egress.endpoint import Endpoint
from corral.egress.policy import Policy
from corral.egress.thread import ProxyThread
from corral.sandbox.spec import RunResult

__all__ = ["Door"]


class Door:
    """A proxy endpoint for one sandbox; use it as a context manager around the run."""

    def __init__(
        self,
        runtime: Path,
        policy: Policy,
        *,
        proxy: ProxyThread | None = None,
        audit: AuditLog | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or f"sandbox-{uuid.uuid4().hex[:12]}"
        self.socket = runtime / "proxy" / f"{self.name}.sock"
        self.policy = policy
        self._proxy = proxy
        self._own_proxy = proxy is None
        self._audit = audit
        self.endpoint: Endpoint | None = None

    def __enter__(self) -> Door:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        for directory in (self.socket.parent.parent, self.socket.parent):
            directory.chmod(0o711)  # the relay runs as the sandbox's uid and must reach its socket
        if self._proxy is None:
            self._proxy = ProxyThread(audit=self._audit)
        self.endpoint = self._proxy.open(self.name, self.socket, self.policy)
        return self

    def close(self) -> None:
        """Stop serving: open connections end and are audited; the socket is removed."""
        if self._proxy is not None and self.endpoint is not None:
            self._proxy.close(self.name)

    def __exit__(self, *exc: object) -> None:
        self.close()
        if self._own_proxy and self._proxy is not None:
            self._proxy.stop()

    def with_violations(self, result: RunResult) -> RunResult:
        """``result`` with this door's network violations added (the door is closed first)."""
        self.close()
        found = self.endpoint.violations() if self.endpoint is not None else ()
        return dataclasses.replace(result, violations=(*result.violations, *found))
