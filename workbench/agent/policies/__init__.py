"""Agent policies: each is one module here registering a class with `@POLICIES.register(name)`.

A policy is built from the run's settings (`Policy(settings)`) and answers `propose(observation,
history) -> Action`: which blocks to raise and by how much (at most `observation.step` each; the loop
bounds it anyway). `history` is every step so far (the self-reflection memory: raised blocks, measured
perplexity, accepted or rolled back). A policy never raises: a failure is an empty Action with its reason.
"""

from __future__ import annotations

from typing import Protocol

from workbench.agent.record import Action, Observation, StepRecord
from workbench.infra.registry import Registry


class Policy(Protocol):
    """Decides each step of an agent run."""

    name: str

    def propose(self, observation: Observation, history: list[StepRecord]) -> Action: ...


POLICIES: Registry[type] = Registry("policy", __name__)


def make_policy(name: str, settings) -> Policy:
    """The policy called `name`, built for `settings` (an `AgentSettings`)."""
    return POLICIES.get(name, where="policy")(settings)
