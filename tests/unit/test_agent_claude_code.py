"""Claude Code: the invocation as data, the seeded config dir, and the stream-json parsing and
classification, checked against streams recorded from the real CLI.

The fixtures in ``tests/fixtures/claude_code`` are stdout of Claude Code 2.1.197 run through
``ClaudeCodeAgent.invocation`` and ``prepare`` as uid 65534 in a loopback-only network namespace,
against a scripted stand-in of the Messages API; only the scratch paths were renamed to
``/srv/job/...``. The exit code of each run is in ``RECORDED`` below. The old-style
"Claude AI usage limit reached|<epoch>" result is not produced by this CLI version: those lines
are built here from the documented format.
"""

from __future__ import annotations

import itertools
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from corral.agents.base import REASONS, AgentRequest, Outcome
from corral.agents.claude_code import (
    APPEND_PROMPT_FILE,
    DEFAULT_DENY,
    MANAGED_SETTINGS_PATH,
    ClaudeCodeAgent,
    build_argv,
    build_env,
    managed_settings,
    resolve_cli,
)
from corral.agents.claude_stream import classify, parse_line
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
)
from corral.errors import AgentError, CredentialsError, UsageError
from corral.jobs.models import Usage
from corral.secrets import Secret

FIXTURES = Path(__file__).parent.parent / "fixtures" / "claude_code"
ELF = b"\x7fELF\x02\x01\x01" + b"\0" * 57

# fixture -> (exit code of the recorded run, expected reason)
RECORDED = {
    "success_write_bash": (0, "completed"),
    "sigterm_during_tool": (143, "completed"),  # SIGTERM killed the tool; the CLI still finished the turn
    "max_turns": (1, "max_turns"),
    "max_budget": (1, "max_budget"),
    "auth_401": (1, "api_error"),
    "rate_limited_429": (1, "api_error"),  # a 429 on an API key is not a usage limit
    "unreachable": (1, "api_error"),  # is_error with api_error_status null
    "usage_limit": (1, "usage_limit"),
    "interrupted_sigterm": (143, "interrupted"),
}


def lines(name: str) -> list[bytes]:
    return (FIXTURES / f"{name}.jsonl").read_bytes().splitlines()


def records(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(name)]


@pytest.fixture
def cli(tmp_path: Path) -> Path:
    """An npm-style install: ``.bin/claude`` -> ``../@anthropic-ai/claude-code/bin/claude.exe`` (an ELF)."""
    modules = tmp_path / "node_modules"
    real = modules / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"
    real.parent.mkdir(parents=True)
    real.write_bytes(ELF)
    link = modules / ".bin" / "claude"
    link.parent.mkdir()
    link.symlink_to("../@anthropic-ai/claude-code/bin/claude.exe")
    return link


def make_request(**overrides: Any) -> AgentRequest:
    fields: dict[str, Any] = {
        "prompt": "Fix the failing test",
        "cwd": Path("/srv/job/checkout"),
        "config_dir": Path("/srv/job/claude-config"),
        "tmp_dir": Path("/srv/job/tmp"),
        "base_url": "http://127.0.0.1:4000",
        "credential_env": {"ANTHROPIC_API_KEY": "corral-placeholder-0123456789abcdefghij"},
    }
    fields.update(overrides)
    return AgentRequest(**fields)


def parse_all(raw: list[bytes]) -> list[AgentEvent]:
    return list(itertools.chain.from_iterable(parse_line(line) for line in raw))


def run(name: str) -> tuple[list[AgentEvent], Outcome]:
    agent_events = parse_all(lines(name))
    return agent_events, classify(agent_events, RECORDED[name][0])


