"""Typed agent events (what they say about themselves) and the line splitter."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from corral.agents.events import (
    ApiRetry,
    AssistantText,
    Init,
    LineSplitter,
    Notice,
    RateLimit,
    Result,
    Text,
    ToolResult,
    ToolUse,
    Unparsed,
    clip,
)
from corral.jobs.models import Usage


def split_all(chunks: list[bytes]) -> list[bytes]:
    splitter = LineSplitter()
    lines = [line for chunk in chunks for line in splitter.feed(chunk)]
    return lines + splitter.flush()


def test_one_chunk_with_many_lines() -> None:
    assert split_all([b'{"a":1}\n{"b":2}\n\n{"c":3}\n']) == [b'{"a":1}', b'{"b":2}', b"", b'{"c":3}']


def test_a_line_in_many_chunks_including_single_bytes() -> None:
    data = '{"text":"héllo wörld ✓"}\n'.encode()
    assert split_all([bytes([b]) for b in data]) == [data[:-1]]


def test_flush_returns_the_unterminated_last_line_once() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"first\nsec") == [b"first"]
    assert splitter.feed(b"ond") == []
    assert splitter.flush() == [b"second"]
    assert splitter.flush() == []
    assert splitter.feed(b"again\n") == [b"again"]  # usable after a flush


def test_flush_after_a_final_newline_is_empty() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"x\n") == [b"x"]
    assert splitter.flush() == []


def test_carriage_returns_stay_in_the_line() -> None:
    assert split_all([b"a\r", b"\nb\r\n"]) == [b"a\r", b"b\r"]


def test_a_three_megabyte_line_in_uneven_chunks() -> None:
    line = b'{"type":"user","content":"' + b"x" * (3 << 20) + b'"}'
    data = b"before\n" + line + b"\nafter"
    rng = random.Random(7)
    chunks, at = [], 0
    while at < len(data):
        size = rng.randint(1, 70_000)
        chunks.append(data[at : at + size])
        at += size
    assert len(chunks) > 40
    assert split_all(chunks) == [b"before", line, b"after"]


def test_random_chunking_gives_the_same_lines_as_splitting_at_once() -> None:
    rng = random.Random(11)
    for _ in range(50):
        lines = [bytes(rng.choice(b'ab{}" \xc3\xa9') for _ in range(rng.randint(0, 30))) for _ in range(20)]
        data = b"\n".join(lines)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(15, len(data) - 1)))
        chunks = [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        expected = data.split(b"\n")
        if expected[-1] == b"":
            expected.pop()
        assert split_all(chunks) == expected


def test_clip_marks_a_cut() -> None:
    assert clip("short", 10) == "short"
    cut = clip("x" * 50, 10)
    assert len(cut) == 10
    assert cut.endswith("…")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            ToolUse("t1", "Write", {"file_path": "/srv/job/checkout/docs/hello.txt", "content": "hi"}),
            "tool Write hello.txt",
        ),
        (ToolUse("t2", "Bash", {"command": "pytest -q\necho done", "description": "run"}), "tool Bash pytest -q …"),
        (ToolUse("t3", "Grep", {"pattern": "TODO", "path": "src"}), "tool Grep TODO"),
        (ToolUse("t4", "WebFetch", {"url": "https://example.org/x"}), "tool WebFetch https://example.org/x"),
        (ToolUse("t5", "TaskList", {}), "tool TaskList"),
        (ToolResult("t1", False, "hi\n"), "result: hi"),
        (ToolResult("t1", True, "Exit code 1\nboom"), "tool error: Exit code 1 …"),
        (AssistantText("All tests pass."), "answer: All tests pass."),
        (
            AssistantText("Invalid API key", error="authentication_failed"),
            "error (authentication_failed): Invalid API key",
        ),
        (ApiRetry(2, 529, "overloaded"), "API retry 2: overloaded (HTTP 529)"),
        (ApiRetry(1, None, "unknown"), "API retry 1: unknown"),
        (
            RateLimit("rejected", datetime(2026, 1, 2, 15, 0, tzinfo=UTC)),
            "rate limit rejected, resets 2026-01-02T15:00+00:00",
        ),
        (RateLimit("allowed", None), "rate limit allowed"),
        (Text("  compiling...  "), "compiling..."),
        (Notice("system/compact_boundary"), "system/compact_boundary"),
        (Notice("thinking", "Let me look."), "thinking: Let me look."),
        (
            Unparsed("not json at all", "not JSON: Expecting value"),
            "unparsed output (not JSON: Expecting value): not json at all",
        ),
        (
            Init("s-1", "claude-sonnet-5", "/srv/job", "2.1.197", ("Bash", "Read")),
            "started claude-sonnet-5 (Claude Code 2.1.197, 2 tools)",
        ),
    ],
)
def test_describe_is_one_short_line(event: object, expected: str) -> None:
    text = event.describe()  # type: ignore[attr-defined]
    assert text == expected
    assert "\n" not in text


def test_describe_of_a_long_text_is_clipped() -> None:
    text = AssistantText("word " * 200).describe()
    assert len(text) <= len("answer: ") + 100
    assert text.endswith("…")


def result(**fields: object) -> Result:
    base: dict[str, object] = {
        "is_error": False,
        "subtype": "success",
        "text": "done",
        "session_id": "s-1",
        "num_turns": 1,
        "cost_usd": 0.01,
        "usage": Usage(input_tokens=10, output_tokens=5),
        "duration_ms": 100,
        "errors": (),
        "api_error_status": None,
        "terminal_reason": "completed",
    }
    base.update(fields)
    return Result(**base)  # type: ignore[arg-type]


def test_result_describes_success_and_failure() -> None:
    assert result().describe() == "done: done"
    failed = result(is_error=True, subtype="error_max_turns", text="", errors=("Reached maximum number of turns (1)",))
    assert failed.describe() == "failed (error_max_turns): Reached maximum number of turns (1)"


def test_only_the_result_adds_usage() -> None:
    usage = Usage(input_tokens=3, output_tokens=4, cache_read_input_tokens=5)
    assert AssistantText("hi").usage_added() == Usage()
    assert ToolUse("t", "Bash", {"command": "ls"}).usage_added() == Usage()
    assert RateLimit("allowed", None).usage_added() == Usage()
    assert result(usage=usage).usage_added() == usage
