"""The API gateway's pure parts as data: request heads, the credential check, header rewrites, usage metering."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from corral.egress.gateway import (
    Gateway,
    SSEUsage,
    authorized,
    downstream_headers,
    json_usage,
    parse_head,
    upstream_headers,
)
from corral.egress.http import BadRequest
from corral.errors import UsageError
from corral.jobs.models import Usage
from corral.secrets import Credential, Secret

PLACEHOLDER = Secret("corral-placeholder-abc")
REAL = ("x-api-key", "sk-ant-api-real")


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.mark.parametrize(
    ("line", "path"),
    [
        ("POST /v1/messages?beta=true HTTP/1.1", "/v1/messages?beta=true"),
        ("POST http://127.0.0.1:4000/v1/messages HTTP/1.1", "/v1/messages"),
        ("HEAD / HTTP/1.1", "/"),
    ],
)
def test_origin_and_absolute_targets_parse(line: str, path: str) -> None:
    request = parse_head(head(line, "Host: 127.0.0.1:4000", "Content-Length: 12"))
    assert (request.path, request.content_length, request.chunked) == (path, 12, False)


@pytest.mark.parametrize(
    "lines",
    [
        ("POST /v1/messages HTTP/1.1",),  # HTTP/1.1 without Host
        ("POST /v1/messages HTTP/1.1", "Host: a", "Content-Length: 1", "Transfer-Encoding: chunked"),
        ("POST /v1/messages HTTP/1.1", "Host: a", "Content-Length: 1", "Content-Length: 2"),
        ("POST /v1/messages HTTP/1.1", "Host: a@b"),
        ("POST http://a/v1/messages HTTP/1.1", "Host: b"),
    ],
)
def test_ambiguous_heads_are_refused(lines: tuple[str, ...]) -> None:
    with pytest.raises(BadRequest):
        parse_head(head(*lines))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([("x-api-key", PLACEHOLDER.reveal())], True),
        ([("X-Api-Key", PLACEHOLDER.reveal())], True),
        ([("Authorization", "Bearer " + PLACEHOLDER.reveal())], True),
        ([("authorization", "bearer " + PLACEHOLDER.reveal())], True),
        ([], False),
        ([("x-api-key", "")], False),
        ([("x-api-key", PLACEHOLDER.reveal() + "x")], False),
        ([("x-api-key", REAL[1])], False),
        ([("authorization", "Basic " + PLACEHOLDER.reveal())], False),
        ([("authorization", PLACEHOLDER.reveal())], False),
        ([("x-api-key", PLACEHOLDER.reveal()), ("authorization", "Bearer other")], False),
        ([("x-api-key", PLACEHOLDER.reveal()), ("x-api-key", "other")], False),
    ],
)
def test_only_the_placeholder_is_authorized(headers: list[tuple[str, str]], expected: bool) -> None:
    assert authorized(headers, PLACEHOLDER) is expected


def test_upstream_headers_swap_the_credential_and_keep_end_to_end_headers() -> None:
    incoming = [
        ("Host", "127.0.0.1:4000"),
        ("x-api-key", PLACEHOLDER.reveal()),
        ("Authorization", "Bearer " + PLACEHOLDER.reveal()),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "oauth-2025-04-20,context-1m"),
        ("Content-Type", "application/json"),
        ("Content-Length", "42"),
        ("User-Agent", "claude-cli/2.1.197"),
        ("Connection", "keep-alive, X-Hop"),
        ("X-Hop", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Accept-Encoding", "gzip, br"),
        ("Expect", "100-continue"),
    ]
    out = upstream_headers(incoming, REAL)
    names = [name.lower() for name, _ in out]
    assert out[:5] == incoming[3:8]  # the end-to-end headers, in order and unchanged
    assert sorted(names[5:]) == ["accept-encoding", "x-api-key"]
    assert (REAL in out, ("accept-encoding", "identity") in out) == (True, True)
    assert all(PLACEHOLDER.reveal() not in value for _, value in out)
    assert names.count("x-api-key") == 1
    assert not {"host", "authorization", "connection", "x-hop", "keep-alive", "proxy-authorization", "expect"} & {
        *names
    }


def test_upstream_headers_put_a_bearer_token_in_authorization() -> None:
    bearer = ("authorization", "Bearer sk-ant-oat-real")
    out = upstream_headers([("authorization", "Bearer " + PLACEHOLDER.reveal()), ("anthropic-version", "v")], bearer)
    assert out == [("anthropic-version", "v"), bearer, ("accept-encoding", "identity")]


def test_downstream_headers_drop_framing_and_hop_by_hop() -> None:
    response = [
        ("content-type", "text/event-stream"),
        ("Transfer-Encoding", "chunked"),
        ("connection", "keep-alive, x-trace"),
        ("x-trace", "1"),
        ("keep-alive", "timeout=5"),
        ("request-id", "req_1"),
        ("anthropic-ratelimit-unified-status", "allowed"),
        ("content-length", "10"),
    ]
    kept = [response[i] for i in (0, 5, 6, 7)]
    assert downstream_headers(response) == kept


def sse(kind: str, data: dict[str, Any], newline: str = "\n") -> bytes:
    body = json.dumps({"type": kind, **data})
    return f"event: {kind}{newline}data: {body}{newline}{newline}".encode()


def stream(messages: list[tuple[dict[str, int], dict[str, int]]], newline: str = "\n") -> bytes:
    """SSE for messages given as (message_start usage, message_delta usage), with text deltas between."""
    out = b""
    for start, delta in messages:
        out += sse("message_start", {"message": {"id": "m", "usage": start}}, newline)
        out += sse("ping", {}, newline)
        text = {"type": "text_delta", "text": 'not "message_start" nor "message_delta" \u00e9'}
        out += sse("content_block_delta", {"index": 0, "delta": text}, newline)
        out += sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": delta}, newline)
        out += sse("message_stop", {}, newline)
    return out


MESSAGES = [
    (
        {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 7},
        {"output_tokens": 25},
    ),
    (
        {"input_tokens": 40, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 90},
        {"output_tokens": 13, "input_tokens": 41, "cache_read_input_tokens": None},
    ),
]


def expected_usage(messages: list[tuple[dict[str, int], dict[str, Any]]]) -> Usage:
    """Per message: the start usage, overwritten by the integer fields of its (cumulative) delta."""
    total = Usage()
    for start, delta in messages:
        final = {**start, **{k: v for k, v in delta.items() if isinstance(v, int)}}
        total += Usage(**final)
    return total


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_sse_usage_at_every_split_point(newline: str) -> None:
    data = stream(MESSAGES, newline)
    want = expected_usage(MESSAGES)
    assert want.output_tokens == 25 + 13  # the deltas replace, not add to, the start's output_tokens
    for cut in range(len(data) + 1):
        meter = SSEUsage()
        meter.feed(data[:cut])
        meter.feed(data[cut:])
        assert meter.usage == want, cut


def test_sse_usage_byte_by_byte_and_in_random_chunks() -> None:
    data = stream(MESSAGES * 3)
    want = expected_usage(MESSAGES * 3)
    meter = SSEUsage()
    for i in range(len(data)):
        meter.feed(data[i : i + 1])
    assert meter.usage == want
    rng = random.Random(7)
    for _ in range(20):
        meter, i = SSEUsage(), 0
        while i < len(data):
            step = rng.randint(1, 300)
            meter.feed(data[i : i + step])
            i += step
        assert meter.usage == want


def test_sse_usage_counts_a_cut_stream_up_to_its_last_complete_event() -> None:
    start, delta = MESSAGES[0]
    data = stream([MESSAGES[0]])
    cut = data.index(b"event: message_delta")
    meter = SSEUsage()
    meter.feed(data[:cut] + sse("message_delta", {"usage": delta})[:-1])  # the delta's blank line never came
    assert meter.usage == Usage(**start)
    meter.feed(b"\n")
    assert meter.usage == expected_usage([MESSAGES[0]])


def test_sse_usage_ignores_events_it_cannot_read() -> None:
    meter = SSEUsage()
    meter.feed(b'data: {"type": "message_start", broken\n\n')
    meter.feed(b'data: ["message_delta"]\n\n')
    meter.feed(
        b'data: {"type": "message_start", "message": {"usage": {"input_tokens": "9", "output_tokens": true}}}\n\n'
    )
    meter.feed(b':comment "message_start"\n\n')
    assert meter.usage == Usage()


def test_json_usage() -> None:
    usage = MESSAGES[0][0]
    assert json_usage(json.dumps({"type": "message", "usage": usage}).encode()) == Usage(**usage)
    assert json_usage(b'{"type": "message"}') == Usage()
    assert json_usage(b"[1]") == Usage()
    assert json_usage(b"not json") == Usage()


def test_gateway_env_before_start_and_its_placeholder() -> None:
    credential = Credential("oauth_token", Secret("sk-ant-oat-real"), "test")
    one, two = Gateway("https://api.example", credential), Gateway("https://api.example", credential)
    with pytest.raises(UsageError, match="start"):
        one.env()
    assert one.placeholder.reveal().startswith("corral-placeholder-")
    assert one.placeholder != two.placeholder
    assert "real" not in repr(one.placeholder)
    assert Gateway("https://api.example/", credential, placeholder=PLACEHOLDER).placeholder is PLACEHOLDER
    assert one.usage == Usage()
    assert one.requests == 0