# --- recorded streams ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_parses_without_unparsed_lines(name: str) -> None:
    per_line = [parse_line(line) for line in lines(name)]
    assert all(per_line)  # every recorded line says something
    agent_events = parse_all(lines(name))
    assert not [e for e in agent_events if isinstance(e, Unparsed)]
    assert isinstance(agent_events[0], Init)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_stream_is_classified(name: str) -> None:
    _, outcome = run(name)
    assert outcome.reason == RECORDED[name][1]
    assert outcome.succeeded is (outcome.reason == "completed")
    assert outcome.reason in REASONS
    raw = records(name)
    assert outcome.session_id == raw[0]["session_id"]
    final = [r for r in raw if r["type"] == "result"]
    if final:
        assert outcome.subtype == final[-1]["subtype"]
        assert outcome.num_turns == final[-1]["num_turns"]
        assert outcome.cost_usd == final[-1]["total_cost_usd"]
        assert outcome.duration_ms == final[-1]["duration_ms"]
        assert outcome.usage == Usage(**{k: final[-1]["usage"][k] for k in Usage.__dataclass_fields__})


def test_success_stream_gives_the_tool_calls_in_order() -> None:
    agent_events = list(run("success_write_bash")[0])
    assert [type(e) for e in agent_events] == [
        Init,
        AssistantText,
        ToolUse,
        ToolResult,
        ToolUse,
        ToolResult,
        AssistantText,
        Result,
    ]
    init, _, write, written, bash, output, _, result = agent_events
    assert isinstance(init, Init)
    assert init.version == records("success_write_bash")[0]["claude_code_version"]
    assert {"Write", "Bash"} <= set(init.tools)
    assert isinstance(write, ToolUse)
    assert write.describe() == "tool Write hello.txt"
    assert isinstance(written, ToolResult)
    assert (written.tool_use_id, written.is_error) == (write.id, False)
    assert isinstance(bash, ToolUse)
    assert bash.input["command"] == "cat hello.txt"
    assert isinstance(output, ToolResult)
    assert output.content == "hi"
    assert isinstance(result, Result)
    assert result.usage_added() == result.usage != Usage()


def test_max_turns_summary_is_the_cli_error() -> None:
    _, outcome = run("max_turns")
    errors = next(r for r in records("max_turns") if r["type"] == "result")["errors"]
    assert outcome.summary == "; ".join(errors)


def test_auth_error_keeps_the_assistant_error_kind_and_retries() -> None:
    agent_events = list(run("auth_401")[0])
    assert [e.error for e in agent_events if isinstance(e, AssistantText)] == ["authentication_failed"]
    retries = [e for e in agent_events if isinstance(e, ApiRetry)]
    assert retries
    assert {r.status for r in retries} == {401}
    result = next(e for e in agent_events if isinstance(e, Result))
    assert (result.is_error, result.subtype, result.api_error_status) == (True, "success", 401)


def test_usage_limit_resets_when_the_rate_limit_event_says() -> None:
    _, outcome = run("usage_limit")
    info = next(r for r in records("usage_limit") if r["type"] == "rate_limit_event")["rate_limit_info"]
    assert outcome.usage_limit_resets_at == datetime.fromtimestamp(info["resetsAt"], UTC)
    assert outcome.summary.startswith("You've hit your")


def test_sigterm_without_result_is_interrupted_with_the_session_to_resume() -> None:
    _, outcome = run("interrupted_sigterm")
    assert "143 (SIGTERM)" in outcome.summary
    assert "tool Bash" in outcome.summary  # the last thing the agent did
    assert outcome.session_id == records("interrupted_sigterm")[0]["session_id"]


# --- classification branches ----------------------------------------------------------------


