"""Agents: how an agent CLI is invoked, and how its output becomes typed events and an outcome."""

from corral.agents.base import REASONS, Agent, AgentRequest, Invocation, Outcome, Reason
from corral.agents.claude_code import ClaudeCodeAgent
from corral.agents.events import AgentEvent, LineSplitter
from corral.agents.generic import GenericAgent

__all__ = [
    "REASONS",
    "Agent",
    "AgentEvent",
    "AgentRequest",
    "ClaudeCodeAgent",
    "GenericAgent",
    "Invocation",
    "LineSplitter",
    "Outcome",
    "Reason",
]
