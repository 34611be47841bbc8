"""The job layer (workbench.jobs) with the inline runner: events in order, exclusive jobs refused or other
jobs queued behind them, cancels that leave the model as it was, errors as one event."""

from __future__ import annotations

import pytest
import torch

from workbench.app.controller import PruneJob
from workbench.domain.plan import Plan
from workbench.jobs import events
from workbench.jobs.core import JobKind, Jobs
from workbench.jobs.kinds import KINDS
from workbench.jobs.results import Probed, Pruned


def recorder(jobs: Jobs) -> list[events.Event]:
    seen: list[events.Event] = []
    jobs.subscriber = seen.append
    return seen


def names(seen: list[events.Event]) -> list[str]:
    """"Started:a", "Result:a"... with consecutive repeats (progress, states) collapsed."""
    out: list[str] = []
    for event in seen:
        name = f"{type(event).__name__}:{event.job.kind.name}"
        if not out or out[-1] != name:
            out.append(name)
    return out


@pytest.fixture
def jobs(engine) -> Jobs:
    jobs = Jobs(KINDS)
    jobs.adopt(engine)
    return jobs


def test_a_full_prune_reports_start_progress_states_then_one_result(jobs, engine):
    seen = recorder(jobs)
    plan = Plan(sparsity=0.5)
    job = jobs.submit("full_prune", spec=PruneJob(plan, plan))
    assert names(seen)[0] == "Started:full_prune" and names(seen)[-1] == "Result:full_prune"
    assert {type(e) for e in seen} >= {events.Progress, events.State}
    assert sum(isinstance(e, events.ENDINGS) for e in seen) == 1
    result = seen[-1].value
    assert isinstance(result, Pruned) and result.final and result.full and result.plan == plan
    assert result.state.achieved == pytest.approx(0.5, abs=0.02) and engine.plan == plan
    fractions = [e.fraction for e in seen if isinstance(e, events.Progress) and e.fraction is not None]
    assert fractions == sorted(fractions) or fractions  # reported, mostly rising
    assert all(e.job is job for e in seen) and not jobs.running()


def test_progress_line_says_what_runs_how_far_and_time_left(jobs):
    job = jobs.submit("hold")
    line = events.Progress(job, "variant owl (2/3)", 0.4, 80.0).line()
    assert line == "refreshing · variant owl (2/3) · 40% · 1m 20s left"
    assert events.Progress(job, "refreshing", None, None).line() == "refreshing"
    assert events.Progress(job, "refreshing block 2", 1.0, None).line() == "refreshing block 2 · 100%"
    assert events.Progress(job, "", None, None).line() == "refreshing"


def test_cancel_leaves_the_model_unpruned(jobs, engine):
    seen = recorder(jobs)
    dense = {name: p.detach().clone() for name, p in engine.loaded.model.named_parameters()}

    def cancel_on_progress(event):
        seen.append(event)
        if isinstance(event, events.Progress) and event.fraction:
            jobs.cancel("calibrate")

    jobs.subscriber = cancel_on_progress
    plan = Plan(sparsity=0.5)
    jobs.submit("full_prune", spec=PruneJob(plan, plan))
    assert isinstance(seen[-1], events.Cancelled) and sum(isinstance(e, events.ENDINGS) for e in seen) == 1
    assert not any(isinstance(e, events.Result) for e in seen)
    for name, p in engine.loaded.model.named_parameters():
        assert torch.equal(p, dense[name]), name
    assert engine.state().achieved == 0.0 and not jobs.running()


def test_an_error_is_one_event_and_nothing_keeps_running():
    def broken(job):
        job.progress("about to fail", 0.5)
        raise RuntimeError("disk on fire")

    jobs = Jobs({"broken": JobKind("broken", "x", "breaking", broken)})
    seen = recorder(jobs)
    assert jobs.submit("broken") is not None
    assert names(seen) == ["Started:broken", "Progress:broken", "Error:broken"]
    assert str(seen[-1].error) == "disk on fire" and not jobs.running()


