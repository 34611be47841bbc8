"""A plan is checked once per public engine call and once per prune job of the app (an edit's re-prune):
the checked plan (`workbench.engine.planner.CheckedPlan`) is passed on instead of checking it again."""

from __future__ import annotations

import pytest

from workbench.app.controller import PruneJob
from workbench.domain.plan import Plan
from workbench.engine.planner import Planner
from workbench.infra.errors import WorkbenchError
from workbench.jobs.core import Jobs
from workbench.jobs.kinds import KINDS
from workbench.jobs.results import Pruned


@pytest.fixture
def checked(monkeypatch) -> list[Plan]:
    """The plans `Planner.check` is called with, in order."""
    seen: list[Plan] = []
    check = Planner.check
    monkeypatch.setattr(Planner, "check", lambda self, plan: seen.append(plan) or check(self, plan))
    return seen


def test_an_edits_prune_job_checks_its_plan_once(engine, checked):
    jobs = Jobs(KINDS)
    jobs.adopt(engine)
    results = []
    jobs.subscriber = lambda event: results.append(getattr(event, "value", None))
    first = Plan(sparsity=0.5)
    jobs.submit("full_prune", spec=PruneJob(first, first))
    assert checked == [first, first]  # the calibrating prune, then the plan applied after it
    edited = Plan(sparsity=0.5, block_overrides={1: 0.7})
    jobs.submit("prune", spec=PruneJob(edited))
    assert checked == [first, first, edited]
    assert isinstance(results[-1], Pruned) and results[-1].final and engine.plan is edited


def test_a_checked_plan_keeps_the_errors_of_the_plan(engine, checked):
    with pytest.raises(WorkbenchError) as err:
        engine.check_plan(Plan(block_overrides={9: 0.5}))
    assert (err.value.where, err.value.what) == ("overrides.blocks.9", "no such block (the model has blocks 0..3)")
    once = engine.check_plan(Plan(allocator="owl", allocator_params={"M": 7.0}))
    assert once.method.name == "wanda" and once.allocator.name == "owl" and once.pattern is None
    assert once.allocator_params["M"] == 7.0 and set(once.allocator_params) == set(once.allocator.defaults)
    assert engine.check_plan(once) is once and len(checked) == 2
