"""Secrets: a value whose repr is masked, unwrapped only where it is injected.

``Secret`` keeps a credential out of logs, events, reprs and tracebacks: ``str`` and ``repr``
show ``***``, it cannot be pickled, and ``reveal()`` is the one way to the value, called only at
the point of injection (an HTTP header on the host, a ``GIT_ASKPASS`` answer).
"""

from __future__ import annotations

import hmac
from typing import NoReturn

__all__ = ["Secret"]


class Secret:
    """A secret string; compare with ``==`` (constant time), read with ``reveal()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(Secret)

    def __reduce__(self) -> NoReturn:
        msg = "A Secret cannot be pickled; pass it where it is used."
        raise TypeError(msg)
