"""`workbench bench` stages of the reasoning question: the quick reasoning probe (16 problems at thinking
budgets 64 and 128, one shared generation) on a Wanda 50% model, its dense reference measured before,
within 0.7x of the run's dense forward pass; and self-generated calibration of the run's samples x seqlen
tokens (greedy chat replies in batches with the key/value cache, the disk cache bypassed) within 4x."""

from __future__ import annotations

from workbench.domain.plan import Plan

STAGES = ("reasoning", "self-calibration")


def run_reasoning_stages(engine, measure, wanted, probe_budget) -> None:
    """Measure each wanted stage."""
    if wanted("reasoning"):
        engine.apply(Plan(method="wanda", sparsity=0.5))
        engine.dense_reference(["reasoning"])
        measure("reasoning", lambda: engine.probe(["reasoning"]), "<= 0.7x, quick, Wanda 50%", limit_ratio=0.7,
                memory_budget_mib=probe_budget)
    if wanted("self-calibration"):
        import torch

        from workbench.engine.selfgen import generate

        c, loaded = engine.calibration, engine.loaded

        def run():
            with torch.no_grad(), engine.dense_weights():
                return generate(loaded.model, loaded.tokenizer, loaded.device, c.samples, c.seqlen, c.seed, reasoning=True)

        measure("self-calibration", run, f"<= 4x, {c.samples} x {c.seqlen} tokens", limit_ratio=4.0,
                memory_budget_mib=probe_budget)
