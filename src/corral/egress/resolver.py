"""Name resolution for the proxy: one lookup per allowed connection, and a table for tests.

A resolver is any ``async (host, port) -> addresses`` callable. The proxy calls it once, only
for a name the policy has allowed, vets every address it returns and dials those, so nothing
ever looks the name up a second time (no DNS rebinding between the check and the dial).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence

__all__ = ["Resolver", "StaticResolver", "system_resolver"]

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses ``getaddrinfo`` gives for ``host``, in its order, without duplicates."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class StaticResolver:
    """Resolves the names of a fixed table and nothing else; records every name it was asked for."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.table = {name.lower().rstrip("."): list(addresses) for name, addresses in table.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        try:
            return self.table[host.lower().rstrip(".")]
        except KeyError:
            msg = f"{host} is not in the resolver's table"
            raise socket.gaierror(socket.EAI_NONAME, msg) from None