def result_line(**fields: Any) -> bytes:
    data: dict[str, Any] = {
        "type": "result",
        "subtype": "success",
        "is_error": False,
        "num_turns": 2,
        "result": "ok",
        "session_id": "7b0c8a3e-2f1d-4c55-9a0e-1c2d3e4f5a6b",
        "total_cost_usd": 0.5,
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    data.update(fields)
    return json.dumps(data).encode()


def outcome_of(*raw: bytes, exit_code: int | None = 1) -> Outcome:
    return classify(parse_all(list(raw)), exit_code)


def test_success_subtype_with_is_error_is_a_failure() -> None:
    outcome = outcome_of(result_line(is_error=True, result="Something broke"))
    assert (outcome.succeeded, outcome.reason, outcome.summary) == (False, "agent_error", "Something broke")


def test_error_subtype_without_is_error_is_a_success() -> None:
    outcome = outcome_of(result_line(subtype="error_during_execution", is_error=False), exit_code=0)
    assert (outcome.succeeded, outcome.reason) == (True, "completed")


def test_error_during_execution_is_an_agent_error_summarised_by_its_errors() -> None:
    outcome = outcome_of(result_line(subtype="error_during_execution", is_error=True, result=None, errors=["a", "b"]))
    assert (outcome.reason, outcome.summary) == ("agent_error", "a; b")


def test_old_style_usage_limit_carries_its_epoch() -> None:
    epoch = 1772096400
    outcome = outcome_of(
        result_line(is_error=True, result=f"Claude AI usage limit reached|{epoch}", api_error_status=429)
    )
    assert outcome.reason == "usage_limit"
    assert outcome.usage_limit_resets_at == datetime.fromtimestamp(epoch, UTC)


def test_usage_limit_message_without_event_has_no_reset_time() -> None:
    outcome = outcome_of(result_line(is_error=True, result="You've hit your weekly limit · resets Mon 9am"))
    assert (outcome.reason, outcome.usage_limit_resets_at) == ("usage_limit", None)


def test_rejected_rate_limit_wins_over_the_api_error_status() -> None:
    event = {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1900000000}}
    outcome = outcome_of(json.dumps(event).encode(), result_line(is_error=True, result="x", api_error_status=429))
    assert outcome.reason == "usage_limit"
    assert outcome.usage_limit_resets_at == datetime.fromtimestamp(1900000000, UTC)


def test_rejected_rate_limit_then_no_result_is_a_usage_limit() -> None:
    event = {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected", "resetsAt": 1900000000}}
    outcome = outcome_of(json.dumps(event).encode(), exit_code=1)
    assert outcome.reason == "usage_limit"


def test_allowed_warning_does_not_make_a_success_a_limit() -> None:
    event = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed_warning", "resetsAt": 1900000000}}
    assert outcome_of(json.dumps(event).encode(), result_line(), exit_code=0).reason == "completed"


def test_budget_and_turns_by_terminal_reason() -> None:
    assert (
        outcome_of(result_line(is_error=True, subtype="x", terminal_reason="budget_exhausted")).reason == "max_budget"
    )
    assert outcome_of(result_line(is_error=True, subtype="x", terminal_reason="max_turns")).reason == "max_turns"


def test_the_last_result_counts() -> None:
    outcome = outcome_of(result_line(is_error=True, result="first"), result_line(result="second"), exit_code=0)
    assert (outcome.reason, outcome.summary) == ("completed", "second")


@pytest.mark.parametrize(
    ("exit_code", "reason", "words"),
    [
        (1, "crashed", "exited with code 1 before"),
        (-9, "crashed", "was killed by SIGKILL"),
        (137, "crashed", "exited with code 137 (SIGKILL)"),
        (None, "crashed", "was lost without an exit code"),
        (130, "interrupted", "exited with code 130 (SIGINT)"),
        (-15, "interrupted", "was killed by SIGTERM"),
    ],
)
def test_no_result_is_a_crash_or_an_interruption(exit_code: int | None, reason: str, words: str) -> None:
    outcome = outcome_of(*lines("interrupted_sigterm")[:2], exit_code=exit_code)
    assert (outcome.succeeded, outcome.reason) == (False, reason)
    assert words in outcome.summary


def test_no_output_at_all() -> None:
    outcome = classify([], 1)
    assert (outcome.reason, outcome.summary) == ("no_output", "Claude Code printed nothing and exited with code 1.")


def test_a_long_answer_is_clipped_in_the_summary() -> None:
    outcome = outcome_of(result_line(result="x" * 10_000), exit_code=0)
    assert len(outcome.summary) == 4000


# --- parsing odd lines ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"Error: something on stdout", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"type": "brand_new_event"}', "unexpected brand_new_event event: the type 'brand_new_event' is unknown"),
        (b'{"type": "result", "subtype": "success"}', "'is_error' is not a boolean"),
        (b'{"type": "assistant", "message": {"content": 5}}', "'message.content' is not a list"),
        (b'{"type": "assistant", "message": {"content": [{"type": "tool_use", "name": "Bash"}]}}', "'id' is not"),
        (b'{"type": "rate_limit_event"}', "'rate_limit_info' is not an object"),
        (b'{"type": "system", "subtype": "init"}', "'session_id' is not a string"),
        (b"\xff\xfe{not utf8", "not JSON"),
    ],
)
def test_bad_lines_are_unparsed_not_exceptions(line: bytes, why: str) -> None:
    (event,) = parse_line(line)
    assert isinstance(event, Unparsed)
    assert why in event.why