def toy_jobs(inside) -> tuple[Jobs, list[events.Event]]:
    """Jobs with an exclusive kind whose body calls `inside(jobs)`, and plain ones."""
    kinds = {k.name: k for k in (
        JobKind("scan", "scan", "scanning", lambda job: inside(job.jobs), exclusive=True),
        JobKind("study", "study", "studying", lambda job: "studied", exclusive=True),
        JobKind("probe", "probe", "probing", lambda job: "probed"),
        JobKind("autosave", "autosave", "autosave", lambda job: "written", cancellable=False, engine=False),
    )}
    jobs = Jobs(kinds)
    return jobs, recorder(jobs)


def test_an_exclusive_job_refuses_another_and_queues_engine_jobs_until_it_ends():
    submitted = {}

    def inside(jobs):
        submitted["study"] = jobs.submit("study")
        submitted["probe"] = jobs.submit("probe")
        submitted["autosave"] = jobs.submit("autosave")
        assert jobs.holder is not None and jobs.holder.kind.name == "scan"
        return jobs.running_groups

    jobs, seen = toy_jobs(inside)
    jobs.submit("scan")
    assert submitted["study"] is None and submitted["probe"] is not None
    assert next(e.value for e in seen if isinstance(e, events.Result)) == "written"  # the autosave, at once
    assert [e.value for e in seen if isinstance(e, events.Result)][1] == {"scan", "probe"}
    assert names(seen) == ["Started:scan", "Started:autosave", "Result:autosave", "Result:scan",
                           "Started:probe", "Result:probe"]
    assert not jobs.running() and jobs.holder is None


def test_a_newer_job_replaces_the_queued_one_of_its_group_and_cancel_empties_the_queue():
    def inside(jobs):
        first = jobs.submit("probe")
        second = jobs.submit("probe")
        assert first.cancelled() and not second.cancelled()
        jobs.cancel("probe")
        assert second.cancelled() and jobs.running_groups == {"scan"}

    jobs, seen = toy_jobs(inside)
    jobs.submit("scan")
    assert names(seen) == ["Started:scan", "Cancelled:probe", "Result:scan"]  # both probes, never started
    assert sum(isinstance(e, events.Cancelled) for e in seen) == 2


def test_probes_report_their_results(jobs):
    seen = recorder(jobs)
    plan = Plan(sparsity=0.5)
    jobs.submit("full_prune", spec=PruneJob(plan, plan))
    jobs.submit("probe", names=("perplexity",))
    probed = seen[-1].value
    assert isinstance(probed, Probed) and probed.plan == plan and probed.results[0].name == "perplexity"
    assert "perplexity" in probed.dense


def test_cli_progress_goes_through_job_events_as_throttled_lines_and_auto_picks_by_stream(tmp_path):
    import io

    from workbench.cli.console import LINES_EVERY_S, ProgressPrinter, resolved_mode

    now = [0.0]
    out = io.StringIO()
    show = Jobs({}, subscriber=ProgressPrinter("lines", out, clock=lambda: now[0]), clock=lambda: now[0])
    report = show.reporter("prune").progress
    for step in range(101):
        now[0] = step * LINES_EVERY_S / 20  # 5 reports per throttle interval
        report("capturing", step / 100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1] == "workbench: prune · capturing · 100%"  # one per interval, the end
    assert lines[0] == "workbench: prune · capturing · 20% · 20s left"
    quick = io.StringIO()
    Jobs({}, subscriber=ProgressPrinter("lines", quick)).reporter("stats").progress("loading", 1.0)
    assert quick.getvalue() == ""  # a short run prints nothing
    assert resolved_mode("auto", io.StringIO()) == "none"  # in-process capture: results and errors only
    with open(tmp_path / "log", "w") as log:
        assert resolved_mode("auto", log) == "lines"  # nohup, a log file or a pipe
    assert resolved_mode("bar", io.StringIO()) == "bar"
