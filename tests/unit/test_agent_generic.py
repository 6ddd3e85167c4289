"""A generic agent CLI: the template substituted without a shell, lines as text, the exit code as verdict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.agents.base import AgentRequest
from corral.agents.events import LineSplitter, Text
from corral.agents.generic import GenericAgent
from corral.errors import UsageError

HOSTILE = "fix it; rm -rf / $(touch pwned) `id` {prompt} 'quoted' \"double\""


def make_request(**overrides: Any) -> AgentRequest:
    fields: dict[str, Any] = {
        "prompt": "Fix the failing test",
        "cwd": Path("/srv/job/checkout"),
        "config_dir": Path("/srv/job/agent-config"),
        "tmp_dir": Path("/srv/job/tmp"),
        "base_url": "http://127.0.0.1:4000",
        "credential_env": {"ANTHROPIC_API_KEY": "corral-placeholder"},
    }
    fields.update(overrides)
    return AgentRequest(**fields)


def test_prompt_is_substituted_verbatim_into_single_items() -> None:
    agent = GenericAgent(["aider", "--yes", "--message={prompt}", "{not_a_field}", "{prompt}"], name="aider")
    invocation = agent.invocation(make_request(prompt=HOSTILE))
    assert invocation.argv == ("aider", "--yes", f"--message={HOSTILE}", "{not_a_field}", HOSTILE)
    assert invocation.stdin is None
    assert agent.name == "aider"


def test_without_a_placeholder_the_prompt_goes_on_stdin() -> None:
    invocation = GenericAgent(["my-agent", "--stdin"]).invocation(make_request(prompt=HOSTILE))
    assert invocation.argv == ("my-agent", "--stdin")
    assert invocation.stdin == HOSTILE.encode()


def test_environment_has_the_gateway_and_the_placeholder_only() -> None:
    invocation = GenericAgent(["x", "{prompt}"], ro_binds=[Path("/opt/x")]).invocation(make_request())
    assert invocation.env == {
        "HOME": "/home/sandbox",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "TMPDIR": "/srv/job/tmp",
        "ANTHROPIC_BASE_URL": "http://127.0.0.1:4000",
        "ANTHROPIC_API_KEY": "corral-placeholder",
    }
    assert invocation.files == {}
    assert invocation.ro_binds == (Path("/opt/x"),)


def test_bad_templates_and_prompts_are_refused() -> None:
    with pytest.raises(UsageError, match="command is empty"):
        GenericAgent([])
    with pytest.raises(UsageError, match="command is empty"):
        GenericAgent([""])
    with pytest.raises(UsageError, match="NUL character"):
        GenericAgent(["x", "{prompt}"]).invocation(make_request(prompt="a\0b"))


def test_prepare_writes_nothing(tmp_path: Path) -> None:
    GenericAgent(["x"]).prepare(make_request(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_lines_become_text_events() -> None:
    agent = GenericAgent(["x"])
    assert agent.parse(b"Applied edit to a.py\r") == (Text("Applied edit to a.py"),)
    assert agent.parse(b"bad \xff byte") == (Text("bad \ufffd byte"),)
    assert agent.parse(b"") == (Text(""),)


def test_exit_zero_is_completed_with_the_last_lines() -> None:
    agent = GenericAgent(["x"], name="aider")
    events = [Text(f"line {i}") for i in range(15)] + [Text("   ")]
    outcome = agent.outcome(events, 0)
    assert (outcome.succeeded, outcome.reason) == (True, "completed")
    assert outcome.summary.splitlines() == [f"line {i}" for i in range(5, 15)]
    assert agent.outcome([], 0).summary == "aider finished and printed nothing."


@pytest.mark.parametrize(
    ("events", "exit_code", "reason", "summary"),
    [
        (
            [Text("Traceback ..."), Text("KeyError: 'x'")],
            1,
            "agent_error",
            "g exited with code 1:\nTraceback ...\nKeyError: 'x'",
        ),
        ([Text("oops"), Text("")], 2, "agent_error", "g exited with code 2:\noops"),
        ([], 3, "no_output", "g exited with code 3."),
        ([Text("working")], None, "crashed", "g was lost without an exit code:\nworking"),
        ([], None, "crashed", "g was lost without an exit code."),
    ],
)
def test_failures_by_exit_code(events: list[Any], exit_code: int | None, reason: str, summary: str) -> None:
    outcome = GenericAgent(["x"], name="g").outcome(events, exit_code)
    assert (outcome.succeeded, outcome.reason, outcome.summary) == (False, reason, summary)


def test_a_real_process_round_trip() -> None:
    """The invocation run as a real process: the prompt arrives as one argument, output comes back as events."""
    script = "import sys; print('got:', sys.argv[1]); print('args:', len(sys.argv) - 1); sys.exit(3)"
    agent = GenericAgent([sys.executable, "-c", script, "{prompt}"])
    invocation = agent.invocation(make_request(prompt=HOSTILE))
    done = subprocess.run(invocation.argv, capture_output=True, check=False, timeout=30)
    splitter = LineSplitter()
    events = [event for line in splitter.feed(done.stdout) + splitter.flush() for event in agent.parse(line)]
    outcome = agent.outcome(events, done.returncode)
    assert events == [Text(f"got: {HOSTILE}"), Text("args: 1")]
    assert (outcome.reason, outcome.summary.splitlines()[0]) == ("agent_error", "generic exited with code 3:")