@pytest.mark.parametrize("line", [b"", b"  \r", b'{"type":"assistant","message":{"content":[]}}'])
def test_lines_that_say_nothing_give_no_events(line: bytes) -> None:
    assert parse_line(line) == ()


def test_an_unparsed_line_keeps_only_an_excerpt() -> None:
    (event,) = parse_line(b"x" * 3_000_000)
    assert isinstance(event, Unparsed)
    assert len(event.line) == 500


def test_several_blocks_in_one_line_are_several_events() -> None:
    line = {
        "type": "assistant",
        "message": {
            "content": [
                {"type": "thinking", "thinking": "Look first."},
                {"type": "text", "text": "Reading it."},
                {"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": "/srv/a.py"}},
            ]
        },
    }
    agent_events = parse_line(json.dumps(line).encode())
    assert [e.describe() for e in agent_events] == ["thinking: Look first.", "answer: Reading it.", "tool Read a.py"]


def test_tool_results_with_blocks_and_errors() -> None:
    line = {
        "type": "user",
        "message": {
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "a",
                    "content": [{"type": "text", "text": "out"}, {"type": "image"}],
                },
                {"type": "tool_result", "tool_use_id": "b", "content": "boom", "is_error": True},
            ]
        },
    }
    assert parse_line(json.dumps(line).encode()) == (
        ToolResult("a", False, "out\n[image]"),
        ToolResult("b", True, "boom"),
    )


def test_a_long_tool_result_is_an_excerpt() -> None:
    line = {
        "type": "user",
        "message": {"content": [{"type": "tool_result", "tool_use_id": "a", "content": "y" * 9000}]},
    }
    (event,) = parse_line(json.dumps(line).encode())
    assert isinstance(event, ToolResult)
    assert len(event.content) == 500


def test_known_events_that_need_no_action_are_notices() -> None:
    assert parse_line(b'{"type":"system","subtype":"compact_boundary"}') == (Notice("system/compact_boundary"),)
    assert parse_line(b'{"type":"stream_event","event":{}}') == (Notice("stream_event"),)
    assert parse_line(b'{"type":"user","message":{"content":"echoed prompt"}}') == (Notice("user", "echoed prompt"),)


def test_rate_limit_event_with_odd_reset_has_none() -> None:
    line = b'{"type":"rate_limit_event","rate_limit_info":{"status":"allowed","resetsAt":"soon"}}'
    assert parse_line(line) == (RateLimit("allowed", None),)


# --- the invocation as data ---------------------------------------------------------------------


