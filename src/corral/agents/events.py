"""Typed events of an agent's output, and ``LineSplitter``, which cuts a byte stream into lines.

An agent's ``parse`` turns one stdout line into a tuple of events, in order: most lines hold
one thing, some hold several (an assistant message with text and a tool call, a user message
with two tool results), a blank line holds none. Bad JSON or a shape nobody knows becomes
``Unparsed``, never an exception. Every event says what it is in one short line
(``describe()``, for live progress) and what it adds to the token usage (``usage_added()``):
only the final ``Result`` adds anything, since Claude Code's result carries the run's totals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Union

from corral.jobs.models import Usage

__all__ = [
    "AgentEvent",
    "ApiRetry",
    "AssistantText",
    "Init",
    "LineSplitter",
    "Notice",
    "RateLimit",
    "Result",
    "Text",
    "ToolResult",
    "ToolUse",
    "Unparsed",
    "clip",
]

EXCERPT = 500
"""Characters kept of a tool result or an unparsed line (the raw line is stored elsewhere)."""
LINE = 100
"""Characters of one ``describe()`` line."""

_NO_USAGE = Usage()


def clip(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(text: str, limit: int = LINE) -> str:
    """The first non-blank line of ``text``, clipped; a mark when there is more."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    more = " …" if len(lines) > 1 else ""
    return clip(lines[0], limit - len(more)) + more


class _Event:
    """What every event can say about itself."""

    def describe(self) -> str:
        raise NotImplementedError

    def usage_added(self) -> Usage:
        return _NO_USAGE


@dataclasses.dataclass(frozen=True)
class Init(_Event):
    """The agent started a session (Claude Code's ``system/init``)."""

    session_id: str
    model: str
    cwd: str
    version: str
    tools: tuple[str, ...]

    def describe(self) -> str:
        return f"started {self.model} (Claude Code {self.version}, {len(self.tools)} tools)"


@dataclasses.dataclass(frozen=True)
class AssistantText(_Event):
    """Text the model wrote; ``error`` is set on the CLI's own error messages (``authentication_failed``...)."""

    text: str
    error: str | None = None

    def describe(self) -> str:
        if self.error:
            return f"error ({self.error}): {_line(self.text)}"
        return f"answer: {_line(self.text)}"


_TARGETS = ("file_path", "notebook_path", "command", "pattern", "url", "query", "description", "prompt")


@dataclasses.dataclass(frozen=True)
class ToolUse(_Event):
    """The model called a tool."""

    id: str
    name: str
    input: Mapping[str, Any]

    def target(self) -> str:
        """The argument that says what the call touches: a file name, a command, a pattern."""
        for key in _TARGETS:
            value = self.input.get(key)
            if isinstance(value, str) and value.strip():
                if key.endswith("_path"):
                    return value.rstrip("/").rsplit("/", 1)[-1]
                return _line(value, 70)
        return ""

    def describe(self) -> str:
        return f"tool {self.name} {self.target()}".rstrip()


@dataclasses.dataclass(frozen=True)
class ToolResult(_Event):
    """What a tool call returned; ``content`` is a short excerpt."""

    tool_use_id: str
    is_error: bool
    content: str

    def describe(self) -> str:
        return f"{'tool error' if self.is_error else 'result'}: {_line(self.content)}"


@dataclasses.dataclass(frozen=True)
class ApiRetry(_Event):
    """The agent is retrying a failed API request."""

    attempt: int
    status: int | None
    error: str

    def describe(self) -> str:
        status = f" (HTTP {self.status})" if self.status is not None else ""
        return f"API retry {self.attempt}: {self.error}{status}"


@dataclasses.dataclass(frozen=True)
class RateLimit(_Event):
    """The API's rate-limit state: ``allowed``, ``allowed_warning`` or ``rejected`` (a usage limit)."""

    status: str
    resets_at: datetime | None

    def describe(self) -> str:
        resets = f", resets {self.resets_at.isoformat(timespec='minutes')}" if self.resets_at else ""
        return f"rate limit {self.status}{resets}"


@dataclasses.dataclass(frozen=True)
class Result(_Event):
    """The agent's final report: decide success from ``is_error``, never from ``subtype`` alone."""

    is_error: bool
    subtype: str
    text: str
    session_id: str | None
    num_turns: int | None
    cost_usd: float | None
    usage: Usage
    duration_ms: int | None
    errors: tuple[str, ...]
    api_error_status: int | None
    terminal_reason: str | None

    def describe(self) -> str:
        text = _line(self.text or "; ".join(self.errors))
        return f"failed ({self.subtype}): {text}" if self.is_error else f"done: {text}"

    def usage_added(self) -> Usage:
        return self.usage


@dataclasses.dataclass(frozen=True)
class Text(_Event):
    """One line of plain output (a generic agent)."""

    line: str

    def describe(self) -> str:
        return _line(self.line)


@dataclasses.dataclass(frozen=True)
class Notice(_Event):
    """A known event corral does not act on: thinking, a compaction, hook progress, an echoed user message."""

    kind: str
    text: str = ""

    def describe(self) -> str:
        return f"{self.kind}: {_line(self.text)}" if self.text else self.kind


@dataclasses.dataclass(frozen=True)
class Unparsed(_Event):
    """A line that is not JSON or has an unknown shape; ``line`` is an excerpt, ``why`` says what was wrong."""

    line: str
    why: str

    def describe(self) -> str:
        return f"unparsed output ({self.why}): {_line(self.line, 60)}"


AgentEvent = Union[Init, AssistantText, ToolUse, ToolResult, ApiRetry, RateLimit, Result, Text, Notice, Unparsed]


class LineSplitter:
    """Cuts a stream of byte chunks into lines (without ``\\n``), of any length.

    A line may arrive in many chunks and one chunk may hold many lines; ``flush()`` at the end
    of the stream returns the last line if it had no newline (a list, like ``feed``).
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines that ``chunk`` completes, in order."""
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._parts:
                self._parts.append(chunk[start:end])
                lines.append(b"".join(self._parts))
                self._parts.clear()
            else:
                lines.append(chunk[start:end])
            start = end + 1
        if start < len(chunk):
            self._parts.append(chunk[start:])
        return lines

    def flush(self) -> list[bytes]:
        """The unterminated last line, if any (``[]`` or ``[line]``); the splitter is empty afterwards."""
        if not self._parts:
            return []
        line = b"".join(self._parts)
        self._parts.clear()
        return [line]
