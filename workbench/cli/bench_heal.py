"""`workbench bench` stages for healing: 100 steps of 4 x 128 tokens with LoRA (rank 8, all seven linears,
the default masked form), the same with gradient checkpointing, and sparse fine-tuning of the kept
weights, each after a Wanda 50% prune, as ratios to the run's dense forward pass.

Memory budget (peak over the run's baseline): what is alive when the stage starts (the weights as the
engine holds them, the model plus the private copy of every linear, and its cached calibration
statistics) plus:

- a copy of what trains, to undo the run (the masked and sparse forms);
- every linear's keep mask, one byte per weight;
- float32 trained parameters with their gradient and two AdamW moments (4 x; for LoRA, small);
- the masked form's merged weight of every linear (W + the masked delta), which the backward pass keeps;
- one batch's activations, estimated for a Llama block as tokens x (12 x hidden + 5 x intermediate)
  float32 values per block (norm, attention and GLU inputs and outputs; with checkpointing one block's plus
  every block's input), plus three copies of the batch's logits (logits, their float copy, the softmax);
- the heap's free blocks: the steps reuse heap blocks (`workbench.infra.memory.heap_reuse`), and what a
  step frees and does not reuse stays resident until it is reused (or, with checkpointing, until the step
  ends); a fifth of the activations and formed weights (150 to 180 MiB was measured on the embedded model).
"""

from __future__ import annotations

from workbench.domain.plan import Plan
from workbench.recovery.spec import HealSpec

STAGES = ("heal-lora", "heal-lora-ckpt", "heal-sparse")
LIMITS = {"heal-lora": 20.0, "heal-lora-ckpt": 26.0, "heal-sparse": 30.0}
SPECS = {"heal-lora": dict(form="masked"), "heal-lora-ckpt": dict(form="masked", checkpointing="on"),
         "heal-sparse": dict(form="sparse")}
RUN = dict(steps=100, batch=4, seqlen=128, rank=8, heldout_every=100)
F32 = 4
HEAP_SLACK = 0.2  # the heap's free blocks within a step, as a share of its activations and formed weights


def heal_budget_mib(engine, stage: str, alive_mib: float) -> float:
    """The stage's memory budget over `alive_mib`, what is resident when it starts (see the module docstring)."""
    config = engine.loaded.model.config
    spec = HealSpec.of({**RUN, **SPECS[stage]})
    linears = [r for block in engine.linears for r in block]
    linear_values = sum(r.numel for r in linears)
    trained = linear_values if spec.form == "sparse" else sum(
        spec.rank * (r.module.in_features + r.module.out_features) for r in linears)
    tokens, layers = spec.batch * spec.seqlen, len(engine.linears)
    per_block = tokens * (12 * config.hidden_size + 5 * config.intermediate_size) * F32
    blocks = (per_block + layers * tokens * config.hidden_size * F32) if spec.checkpointing == "on" else layers * per_block
    logits = 3 * tokens * config.vocab_size * F32
    formed = linear_values * F32 if spec.form == "masked" else 0
    extra = 4 * trained * F32 + blocks + logits + linear_values + formed  # the keep masks: one byte per weight
    if spec.form != "adapter":
        extra += linear_values * engine.loaded.dtype.itemsize  # the copy to undo the run
    extra += HEAP_SLACK * (blocks + formed)
    return alive_mib + extra / 2**20


def run_heal_stages(engine, measure, wanted) -> None:
    """Measure each wanted healing stage (Wanda 50% first; the model is put back after each)."""
    half = Plan(method="wanda", sparsity=0.5)
    for stage in STAGES:
        if wanted(stage):
            engine.apply(half)
            spec = HealSpec.of({**RUN, **SPECS[stage]})
            measure(stage, lambda: engine.heal(spec), f"<= {LIMITS[stage]:g}x, {spec.steps} steps of {spec.batch} x {spec.seqlen}",
                    limit_ratio=LIMITS[stage],
                    memory_budget_mib=lambda alive, stage=stage: heal_budget_mib(engine, stage, alive))
            engine.apply(half)