def test_argv_resolves_the_npm_symlink_and_binds_the_real_directory(cli: Path) -> None:
    agent = ClaudeCodeAgent(cli)
    invocation = agent.invocation(make_request())
    real = cli.resolve()
    assert invocation.argv == (
        str(real), "-p", "Fix the failing test",
        "--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions",
    )  # fmt: skip
    assert invocation.ro_binds == (real.parent,)
    assert invocation.stdin is None
    assert agent.name == "claude-code"


def test_argv_with_every_option(cli: Path) -> None:
    session = "7b0c8a3e-2f1d-4c55-9a0e-1c2d3e4f5a6b"
    request = make_request(
        max_turns=30, max_budget_usd=2.5, model="claude-opus-4-8[1m]", permission_mode="acceptEdits",
        append_system_prompt="Commit nothing.", resume_session=session,
    )  # fmt: skip
    argv, stdin = build_argv(resolve_cli(cli), request)
    assert argv == (
        str(cli.resolve()), "-p", "Fix the failing test",
        "--output-format", "stream-json", "--verbose", "--permission-mode", "acceptEdits",
        "--max-turns", "30", "--max-budget-usd", "2.5", "--model", "claude-opus-4-8[1m]",
        "--append-system-prompt-file", "/srv/job/claude-config/" + APPEND_PROMPT_FILE,
        "--resume", session,
    )  # fmt: skip
    assert "Commit nothing." not in argv  # the text goes in the file, not on the command line
    assert stdin is None


@pytest.mark.parametrize(
    "prompt",
    ["--help me", "-x", "a\0b", "x" * 100_001, "é" * 50_001],
    ids=["option-like", "flag", "nul", "long", "long-in-bytes"],
)
def test_prompts_that_cannot_be_an_argument_go_on_stdin(cli: Path, prompt: str) -> None:
    argv, stdin = build_argv(resolve_cli(cli), make_request(prompt=prompt))
    assert stdin == prompt.encode()
    assert argv[1:] == ("-p", "--output-format", "stream-json", "--verbose", "--permission-mode", "bypassPermissions")


@pytest.mark.parametrize(
    ("overrides", "error", "words"),
    [
        ({"prompt": "  \n"}, UsageError, "prompt is empty"),
        ({"prompt": "x" * (10 * 1024 * 1024 + 1)}, UsageError, "at most 10 MiB"),
        ({"prompt": "😀" * (5 * 1024 * 1024 + 1)}, UsageError, "at most 10 MiB"),  # two UTF-16 units each
        ({"permission_mode": "yolo"}, UsageError, "'yolo' is unknown"),
        ({"max_turns": 0}, UsageError, "max_turns is 0"),
        ({"max_budget_usd": 0.0}, UsageError, "max_budget_usd is 0.0"),
        ({"max_budget_usd": float("nan")}, UsageError, "max_budget_usd is nan"),
        ({"max_budget_usd": float("inf")}, UsageError, "max_budget_usd is inf"),
        ({"model": "--dangerously-skip-permissions"}, UsageError, "model name"),
        ({"model": "opus 4"}, UsageError, "model name"),
        ({"resume_session": "--continue"}, UsageError, "not a session id"),
        ({"base_url": "127.0.0.1:4000"}, UsageError, "not an http(s) URL"),
        ({"credential_env": {"ANTHROPIC_BASE_URL": "http://evil"}}, UsageError, "ANTHROPIC_BASE_URL"),
        ({"credential_env": {}}, CredentialsError, "no credential"),
    ],
)
def test_bad_requests_are_refused_with_a_sentence(
    cli: Path, overrides: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=None) as caught:
        ClaudeCodeAgent(cli).invocation(make_request(**overrides))
    assert words in str(caught.value)
    assert str(caught.value).endswith(".")


def test_a_prompt_just_under_the_stdin_cap_is_accepted(cli: Path) -> None:
    prompt = "x" * (10 * 1024 * 1024)
    assert ClaudeCodeAgent(cli).invocation(make_request(prompt=prompt)).stdin == prompt.encode()


