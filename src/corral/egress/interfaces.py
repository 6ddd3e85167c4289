"""The addresses of this host's own interfaces, which an allowed name must not lead back to.

Read from ``/proc`` (Linux, like the sandbox itself): ``/proc/net/fib_trie`` lists the local
IPv4 addresses as ``/32 host LOCAL`` routes, ``/proc/net/if_inet6`` the IPv6 ones. No DNS, no
subprocess. ``CachedAddresses`` re-reads them at most once per ``ttl`` seconds, because an
interface may gain an address (DHCP) while the proxy runs, and the proxy asks on every connection.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from pathlib import Path

from corral.egress.policy import IPAddress

__all__ = ["CachedAddresses", "local_addresses", "parse_fib_trie", "parse_if_inet6"]


def parse_fib_trie(text: str) -> set[IPAddress]:
    """The local IPv4 addresses in the text of ``/proc/net/fib_trie``."""
    found: set[IPAddress] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif stripped.startswith("/32 host LOCAL") and last is not None:
            try:
                found.add(ipaddress.IPv4Address(last))
            except ValueError:
                pass
    return found


def parse_if_inet6(text: str) -> set[IPAddress]:
    """The IPv6 addresses in the text of ``/proc/net/if_inet6`` (32 hex digits first on each line)."""
    found: set[IPAddress] = set()
    for line in text.splitlines():
        fields = line.split()
        if fields and len(fields[0]) == 32:
            try:
                found.add(ipaddress.IPv6Address(int(fields[0], 16)))
            except ValueError:
                pass
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def local_addresses(proc: Path = Path("/proc")) -> frozenset[IPAddress]:
    """Every address of this host's interfaces; loopback at least, whatever ``/proc`` says."""
    found = parse_fib_trie(_read(proc / "net" / "fib_trie")) | parse_if_inet6(_read(proc / "net" / "if_inet6"))
    found |= {ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1")}
    return frozenset(found)


class CachedAddresses:
    """``local_addresses()``, read again at most once every ``ttl`` seconds."""

    def __init__(self, ttl: float = 30.0, source: Callable[[], frozenset[IPAddress]] = local_addresses) -> None:
        self.ttl = ttl
        self._source = source
        self._value: frozenset[IPAddress] = frozenset()
        self._read_at = float("-inf")

    def __call__(self) -> frozenset[IPAddress]:
        now = time.monotonic()
        if now - self._read_at >= self.ttl:
            self._value = self._source()
            self._read_at = now
        return self._value
