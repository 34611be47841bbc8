"""The core job kinds and their bodies: loading, pruning, probing, saving, block scores. A body gets the
`Job` (engine, progress, state, cancel check) and its arguments; its return value is the job's result.
Each UI feature adds its own kinds (see `workbench.tui.feature.Feature.jobs`)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from workbench.domain.plan import CalibrationSpec
from workbench.jobs.core import Job, JobKind
from workbench.jobs.results import AutosaveFailed, DropsChosen, Loaded, NeedsFullPrune, Probed, Pruned, Saved

if TYPE_CHECKING:
    from workbench.app.controller import PruneJob
    from workbench.engine.facade import Engine

REFRESH_S = 0.25  # how often a running prune reports the state so far


def held(engine: Engine) -> Pruned:
    """What the engine holds now, as the landing of a prune (after a cancel, or with new block scores)."""
    plan = engine.plan
    return Pruned(engine.state(), plan, engine.allocate(plan) if plan is not None else {}, final=True, full=False)


def load(job: Job, factory: Callable[..., Engine], model: str, path, device: str, dtype: str,
         calibration: CalibrationSpec | None) -> Loaded:
    """Load a model (or reuse the loaded one) and, for a session, read and check the file."""
    from workbench.domain.session import check_against_model, load_session

    session = load_session(path) if path is not None else None
    if session is not None:
        model, device, dtype, calibration = session.model, session.device, session.dtype, session.calibration
    else:
        calibration = calibration or CalibrationSpec()
    engine = job.engine
    if engine is None or engine.loaded.spec != model or engine.calibration != calibration:
        job.progress(f"loading {model}")
        engine = factory(model=model, device=device, dtype=dtype, calibration=calibration, progress=job.progress)
    if session is not None:
        check_against_model(session, engine, path)
    return Loaded(engine, len(engine.linears), session, path)


def prune(job: Job, spec: PruneJob) -> Pruned | NeedsFullPrune | None:
    """Prune `spec.plan` (after a full prune of `spec.calibrate`, when set), reporting the state so far every
    `REFRESH_S`. An incremental prune that finds no usable statistics asks for a full one instead."""
    engine, plan = job.engine, spec.plan
    if job.cancelled():
        return None
    checked = engine.check_plan(plan)  # once: the calls below take it checked
    if not spec.full and engine.needs_full_prune(checked):
        return NeedsFullPrune(plan)
    checked = engine.prepare(checked, progress=job.progress, cancel=job.cancelled)
    targets = engine.allocate(checked)
    job.state(Pruned(engine.state(), plan, targets, final=False, full=False))
    last = time.monotonic()

    def progress(message: str, fraction: float) -> None:
        nonlocal last
        job.progress(message, fraction)
        if not job.cancelled() and time.monotonic() - last >= REFRESH_S:
            last = time.monotonic()
            job.state(Pruned(engine.state(), plan, targets, final=False, full=False))

    if spec.full:
        engine.prune(spec.calibrate, progress, job.cancelled)
    engine.apply(checked, progress, job.cancelled)
    return Pruned(engine.state(), plan, targets, final=True, full=spec.full)


def probe(job: Job, names: tuple[str, ...]) -> Probed | None:
    """The quick probes on the plan the engine holds (the dense reference first, for those not measured)."""
    engine = job.engine
    if job.cancelled():
        return None
    plan = engine.plan
    missing = [n for n in names if n not in engine.dense_probes]
    if missing:
        job.progress(f"measuring the dense model ({len(missing)} probes)")
    results = engine.probe(names, "quick", progress=lambda name, f: job.progress(f"probe {name}", f),
                           cancel=job.cancelled)
    return Probed(results, dict(engine.dense_probes), plan)


def save(job: Job, path, history: list[dict], probes: list, theme: str, device: str, dtype: str,
         sections: dict) -> Saved:
    """Write the session of the engine's state with the app's history, probes and features' tables."""
    from workbench.domain.session import save_session, session_from_engine

    session = session_from_engine(job.engine, history=history, probes=probes, theme=theme, device=device, dtype=dtype)
    session.sections = {**sections, "heal": None}
    healing = job.engine.healing
    if sections.get("heal") is not None and healing is not None:  # still on the model: its tensors go beside
        from workbench.recovery.record import attach_heal_file

        attach_heal_file(session, healing.healed, sections["heal"].before, path)
    save_session(session, path)
    return Saved(path)


def autosave(job: Job, autosave, session, ticket: int) -> AutosaveFailed | None:
    """Write the recovery file; why it failed (disk full...), or None."""
    error = autosave.write(session, ticket)
    return None if error is None else AutosaveFailed(str(error))


def hold(job: Job) -> Pruned:
    """What the engine holds, once a cancelled job has let go of it."""
    return held(job.engine)


def block_scores(job: Job) -> Pruned:
    """Run the dense model once for the depth scores, then the state with them."""
    job.engine.depth_scores(job.progress, job.cancelled)
    return held(job.engine)


def drops(job: Job, count: int, rule: str) -> DropsChosen:
    """The blocks `rule` drops (the dense model runs once for the depth scores, if not yet)."""
    return DropsChosen(count, rule, job.engine.choose_drops(count, rule, job.progress, job.cancelled))


KINDS = {kind.name: kind for kind in (
    JobKind("load", "engine", "loading", load, cancellable=False),
    JobKind("prune", "prune", "pruning", prune),
    JobKind("full_prune", "calibrate", "pruning", prune),
    JobKind("probe", "probe", "probes", probe),
    JobKind("save", "save", "saving", save, cancellable=False),
    JobKind("autosave", "autosave", "autosave", autosave, cancellable=False, engine=False),
    JobKind("hold", "refresh", "refreshing", hold, cancellable=False),
    JobKind("block_scores", "scores", "block scores", block_scores),
    JobKind("drops", "scores", "block scores", drops),
)}