def test_environment_is_complete_and_has_no_sandbox_escape_hatch() -> None:
    request = make_request(credential_env={"CLAUDE_CODE_OAUTH_TOKEN": "corral-placeholder"})
    assert build_env(request) == {
        "HOME": "/home/sandbox",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "CLAUDE_CONFIG_DIR": "/srv/job/claude-config",
        "CLAUDE_CODE_TMPDIR": "/srv/job/tmp",
        "TMPDIR": "/srv/job/tmp",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
        "CLAUDE_CODE_OAUTH_TOKEN": "corral-placeholder",
    }


def test_managed_settings_hold_the_policy_and_the_offline_switches(cli: Path) -> None:
    request = make_request(permission_mode="dontAsk")
    files = ClaudeCodeAgent(cli).invocation(request).files
    assert list(files) == [MANAGED_SETTINGS_PATH] == [Path("/etc/claude-code/managed-settings.json")]
    settings = json.loads(files[MANAGED_SETTINGS_PATH])
    assert settings == managed_settings(request)
    assert settings["permissions"] == {"defaultMode": "dontAsk", "deny": list(DEFAULT_DENY)}
    assert "Bash(git push *)" in settings["permissions"]["deny"]
    env = settings["env"]
    assert env["ANTHROPIC_BASE_URL"] == request.base_url  # a repository's settings cannot point it elsewhere
    for name in ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "DISABLE_TELEMETRY", "DISABLE_AUTOUPDATER"):
        assert env[name] == build_env(request)[name] == "1"
    assert not set(env) & {"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"}
    # hooks of the repository still run, inside the sandbox
    assert not {"disableAllHooks", "allowManagedHooksOnly", "hooks"} & set(settings)


def test_deny_rules_can_be_replaced(cli: Path) -> None:
    files = ClaudeCodeAgent(cli, deny=("WebSearch",)).invocation(make_request()).files
    assert json.loads(files[MANAGED_SETTINGS_PATH])["permissions"]["deny"] == ["WebSearch"]


def test_the_stub_left_by_npm_without_scripts_leads_to_the_platform_binary(tmp_path: Path) -> None:
    scope = tmp_path / "node_modules" / "@anthropic-ai"
    stub = scope / "claude-code" / "bin" / "claude.exe"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\necho 'claude native binary not installed'\nexit 1\n")
    native = scope / "claude-code-linux-x64" / "claude"
    native.parent.mkdir()
    native.write_bytes(ELF)
    assert resolve_cli(stub) == native.resolve()
    assert ClaudeCodeAgent(stub).invocation(make_request()).ro_binds == (native.parent.resolve(),)


def test_a_missing_cli_is_an_agent_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"does not exist; install it"):
        ClaudeCodeAgent(tmp_path / "nowhere" / "claude")


# --- prepare ---------------------------------------------------------------------------------


