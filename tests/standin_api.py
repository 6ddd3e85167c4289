"""A stand-in for the Anthropic Messages API on 127.0.0.1, scripted by the prompt.

``StandinAPI()`` serves in a thread from the moment it is built; ``with StandinAPI() as api``
stops it on leaving. It answers ``HEAD /`` and ``GET /`` with 200, ``POST /v1/messages`` (with or
without ``?beta=true``) as SSE exactly as the real API streams it, or as one JSON message when
``stream`` is false, and ``POST /v1/messages/count_tokens`` with ``{"input_tokens": N}``.

The reply is scripted by the first user prompt (the text block after the CLI's
``<system-reminder>`` block): one command per line, one per turn, in order. The step is the number
of turns already in ``messages`` (tool_result blocks plus text-only assistant turns), so a
command runs once the result of the previous one is back.

- ``WRITE <path> <content...>`` → tool_use ``Write`` (a relative path is resolved against the
  "Primary working directory:" of the system prompt; ``\\n`` in the content is a newline).
- ``READ <path>``, ``EDIT <path> <old> <new...>``, ``BASH <command...>`` → tool_use ``Read``,
  ``Edit`` (``old`` is one word, ``new`` the rest of the line; the CLI refuses an Edit, and a
  Write over an existing file, unless the file was Read earlier in the session: script
  ``READ f`` first), ``Bash``.
- ``SAY <text>`` → a text turn with ``stop_reason: end_turn`` (ends a ``-p`` run).
- ``ERROR <status>`` → that status with an Anthropic-shaped JSON error body (401
  ``authentication_error``, 429 ``rate_limit_error``, 529 ``overloaded_error``, 400, 500...).
  Claude Code 2.1.197 retries 401, 429 and 5xx (``CLAUDE_CODE_MAX_RETRIES``, default 10, with
  exponential backoff: minutes), then ends with ``{"is_error": true, "api_error_status": 401,
  "result": "Failed to authenticate. API Error: 401 ..."}`` (exit 1); set
  ``CLAUDE_CODE_MAX_RETRIES=0`` in tests.
- ``USAGE_LIMIT <epoch>`` → a subscription usage limit as the real API signals it: 429
  ``rate_limit_error`` with ``anthropic-ratelimit-unified-status: rejected``,
  ``anthropic-ratelimit-unified-reset: <epoch>`` and ``...-representative-claim: five_hour``.
  Measured with Claude Code 2.1.197 **logged in with an OAuth token** (``CLAUDE_CODE_OAUTH_TOKEN``):
  no retry; the CLI prints ``{"type": "rate_limit_event", "rate_limit_info": {"status":
  "rejected", "resetsAt": <epoch>, "rateLimitType": "five_hour", "isUsingOverage": false}}``, then
  the result ``{"subtype": "success", "is_error": true, "api_error_status": 429, "result": "You've
  hit your session limit · resets 7:15am (UTC)"}`` (exit 1). The text is for people: the date is
  added when the reset is days away (``resets Dec 3, 6:15am (UTC)``), a ``seven_day`` claim reads
  "weekly limit"; parse the ``rate_limit_event``. **With an API key** the same reply is an
  ordinary 429: retried, then ``"API Error: Request rejected (429) · <message>"``, and no
  ``rate_limit_event``.
- ERROR, USAGE_LIMIT and SILENT do not advance the step: a retry gets the same answer.
- ``SLOW <seconds>`` → wait that long before the next reply; ``STALL <seconds>`` → the next reply
  sends ``message_start``, waits, then the rest; ``SILENT`` → take the request and never answer
  (the connection stays open until ``stop()``).
- After the last command: the text ``DONE`` and one line per step (``<command> -> ok: <first
  line of its result>``), ``stop_reason: end_turn``.

Every message reports usage numbers that depend on its step; ``usage_sent`` is their sum, the
number a correct meter must arrive at. ``required_auth=("x-api-key", "k")`` answers 401 to any
POST that lacks exactly that header (``HEAD /`` and ``GET /`` stay open).
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any

__all__ = ["USAGE_FIELDS", "Recorded", "StandinAPI", "Turn", "parse_script", "prompt_text"]

USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_TOOLS = {"WRITE": "Write", "READ": "Read", "EDIT": "Edit", "BASH": "Bash"}
_VERBS = {*_TOOLS, "SAY", "ERROR", "USAGE_LIMIT", "SILENT"}
_CWD = re.compile(r"Primary working directory: *(\S[^\n]*)")


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the stand-in saw it; header names are lower case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclasses.dataclass(frozen=True)
class Turn:
    """One scripted reply: ``verb`` and the rest of its line, with the SLOW/STALL before it."""

    verb: str
    args: str = ""
    slow: float = 0.0
    stall: float = 0.0

    @property
    def line(self) -> str:
        return f"{self.verb} {self.args}".strip()


class ScriptError(ValueError):
    """The prompt has a line that is not a stand-in command; answered with a 400."""


def parse_script(prompt: str) -> list[Turn]:
    """The turns of ``prompt``; SLOW and STALL attach to the turn after them (or to the final DONE)."""
    turns: list[Turn] = []
    slow = stall = 0.0
    for raw in prompt.splitlines():
        verb, _, args = raw.strip().partition(" ")
        verb, args = verb.upper(), args.strip()
        if not verb:
            continue
        if verb in ("SLOW", "STALL"):
            seconds = float(args)
            slow, stall = (seconds, stall) if verb == "SLOW" else (slow, seconds)
            continue
        if verb not in _VERBS:
            msg = f"the stand-in API knows no command {verb!r} (line {raw.strip()[:80]!r})"
            raise ScriptError(msg)
        turns.append(Turn(verb, args, slow, stall))
        slow = stall = 0.0
    turns.append(Turn("DONE", "", slow, stall))
    return turns


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [block.get("text", "") for block in content if block.get("type") == "text"]


def prompt_text(body: dict[str, Any]) -> str:
    """The first user prompt: the first user text that is not a ``<system-reminder>`` block."""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            texts = [t for t in _texts(message["content"]) if not t.lstrip().startswith("<system-reminder>")]
            if texts:
                return texts[0]
    return ""


def _blocks(body: dict[str, Any], role: str) -> Iterator[list[dict[str, Any]]]:
    for message in body.get("messages", []):
        content = message.get("content")
        if message.get("role") == role and isinstance(content, list):
            yield content


def _results(body: dict[str, Any]) -> list[tuple[bool, str]]:
    """``(is_error, first line)`` of each tool_result in ``messages``, in order."""
    found = []
    for content in _blocks(body, "user"):
        for block in content:
            if block.get("type") == "tool_result":
                inner = block.get("content", "")
                text = "\n".join(_texts(inner)) if isinstance(inner, list) else str(inner)
                found.append((bool(block.get("is_error")), (text.strip().splitlines() or [""])[0][:200]))
    return found


def _step(body: dict[str, Any]) -> int:
    said = sum(1 for c in _blocks(body, "assistant") if not any(b.get("type") == "tool_use" for b in c))
    return len(_results(body)) + said


def _usage(step: int) -> dict[str, int]:
    return {
        "input_tokens": 1000 + 37 * step,
        "output_tokens": 20 + 11 * step,
        "cache_creation_input_tokens": 300 + 5 * step,
        "cache_read_input_tokens": 2000 + 101 * step,
    }


def _tool_input(turn: Turn, cwd: str) -> dict[str, Any]:
    def absolute(path: str) -> str:
        return path if path.startswith("/") else str(PurePosixPath(cwd) / path)

    if turn.verb == "BASH":
        return {"command": turn.args, "description": "Run scripted command"}
    path, _, rest = turn.args.partition(" ")
    if turn.verb == "WRITE":
        return {"file_path": absolute(path), "content": rest.replace("\\n", "\n")}
    if turn.verb == "READ":
        return {"file_path": absolute(path)}
    old, _, new = rest.strip().partition(" ")
    return {
        "file_path": absolute(path),
        "old_string": old.replace("\\n", "\n"),
        "new_string": new.strip().replace("\\n", "\n"),
    }


def _content(turn: Turn, body: dict[str, Any], turns: list[Turn], step: int) -> list[dict[str, Any]]:
    if turn.verb in _TOOLS:
        system = body.get("system", "")
        match = _CWD.search(system if isinstance(system, str) else "\n".join(_texts(system)))
        use = {"type": "tool_use", "id": f"toolu_standin_{uuid.uuid4().hex[:20]}", "name": _TOOLS[turn.verb]}
        use["input"] = _tool_input(turn, match.group(1).strip() if match else "/")
        return [{"type": "text", "text": f"Step {step + 1}: {turn.verb}"}, use]
    if turn.verb == "SAY":
        return [{"type": "text", "text": turn.args}]
    results = iter(_results(body))
    lines = ["DONE"]
    for done in turns[:step]:
        if done.verb in _TOOLS:
            is_error, first = next(results, (True, "no tool_result"))
            lines.append(f"{done.line} -> {'error' if is_error else 'ok'}: {first}")
        else:
            lines.append(f"{done.line} -> said")
    return [{"type": "text", "text": "\n".join(lines)}]


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _halves(text: str) -> list[str]:
    cut = max(1, len(text) // 2)
    return [part for part in (text[:cut], text[cut:]) if part]


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    if block["type"] == "text":
        yield _sse("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        for part in _halves(block["text"]):
            yield _sse("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": part}})
    else:
        start = {**block, "input": {}}
        yield _sse("content_block_start", {"index": index, "content_block": start})
        for part in _halves(json.dumps(block["input"])):
            delta = {"type": "input_json_delta", "partial_json": part}
            yield _sse("content_block_delta", {"index": index, "delta": delta})
    yield _sse("content_block_stop", {"index": index})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: StandinAPI) -> None:
        self.api = api
        self.open: set[socket.socket] = set()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.api._lock:
            self.open.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client that hung up is no news
            super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.api._lock:
            self.open.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._record(None)
        self._send(200, b"", "text/plain", head_only=True)

    def do_GET(self) -> None:
        self._record(None)
        self._send(200, b"ok\n", "text/plain")

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        self._record(body)
        api = self.server.api
        path = self.path.partition("?")[0]
        if api.required_auth is not None:
            name, value = api.required_auth
            if self.headers.get_all(name) != [value]:
                self._error(401, "invalid x-api-key")
                return
        if not isinstance(body, dict) or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self._error(404 if isinstance(body, dict) else 400, f"the stand-in does not serve {self.path}")
            return
        if path.endswith("count_tokens"):
            self._send(200, json.dumps({"input_tokens": len(raw) // 4}).encode(), "application/json")
            return
        try:
            turns = parse_script(prompt_text(body))
        except (ScriptError, ValueError) as err:
            self._error(400, str(err))
            return
        step = _step(body)
        turn = turns[min(step, len(turns) - 1)]
        if turn.slow and api._stopping.wait(turn.slow):
            return
        if turn.verb == "SILENT":
            api._stopping.wait()
            self.close_connection = True
            return
        if turn.verb == "ERROR":
            self._error(int(turn.args), f"scripted error {turn.args}")
        elif turn.verb == "USAGE_LIMIT":
            headers = {
                "anthropic-ratelimit-unified-status": "rejected",
                "anthropic-ratelimit-unified-reset": turn.args,
                "anthropic-ratelimit-unified-representative-claim": "five_hour",
            }
            self._error(429, "This request would exceed your account's rate limit. Please try again later.", headers)
        else:
            self._message(body, turn, _content(turn, body, turns, step), _usage(step))

    def _message(self, body: dict[str, Any], turn: Turn, content: list[dict[str, Any]], usage: dict[str, int]) -> None:
        api = self.server.api
        stop_reason = "tool_use" if turn.verb in _TOOLS else "end_turn"
        message = {
            "id": f"msg_standin_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "claude-standin"),
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            api._add_usage(usage)
            self._send(200, json.dumps(message).encode(), "application/json")
            return
        first = {**usage, "output_tokens": 1}
        self.send_response(200)
        for name, value in (("content-type", "text/event-stream"), ("cache-control", "no-cache")):
            self.send_header(name, value)
        self.send_header("request-id", f"req_standin_{uuid.uuid4().hex[:20]}")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        start = {**message, "content": [], "stop_reason": None, "usage": first}
        self._chunk(_sse("message_start", {"message": start}) + _sse("ping", {}))
        api._add_usage(first)
        if turn.stall and api._stopping.wait(turn.stall):
            return
        for index, block in enumerate(content):
            for event in _block_events(index, block):
                self._chunk(event)
        delta = {
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        }
        self._chunk(_sse("message_delta", delta))
        api._add_usage({"output_tokens": usage["output_tokens"] - 1})
        self._chunk(_sse("message_stop", {}))
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        kind = _ERRORS.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
        self._send(status, json.dumps(body).encode(), "application/json", headers or {})

    def _send(
        self, status: int, data: bytes, kind: str, headers: dict[str, str] | None = None, *, head_only: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_standin_{uuid.uuid4().hex[:20]}")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(data)
        self.wfile.flush()

    def _record(self, body: Any) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.server.api._lock:
            self.server.api._requests.append(Recorded(self.command, self.path, headers, body))


class StandinAPI:
    """The stand-in API, serving on ``url`` (127.0.0.1, a free port) until ``stop()``."""

    def __init__(self, *, required_auth: tuple[str, str] | None = None) -> None:
        self.required_auth = required_auth
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._usage = dict.fromkeys(USAGE_FIELDS, 0)
        self._stopping = threading.Event()
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[Recorded]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def usage_sent(self) -> dict[str, int]:
        """The summed usage of every message sent so far (the final count of each message)."""
        with self._lock:
            return dict(self._usage)

    def _add_usage(self, usage: dict[str, int]) -> None:
        with self._lock:
            for name in USAGE_FIELDS:
                self._usage[name] += usage.get(name, 0)

    def stop(self) -> None:
        """Stop serving and close every open connection (SILENT ones too); idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            open_sockets = list(self._server.open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> StandinAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
