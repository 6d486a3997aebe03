"""The vehicle agent's composition root."""

from tcu.agent.app import Agent, AgentStats

__all__ = ["Agent", "AgentStats"]