def read_state(config: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((config / ".claude.json").read_text())
    return data


def test_prepare_seeds_onboarding_trust_and_the_placeholder_key(tmp_path: Path, cli: Path) -> None:
    config = tmp_path / "cfg"
    request = make_request(append_system_prompt="Say PINEAPPLE at the end.")
    ClaudeCodeAgent(cli).prepare(request, config)
    state = read_state(config)
    assert state["hasCompletedOnboarding"] is True
    assert state["projects"][str(request.cwd)]["hasTrustDialogAccepted"] is True
    key = request.credential_env["ANTHROPIC_API_KEY"]
    assert state["customApiKeyResponses"]["approved"] == [key[-20:]]
    assert (config / APPEND_PROMPT_FILE).read_text() == "Say PINEAPPLE at the end."
    assert stat.S_IMODE((config / ".claude.json").stat().st_mode) == 0o600


def test_prepare_keeps_what_the_cli_wrote_and_is_idempotent(tmp_path: Path, cli: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    earlier = {
        "userID": "abc",
        "theme": "light",
        "projects": {"/srv/job/checkout": {"allowedTools": ["Bash"], "hasTrustDialogAccepted": False}, "/other": {}},
    }
    (config / ".claude.json").write_text(json.dumps(earlier))
    agent = ClaudeCodeAgent(cli)
    agent.prepare(make_request(), config)
    agent.prepare(make_request(), config)
    state = read_state(config)
    assert (state["userID"], state["theme"]) == ("abc", "light")
    assert state["projects"]["/srv/job/checkout"] == {
        "allowedTools": ["Bash"], "hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True,
    }  # fmt: skip
    assert state["projects"]["/other"] == {}
    assert len(state["customApiKeyResponses"]["approved"]) == 1
    assert sorted(p.name for p in config.iterdir()) == [".claude.json"]  # no temporary file left


@pytest.mark.parametrize("content", [b"{broken", b"[]", b"\xff" * 10])
def test_prepare_replaces_an_unreadable_state_file(tmp_path: Path, cli: Path, content: bytes) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    (config / ".claude.json").write_bytes(content)
    ClaudeCodeAgent(cli).prepare(make_request(), config)
    assert read_state(config)["hasCompletedOnboarding"] is True


def test_prepare_never_writes_through_a_symlink_the_agent_left(tmp_path: Path, cli: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    target = tmp_path / "host-file"
    target.write_text('{"precious": true}')
    (config / ".claude.json").symlink_to(target)
    (config / APPEND_PROMPT_FILE).symlink_to(target)
    ClaudeCodeAgent(cli).prepare(make_request(append_system_prompt="hi"), config)
    assert target.read_text() == '{"precious": true}'
    assert not (config / ".claude.json").is_symlink()
    assert "precious" not in read_state(config)
    assert not (config / APPEND_PROMPT_FILE).is_symlink()


def test_prepare_removes_a_stale_appended_prompt(tmp_path: Path, cli: Path) -> None:
    config = tmp_path / "cfg"
    agent = ClaudeCodeAgent(cli)
    agent.prepare(make_request(append_system_prompt="old"), config)
    agent.prepare(make_request(), config)
    assert not (config / APPEND_PROMPT_FILE).exists()


def test_prepared_files_belong_to_the_owner_of_the_config_dir(tmp_path: Path, cli: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    owner = (54321, 54322) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        os.chown(config, *owner)
    ClaudeCodeAgent(cli).prepare(make_request(append_system_prompt="x"), config)
    for name in (".claude.json", APPEND_PROMPT_FILE):
        info = (config / name).stat()
        assert (info.st_uid, info.st_gid) == owner


def test_the_real_credential_never_reaches_the_agent(
    tmp_path: Path, cli: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Secret("sk-ant-api03-REAL-credential-held-by-the-gateway-only")
    for name in ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.setenv(name, real.reveal())  # as if corral itself ran with it
    placeholder = "corral-placeholder-job-42"
    request = make_request(credential_env={"ANTHROPIC_API_KEY": placeholder}, append_system_prompt="Be brief.")
    agent = ClaudeCodeAgent(cli)
    invocation = agent.invocation(request)
    agent.prepare(request, tmp_path / "cfg")
    seen = [*invocation.argv, *invocation.env, *invocation.env.values(), repr(invocation)]
    seen += [data.decode() for data in invocation.files.values()]
    seen += [path.read_text() for path in (tmp_path / "cfg").iterdir()]
    assert not [text for text in seen if real.reveal() in text or real.reveal()[-20:] in text]
    assert invocation.env["ANTHROPIC_API_KEY"] == placeholder
    assert "IS_SANDBOX" not in invocation.env


def test_parse_and_outcome_are_the_stream_functions(cli: Path) -> None:
    agent = ClaudeCodeAgent(cli)
    agent_events = [event for line in lines("max_turns") for event in agent.parse(line)]
    assert agent_events == parse_all(lines("max_turns"))
    assert agent.outcome(agent_events, 1) == classify(agent_events, 1)
