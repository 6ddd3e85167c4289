"""Parsing of the human units that limits are written in: sizes and durations."""

from __future__ import annotations

import re

from corral.errors import BadLimitError

__all__ = ["format_size", "parse_count", "parse_cpus", "parse_duration", "parse_size"]

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str | int, *, what: str = "size") -> int:
    """Parse ``512M``, ``2G``, ``1.5GiB`` or a plain byte count into bytes (powers of 1024)."""
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.fullmatch(text)
        if match is None:
            msg = f"The {what} {text!r} is not a size; write it like 512M, 2G or 1048576."
            raise BadLimitError(msg)
        value = int(float(match[1]) * _SIZE_FACTORS[match[2].lower()])
    if value <= 0:
        msg = f"The {what} {text!r} must be more than zero; write it like 512M or 2G."
        raise BadLimitError(msg)
    return value


def parse_duration(text: str | float, *, what: str = "duration") -> float:
    """Parse ``30``, ``30s``, ``250ms``, ``5m`` or ``1h`` into seconds."""
    if isinstance(text, int | float):
        value = float(text)
    else:
        match = _DURATION.fullmatch(text)
        if match is None:
            msg = f"The {what} {text!r} is not a duration; write it like 30, 30s, 5m or 1h."
            raise BadLimitError(msg)
        value = float(match[1]) * _DURATION_FACTORS[(match[2] or "s").lower()]
    if value <= 0:
        msg = f"The {what} {text!r} must be more than zero; write it like 30s or 5m."
        raise BadLimitError(msg)
    return value


def format_size(value: int) -> str:
    """Show a byte count the way it is written on the command line (``512M``)."""
    for unit, factor in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_count(text: str | int, *, what: str = "count") -> int:
    """Parse a positive whole number such as a pids limit."""
    try:
        value = int(text)
    except ValueError:
        msg = f"The {what} {text!r} is not a whole number; write it like 256."
        raise BadLimitError(msg) from None
    if value <= 0:
        msg = f"The {what} {text!r} must be more than zero; write it like 256."
        raise BadLimitError(msg)
    return value


def parse_cpus(text: str | float, *, what: str = "cpu share") -> float:
    """Parse a CPU share in cores (``0.5``, ``2``)."""
    try:
        value = float(text)
    except ValueError:
        msg = f"The {what} {text!r} is not a number of cores; write it like 0.5 or 2."
        raise BadLimitError(msg) from None
    if not 0 < value <= 4096:
        msg = f"The {what} {text!r} must be between 0 and 4096 cores; write it like 0.5 or 2."
        raise BadLimitError(msg)
    return value
