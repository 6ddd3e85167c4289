"""Claude Code's stream-json output: one line to one typed event, and the events to an outcome.

Facts from recorded runs of the pinned CLI (``tests/fixtures/claude_code``):

- Each assistant content block arrives as its own ``assistant`` line (same message id); a user
  line carries the tool results.
- API failures end with ``subtype: "success"`` and ``is_error: true``; ``api_error_status`` is
  set for HTTP errors (401, 429...) and ``null`` when the API could not be reached at all
  (the text then starts with ``API Error:``). Only ``is_error`` decides failure.
- A usage limit (subscription) is a ``rate_limit_event`` with ``status: "rejected"`` and
  ``resetsAt`` (epoch seconds), then a result such as "You've hit your session limit · resets
  9:07am (UTC)"; older CLIs wrote "Claude AI usage limit reached|<epoch>". A plain 429 on an API
  key ("API Error: Request rejected (429) ...") is an API error, not a usage limit.
- ``--max-turns`` ends with ``subtype: "error_max_turns"``, ``errors: ["Reached maximum number
  of turns (N)"]``, exit 1; SIGTERM ends the process with 143 and no result.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from corral.agents.base import Outcome, Reason
from corral.agents.events import (
    AgentEvent,
    ApiRetry,
    AssistantText,
    Init,
    Notice,
    RateLimit,
    Result,
    ToolResult,
    ToolUse,
    Unparsed,
    clip,
)
from corral.jobs.models import Usage

__all__ = ["classify", "parse_line", "usage_limit_reset"]

SUMMARY_LIMIT: Final = 4000
_IGNORED: Final = frozenset(
    {"stream_event", "control_request", "control_response", "control_cancel_request", "tool_progress", "auth_status"}
)
_USAGE_FIELDS: Final = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_USAGE_LIMIT: Final = re.compile(
    r"^(?:API Error: )?(?:Claude AI usage limit reached|You've hit your|You've reached your"
    r"|You're out of (?:usage|extra usage)|Your org is out of usage)"
)
_LIMIT_EPOCH: Final = re.compile(r"Claude AI usage limit reached\|(\d{9,12})")
_INTERRUPTED: Final = frozenset({128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM})


class _Shape(Exception):
    """A field is missing or has the wrong type."""


def _bad(what: str) -> NoReturn:
    raise _Shape(what)


def _str(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        _bad(f"{key!r} is not a string")
    return value


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) else None


def _opt_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _opt_float(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _dict(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        _bad(f"{key!r} is not an object")
    return value


def _epoch(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def parse_usage(data: object) -> Usage:
    """A ``usage`` object of the API as ``Usage``; missing or odd fields count 0."""
    if not isinstance(data, dict):
        return Usage()
    counts = {key: _opt_int(data, key) or 0 for key in _USAGE_FIELDS}
    return Usage(**counts)


def parse_line(line: bytes) -> tuple[AgentEvent, ...]:
    """The typed events of one stream-json line, in order (none for a blank line); never raises."""
    text = line.decode("utf-8", "replace").strip()
    if not text:
        return ()
    try:
        data = json.loads(text)
    except ValueError as err:
        return (Unparsed(clip(text), f"not JSON: {getattr(err, 'msg', err)}"),)
    if not isinstance(data, dict):
        return (Unparsed(clip(text), "not a JSON object"),)
    kind = data.get("type")
    try:
        return _events(data)
    except _Shape as err:
        return (Unparsed(clip(text), f"unexpected {kind} event: {err}"),)


def _events(data: Mapping[str, Any]) -> tuple[AgentEvent, ...]:
    kind = data.get("type")
    if kind == "system":
        return (_system(data),)
    if kind == "assistant":
        return _assistant(data)
    if kind == "user":
        return _user(data)
    if kind == "result":
        return (_result(data),)
    if kind == "rate_limit_event":
        info = _dict(data, "rate_limit_info")
        return (RateLimit(status=_str(info, "status"), resets_at=_epoch(info.get("resetsAt"))),)
    if kind in _IGNORED:
        return (Notice(str(kind)),)
    _bad(f"the type {kind!r} is unknown")


def _system(data: Mapping[str, Any]) -> AgentEvent:
    subtype = data.get("subtype")
    if subtype == "init":
        tools = data.get("tools")
        return Init(
            session_id=_str(data, "session_id"),
            model=_opt_str(data, "model") or "",
            cwd=_opt_str(data, "cwd") or "",
            version=_opt_str(data, "claude_code_version") or "",
            tools=tuple(t for t in tools if isinstance(t, str)) if isinstance(tools, list) else (),
        )
    if subtype == "api_retry":
        return ApiRetry(
            attempt=_opt_int(data, "attempt") or 0,
            status=_opt_int(data, "error_status"),
            error=_opt_str(data, "error") or "unknown",
        )
    message = _opt_str(data, "content") or _opt_str(data, "message") or ""
    return Notice(f"system/{subtype}", message)


def _content(data: Mapping[str, Any]) -> list[Any]:
    message = _dict(data, "message")
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        _bad("'message.content' is not a list")
    return content


def _assistant(data: Mapping[str, Any]) -> tuple[AgentEvent, ...]:
    error = _opt_str(data, "error")
    events: list[AgentEvent] = []
    for block in _content(data):
        if not isinstance(block, dict):
            _bad("a content block is not an object")
        kind = block.get("type")
        if kind == "text":
            events.append(AssistantText(_str(block, "text"), error))
        elif kind in ("tool_use", "server_tool_use"):
            tool_input = block.get("input")
            events.append(
                ToolUse(_str(block, "id"), _str(block, "name"), tool_input if isinstance(tool_input, dict) else {})
            )
        elif kind in ("thinking", "redacted_thinking"):
            events.append(Notice("thinking", _opt_str(block, "thinking") or ""))
        else:
            events.append(Notice(f"assistant {kind}"))
    return tuple(events)


def _tool_content(content: object) -> str:
    if isinstance(content, str):
        return clip(content)
    if isinstance(content, list):
        parts = []
        for item in content:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, dict):
                parts.append(f"[{item.get('type', 'block')}]")
        return clip("\n".join(parts))
    return ""


def _user(data: Mapping[str, Any]) -> tuple[AgentEvent, ...]:
    events: list[AgentEvent] = []
    for block in _content(data):
        if not isinstance(block, dict):
            _bad("a content block is not an object")
        if block.get("type") == "tool_result":
            content = _tool_content(block.get("content"))
            events.append(ToolResult(_str(block, "tool_use_id"), block.get("is_error") is True, content))
        elif block.get("type") == "text":
            events.append(Notice("user", _opt_str(block, "text") or ""))
        else:
            events.append(Notice(f"user {block.get('type')}"))
    return tuple(events)


def _result(data: Mapping[str, Any]) -> Result:
    is_error = data.get("is_error")
    if not isinstance(is_error, bool):
        _bad("'is_error' is not a boolean")
    errors = data.get("errors")
    return Result(
        is_error=is_error,
        subtype=_str(data, "subtype"),
        text=_opt_str(data, "result") or "",
        session_id=_opt_str(data, "session_id"),
        num_turns=_opt_int(data, "num_turns"),
        cost_usd=_opt_float(data, "total_cost_usd"),
        usage=parse_usage(data.get("usage")),
        duration_ms=_opt_int(data, "duration_ms"),
        errors=tuple(str(e) for e in errors) if isinstance(errors, list) else (),
        api_error_status=_opt_int(data, "api_error_status"),
        terminal_reason=_opt_str(data, "terminal_reason"),
    )


def usage_limit_reset(text: str, rejected: RateLimit | None) -> datetime | None:
    """When a usage limit resets: the epoch in an old-style message, else the rejection event's time."""
    if match := _LIMIT_EPOCH.search(text):
        return _epoch(int(match.group(1)))
    return rejected.resets_at if rejected is not None else None


def _exit(code: int | None) -> str:
    if code is None:
        return "was lost without an exit code"
    if code < 0:
        return f"was killed by {_signal_name(-code)}"
    if code > 128 and (name := _signal_name(code - 128)).startswith("SIG"):
        return f"exited with code {code} ({name})"
    return f"exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(events: Sequence[AgentEvent], exit_code: int | None) -> Outcome:
    """How a Claude Code run ended, from its events (in order) and its exit code."""
    flat = list(events)
    result = next((e for e in reversed(flat) if isinstance(e, Result)), None)
    init = next((e for e in flat if isinstance(e, Init)), None)
    rejected = next((e for e in reversed(flat) if isinstance(e, RateLimit) and e.status == "rejected"), None)
    session_id = init.session_id if init is not None else None
    if result is None:
        if rejected is not None:
            summary = f"Claude Code hit a usage limit and {_exit(exit_code)} before reporting a result."
            resets = rejected.resets_at
            return Outcome(False, "usage_limit", summary, session_id=session_id, usage_limit_resets_at=resets)
        if not flat:
            return Outcome(False, "no_output", f"Claude Code printed nothing and {_exit(exit_code)}.")
        last = flat[-1].describe()
        reason: Reason = "interrupted" if exit_code in _INTERRUPTED else "crashed"
        summary = f"Claude Code {_exit(exit_code)} before reporting a result; last event: {clip(last, 300)}"
        return Outcome(False, reason, summary, session_id=session_id)
    common: dict[str, Any] = {
        "subtype": result.subtype,
        "session_id": result.session_id or session_id,
        "num_turns": result.num_turns,
        "cost_usd": result.cost_usd,
        "usage": result.usage,
        "duration_ms": result.duration_ms,
    }
    if not result.is_error:
        return Outcome(True, "completed", clip(result.text, SUMMARY_LIMIT), **common)
    text = result.text or "; ".join(result.errors) or f"Claude Code reported {result.subtype}."
    summary = clip(text, SUMMARY_LIMIT)
    if rejected is not None or _USAGE_LIMIT.match(result.text):
        resets = usage_limit_reset(result.text, rejected)
        return Outcome(False, "usage_limit", summary, usage_limit_resets_at=resets, **common)
    if result.subtype == "error_max_turns" or result.terminal_reason == "max_turns":
        return Outcome(False, "max_turns", summary, **common)
    if result.subtype == "error_max_budget_usd" or result.terminal_reason == "budget_exhausted":
        return Outcome(False, "max_budget", summary, **common)
    if result.api_error_status is not None or result.text.startswith("API Error"):
        return Outcome(False, "api_error", summary, **common)
    return Outcome(False, "agent_error", summary, **common)
