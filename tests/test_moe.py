"""Mixture-of-experts models: the five fused layouts of transformers 5 as one module per expert, per-expert
calibration from the routed tokens only, unstructured pruning inside experts, and the refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tiny import MOE_FAMILIES, ByteTokenizer, tiny_moe
from workbench.domain.plan import ONE_PASS, CalibrationSpec, Plan, Structure
from workbench.engine.capture import block_statistics
from workbench.engine.facade import Engine
from workbench.infra.errors import WorkbenchError
from workbench.model.experts import RoutedExperts, check_fused, fused, moe_block, unfuse
from workbench.model.layout import find_linears

# The per-expert modules run gate and up as two products where the fused module runs one product of both:
# differently blocked float32 sums. Measured on these models: at most 2e-6 of the largest logit (3.3);
# 1e-5 leaves five times that.
REL = 1e-5
CALIBRATION = CalibrationSpec(samples=4, seqlen=32)


def engine_of(family: str, **calibration) -> Engine:
    model, tokenizer = tiny_moe(family)
    return Engine.from_model(model, tokenizer, CalibrationSpec(**{**vars(CALIBRATION), **calibration}), spec="tiny-moe")


def moe_of(model, block: int = 0) -> nn.Module:
    layer = model.model.layers[block]
    return layer.get_submodule(moe_block(layer).path)


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_per_expert_modules_compute_what_the_fused_experts_compute(family):
    model, _ = tiny_moe(family)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        assert unfuse(model) == len(model.model.layers)
        after = model(ids).logits
    assert isinstance(moe_of(model).experts, RoutedExperts)
    assert (after - before).abs().max() <= REL * before.abs().max()


@pytest.mark.parametrize("family", MOE_FAMILIES)
def test_gate_and_up_halves_land_on_their_experts(family):
    """Fails if gate and up (or two experts) were swapped: every row of the fused tensor is tagged."""
    model, _ = tiny_moe(family)
    experts = moe_of(model).experts
    E, rows, _ = experts.gate_up_proj.shape
    inter = rows // 2
    with torch.no_grad():
        for e in range(E):
            experts.gate_up_proj[e, :inter] = 1000 * e + 1  # gate rows first
            experts.gate_up_proj[e, inter:] = 1000 * e + 2  # then up
            experts.down_proj[e] = 1000 * e + 3
    unfuse(model)
    for e, expert in enumerate(moe_of(model).experts):
        assert torch.all(expert.gate_proj.weight == 1000 * e + 1)
        assert torch.all(expert.up_proj.weight == 1000 * e + 2)
        assert torch.all(expert.down_proj.weight == 1000 * e + 3)
    refs = find_linears(model)[0]
    gate3 = next(r for r in refs if r.expert == 3 and r.kind == "gate")
    assert gate3.name == f"layers.0.{moe_block(model.model.layers[0]).path}.experts.3.gate_proj"
    assert gate3.group == "experts.3.gate" and torch.all(gate3.module.weight == 3001)


def test_expert_statistics_come_from_the_tokens_routed_to_that_expert_only():
    engine = engine_of("qwen3_moe", mode=ONE_PASS)
    model = engine.loaded.model
    moe = moe_of(model)
    seen = {}
    hooks = [moe.register_forward_pre_hook(lambda m, args: seen.setdefault("x", []).append(args[0].detach())),
             moe.gate.register_forward_hook(lambda m, args, out: seen.setdefault("index", []).append(out[2]))]
    try:
        stats = engine.statistics.dense_statistics()[0]
    finally:
        for h in hooks:
            h.remove()
    x = torch.cat([h.reshape(-1, h.shape[-1]) for h in seen["x"]])
    index = torch.cat(seen["index"])
    assert sum(stats[f"experts.{e}.gate"].tokens for e in range(8)) == index.numel()
    for e in range(8):
        routed = x[(index == e).any(-1)]
        assert stats[f"experts.{e}.gate"].tokens == len(routed)
        torch.testing.assert_close(stats[f"experts.{e}.gate"].sq_norm, routed.pow(2).sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", MOE_FAMILIES)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_every_expert_is_pruned_and_routers_and_gates_are_not(family, method):
    engine = engine_of(family)
    model = engine.loaded.model
    moe = moe_of(model)
    router = moe.get_submodule(moe_block(model.model.layers[0]).router.split(".", 1)[1]).weight.clone()
    shared_gate = moe.shared_expert_gate.weight.clone() if family == "qwen2_moe" else None
    engine.prune(Plan(method=method, sparsity=0.5))
    for refs in engine.linears:
        for ref in refs:
            assert (ref.module.weight == 0).float().mean().item() == pytest.approx(0.5, abs=1 / ref.module.weight.shape[1])
    assert torch.equal(moe.get_submodule(moe_block(model.model.layers[0]).router.split(".", 1)[1]).weight, router)
    if shared_gate is not None:
        assert torch.equal(moe.shared_expert_gate.weight, shared_gate)
        assert any("shared_expert.down_proj" in r.name for r in engine.linears[0])
    state = engine.state()
    assert all(len(b.expert_tokens) == 8 for b in state.blocks)


def test_the_fused_form_holds_the_pruned_experts_and_runs_the_same():
    engine = engine_of("mixtral")
    model = engine.loaded.model
    engine.prune(Plan(method="wanda", sparsity=0.6))
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        per_expert = model(ids).logits
        with fused(model):
            experts = moe_of(model).experts
            assert not isinstance(experts, RoutedExperts) and experts.gate_up_proj.shape[0] == 8
            inter = experts.gate_up_proj.shape[1] // 2
            again = model(ids).logits
            masks = experts.gate_up_proj[2, :inter] == 0
    assert isinstance(moe_of(model).experts, RoutedExperts)
    assert torch.equal(masks, moe_of(model).experts[2].gate_proj.weight == 0)
    assert (again - per_expert).abs().max() <= REL * per_expert.abs().max()


def test_an_expert_with_too_few_tokens_takes_the_chosen_fallback():
    def slot(tokens, value, width=4):
        return {"sq_norm": torch.full((width,), value) if tokens else None, "hessian": None, "tokens": tokens, "width": width}

    acc = {"q": slot(10, 1.0), "experts.0.gate": slot(20, 2.0), "experts.1.gate": slot(12, 3.0), "experts.2.gate": slot(0, 0.0),
           "experts.3.gate": slot(3, 9.0)}
    pooled = block_statistics(acc, hessian=False, fallback="pooled", min_tokens=8)
    for e in (2, 3):
        assert torch.equal(pooled[f"experts.{e}.gate"].sq_norm, torch.full((4,), 5.0))  # experts 0 and 1 summed
    assert pooled["experts.3.gate"].tokens == 3 and pooled["experts.0.gate"].sq_norm[0] == 2.0
    magnitude = block_statistics(acc, hessian=False, fallback="magnitude", min_tokens=8)
    assert torch.equal(magnitude["experts.2.gate"].sq_norm, torch.ones(4))
    with pytest.raises(WorkbenchError, match="--expert-fallback"):
        block_statistics(acc, hessian=False, fallback="mean")


def test_magnitude_fallback_makes_wanda_rank_experts_by_weight_alone():
    wanda = engine_of("olmoe", expert_min_tokens=10**6, expert_fallback="magnitude")
    wanda.prune(Plan(method="wanda", sparsity=0.5))
    magnitude = engine_of("olmoe")
    magnitude.prune(Plan(method="magnitude", sparsity=0.5))
    for a, b in zip(wanda.linears[1], magnitude.linears[1]):
        if a.expert is not None:
            assert torch.equal(a.module.weight == 0, b.module.weight == 0), a.name


def test_unsupported_expert_layouts_are_refused_naming_the_class():
    model, _ = tiny_moe("qwen3_moe")
    experts = moe_of(model).experts
    experts.is_transposed = True
    with pytest.raises(WorkbenchError, match=r"Qwen3MoeExperts: is_transposed=True"):
        unfuse(model)
    experts.is_transposed = False
    experts.gate_up_proj = nn.Parameter(experts.gate_up_proj[:, :-1])
    with pytest.raises(WorkbenchError, match="not \\[E, 2I, H\\]"):
        check_fused(experts, "block 0")


def test_width_pruning_is_refused_on_expert_blocks_and_depth_pruning_works():
    engine = engine_of("granitemoe")
    with pytest.raises(WorkbenchError, match=r"structure.width_ratio: block 0 is a mixture-of-experts block"):
        engine.check_plan(Plan(sparsity=0.5, structure=Structure(width_ratio=1.0)))
    with pytest.raises(WorkbenchError, match=r"structure.width_overrides: block 2 is a mixture-of-experts block"):
        engine.check_plan(Plan(sparsity=0.5, structure=Structure(width_overrides={2: 1.0})))
    engine.prune(Plan(sparsity=0.5, structure=Structure(drop_blocks=[1])))
    assert len(engine.loaded.model.model.layers) == 2 and engine.state().blocks[1].dropped


@pytest.mark.parametrize("family", ["qwen2_moe", "granitemoe"])
def test_an_export_loads_with_fused_experts_and_generates_what_the_pruned_model_generates(family, tmp_path):
    from transformers import AutoModelForCausalLM

    engine = engine_of(family)
    engine.loaded.tokenizer = SavedTokenizer()
    engine.prune(Plan(method="sparsegpt", sparsity=0.5))
    engine.export(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    experts = moe_of(loaded).experts
    assert not isinstance(experts, RoutedExperts)
    assert (experts.gate_up_proj == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    prompt = torch.tensor([[5, 17, 99, 3, 250, 7]])
    with torch.no_grad():
        ours = engine.loaded.model.generate(prompt, max_new_tokens=8, do_sample=False)
        theirs = loaded.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours, theirs)


class SavedTokenizer(ByteTokenizer):
    """The tests' byte tokenizer, with the save_pretrained an export calls (it writes nothing)."""

    def save_pretrained(self, directory) -> None:
        pass


def test_a_session_of_an_expert_model_replays_to_the_same_weights(tmp_path):
    from workbench.cli.main import main

    model, _ = tiny_moe("olmoe", layers=2)
    model.config.to_json_file(tmp_path / "config.json")
    spec = f"random:{tmp_path / 'config.json'}"
    session = tmp_path / "s.toml"
    common = ["--samples", "4", "--seqlen", "32", "--progress", "none"]
    assert main(["prune", "--model", spec, "--method", "wanda", "--allocator", "owl", "--sparsity", "0.6", "--probes", "",
                 "--expert-fallback", "magnitude", "--expert-min-tokens", "40", "--experts-keep", "6", *common,
                 "--save-session", str(session)]) == 0
    text = session.read_text()
    assert 'expert_fallback = "magnitude"' in text and "expert_min_tokens = 40" in text and "[plan.structure.drop_experts]" in text
    assert main(["replay", str(session), "--check", "--progress", "none"]) == 0


def test_sparsity_per_expert_and_per_block_experts_by_module_name():
    engine = engine_of("qwen3_moe")
    plan = Plan(method="wanda", sparsity=0.5, linear_overrides={
        "layers.1.mlp.experts": 0.7, "layers.1.mlp.experts.5": 0.3, "layers.1.mlp.experts.5.down_proj": 0.9,
        "layers.2.self_attn": 0.2})
    engine.prune(plan)
    achieved = {ref.name: (ref.module.weight == 0).float().mean().item() for refs in engine.linears for ref in refs}
    assert achieved["layers.1.mlp.experts.0.gate_proj"] == pytest.approx(0.7, abs=0.02)
    assert achieved["layers.1.mlp.experts.5.up_proj"] == pytest.approx(0.3, abs=0.02)
    assert achieved["layers.1.mlp.experts.5.down_proj"] == pytest.approx(0.9, abs=0.02)
    assert achieved["layers.2.self_attn.k_proj"] == pytest.approx(0.2, abs=0.02)
    assert achieved["layers.0.mlp.experts.5.down_proj"] == pytest.approx(0.5, abs=0.02)
    with pytest.raises(WorkbenchError, match=r"overrides.linears.layers.1.mlp.experts.9: no such linear or module"):
        engine.check_plan(Plan(linear_overrides={"layers.1.mlp.experts.9": 0.5}))


def test_dropped_experts_leave_the_block_and_the_router_and_come_back_from_dense():
    engine = engine_of("qwen3_moe")
    model = engine.loaded.model
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dense = model(ids).logits
    drops = engine.choose_expert_drops("frequency", 6)
    assert all(len(d) == 2 for d in drops.values())
    frequency = engine.shaper.expert_scores["frequency"]
    for block, dropped in drops.items():  # the least used go
        kept = [f for e, f in enumerate(frequency[block]) if e not in dropped]
        assert max(frequency[block][e] for e in dropped) <= min(kept)
    engine.prune(Plan(method="wanda", sparsity=0.5, structure=Structure(drop_experts=drops)))
    moe = moe_of(model)
    assert len(moe.experts) == 6 and moe.experts.ids == [e for e in range(8) if e not in drops[0]]
    assert moe.gate.weight.shape[0] == 6
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    state = engine.state()
    assert state.blocks[0].dropped_experts == drops[0]
    assert state.blocks[0].achieved == pytest.approx(0.5, abs=0.01)  # of the experts that run
    assert 1 - state.params_nonzero / state.params_total > 0.55  # the dropped experts count as removed
    engine.prune(Plan(method="wanda", sparsity=0.0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, dense)


def test_reap_scores_weigh_each_routed_output_by_its_router_weight():
    from workbench.structured.experts import expert_scores

    model, _ = tiny_moe("mixtral", layers=1)
    unfuse(model)
    moe = moe_of(model)
    seen = []
    moe.experts.register_forward_pre_hook(lambda m, args: seen.append((args[0], args[1], args[2])))
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(3))
    scores = expert_scores(model, [ids], torch.device("cpu"))
    hidden, index, weights = seen[0]
    for e in range(8):
        token, slot = torch.where(index == e)
        expert = moe.experts[e]
        x = hidden[token]
        out = expert.down_proj(moe.experts.act_fn(expert.gate_proj(x)) * expert.up_proj(x))
        expected = (weights[token, slot] * out.norm(dim=-1)).mean().item() if len(token) else 0.0
        assert scores["frequency"][0][e] == len(token)
        assert scores["reap"][0][e] == pytest.approx(expected, rel=1e-5)


def test_expert_drops_keep_top_k_and_an_export_needs_equal_counts(tmp_path):
    engine = engine_of("olmoe")
    with pytest.raises(WorkbenchError, match=r"structure.drop_experts.1: dropping 7 of 8 experts leaves 1, fewer than the 2"):
        engine.check_plan(Plan(structure=Structure(drop_experts={1: [0, 1, 2, 3, 4, 5, 6]})))
    with pytest.raises(WorkbenchError, match=r"structure.drop_experts.0: no expert 8"):
        engine.check_plan(Plan(structure=Structure(drop_experts={0: [8]})))
    engine.loaded.tokenizer = SavedTokenizer()
    engine.prune(Plan(sparsity=0.3, structure=Structure(drop_experts={0: [1], 1: [2, 3]})))
    with pytest.raises(WorkbenchError, match="different numbers of experts"):
        engine.export(tmp_path / "uneven")
    assert not (tmp_path / "uneven").exists()
    engine.prune(Plan(sparsity=0.3, structure=Structure(drop_experts={0: [1, 4], 1: [2, 3], 2: [0, 7]})))
    engine.export(tmp_path / "even")
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "even").eval()
    assert loaded.config.num_experts == 6 and moe_of(loaded).experts.gate_up_proj.shape[0] == 6
    prompt = torch.tensor([[5, 17, 99, 3, 250, 7]])
    with torch.no_grad():
        assert torch.equal(engine.loaded.model.generate(prompt, max_new_tokens=8, do_sample=False),
                           loaded.generate(prompt, max_new_tokens=8, do_sample=False))


@pytest.mark.parametrize("flags, message", [
    (["--drop-experts", "0:x"], "--drop-experts: expected BLOCK:E,E such as 3:5,17, got '0:x'"),
    (["--drop-experts", "0:1", "--experts-keep", "4"], "--drop-experts: name experts or give --experts-keep, not both"),
    (["--drop-experts", "0:1,1"], "structure.drop_experts.0: an expert is named twice"),
    (["--experts-keep", "9"], "--experts-keep: keep 9 of 8 experts"),
    (["--drop-experts", "0:1", "--export", "OUT"], "--export: blocks keep different numbers of experts"),
])
def test_expert_drop_options_refuse_bad_input_in_one_line(flags, message, tmp_path, capsys):
    from workbench.cli.main import main

    model, _ = tiny_moe("olmoe", layers=2)
    model.config.to_json_file(tmp_path / "config.json")
    flags = [str(tmp_path / "out") if f == "OUT" else f for f in flags]
    code = main(["prune", "--model", f"random:{tmp_path / 'config.json'}", "--samples", "4", "--seqlen", "32",
                 "--probes", "", "--progress", "none", *flags])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # the random-weights notice aside
    assert len(errors) == 1 and errors[0].startswith("workbench: error: ") and message in errors[0]
    assert not (tmp_path / "out").exists()


def test_layerif_scores_attention_on_expert_models_and_refuses_scope_all():
    engine = engine_of("qwen3_moe")
    engine.prune(Plan(allocator="layerif", sparsity=0.5))
    assert all(b.influence is not None for b in engine.state().blocks)
    with pytest.raises(WorkbenchError, match="allocator_params.scope: scope all on a mixture of experts"):
        engine.prune(Plan(allocator="layerif", sparsity=0.5, allocator_params={"scope": "all"}))


def test_usage_rule_spreads_a_block_target_over_its_experts_and_keeps_the_mean():
    from workbench.allocators._usage import usage_targets

    targets = usage_targets(0.5, [10, 30, 20, 20], 0.1)
    assert targets == pytest.approx([0.6, 0.4, 0.5, 0.5])  # least used +span, most used -span
    assert sum(targets) / 4 == pytest.approx(0.5)
    clipped = usage_targets(0.95, [0, 100, 100, 100], 0.2)
    assert max(clipped) <= 0.99 and sum(clipped) / 4 == pytest.approx(0.95)
    assert usage_targets(0.5, [7, 7], 0.3) == [0.5, 0.5]


def test_expert_span_prunes_the_least_used_experts_more_with_the_block_target_kept():
    from workbench.allocators._usage import usage_targets

    engine = engine_of("qwen3_moe")
    engine.prune(Plan(method="wanda", sparsity=0.5, expert_span=0.2))
    usage = engine.signals.expert_usage()
    state = engine.state()
    for block in state.blocks:
        per_expert = {x.expert: x.achieved for x in block.linears if x.expert is not None and x.kind == "down"}
        experts = sorted(per_expert)
        expected = usage_targets(0.5, [usage[block.index][e] for e in experts], 0.2)
        assert [per_expert[e] for e in experts] == pytest.approx(expected, abs=1 / 32)  # down has 32 inputs per row
        least = min(experts, key=usage[block.index].get)
        assert per_expert[least] == max(per_expert.values()) and max(expected) - min(expected) > 0.2
        assert block.achieved == pytest.approx(0.5, abs=0.01)
    with pytest.raises(WorkbenchError, match="expert_span: the model has no routed experts"):
        from tests.conftest import make_engine

        make_engine().check_plan(Plan(expert_span=0.1))


def test_the_state_reports_every_expert_pooled_over_its_linears():
    engine = engine_of("mixtral")
    engine.prune(Plan(method="wanda", sparsity=0.5, linear_overrides={"layers.0.mlp.experts.3": 0.7},
                      structure=Structure(drop_experts={1: [2]})))
    block0, block1 = engine.state().blocks[:2]
    assert [x.expert for x in block0.experts] == list(range(8))
    three = block0.experts[3]
    linears = [x for x in block0.linears if x.expert == 3]
    assert three.numel == sum(x.numel for x in linears) and three.target == pytest.approx(0.7)
    assert three.achieved == pytest.approx(0.7, abs=0.02) and three.tokens == block0.expert_tokens[3]
    assert three.w_mean_abs == pytest.approx(sum(x.w_mean_abs * x.numel for x in linears) / three.numel)
    assert 0 <= three.outlier_ratio < 1
    assert block1.experts[2].dropped and not block1.experts[1].dropped


class ListedExperts(nn.ModuleList):
    """Experts as a checkpoint's own list of GLU MLPs (as older transformers and remote code keep them),
    called as transformers 5 calls its experts module."""

    def __init__(self, experts, act_fn):
        super().__init__(experts)
        object.__setattr__(self, "act_fn", act_fn)

    def forward(self, hidden, index, weights):
        out = torch.zeros_like(hidden)
        for e, expert in enumerate(self):
            token, slot = torch.where(index == e)
            if len(token):
                x = hidden[token]
                y = expert.down_proj(self.act_fn(expert.gate_proj(x)) * expert.up_proj(x)) * weights[token, slot, None]
                out.index_add_(0, token, y)
        return out


def test_fused_and_per_expert_layouts_give_the_same_masks_for_the_same_weights():
    import copy

    from workbench.model.experts import Expert

    fused_model, tokenizer = tiny_moe("olmoe")
    listed_model = copy.deepcopy(fused_model)
    for layer in listed_model.model.layers:
        fused_experts = layer.mlp.experts
        inter = fused_experts.gate_up_proj.shape[1] // 2

        def linear(weight):
            module = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            module.weight = nn.Parameter(weight.clone(), requires_grad=False)
            return module

        layer.mlp.experts = ListedExperts([Expert(linear(fused_experts.gate_up_proj[e, :inter]), linear(fused_experts.gate_up_proj[e, inter:]),
                                                  linear(fused_experts.down_proj[e])) for e in range(8)], fused_experts.act_fn)
    engines = [Engine.from_model(m, tokenizer, CALIBRATION, spec="tiny-moe") for m in (fused_model, listed_model)]
    assert not isinstance(listed_model.model.layers[0].mlp.experts, RoutedExperts)  # taken as it is, not unfused
    for engine in engines:
        engine.prune(Plan(method="sparsegpt", sparsity=0.5))
    fused, listed = ({r.name: r.module.weight == 0 for refs in e.linears for r in refs} for e in engines)
    assert fused.keys() == listed.keys() and len(fused) == 3 * (4 + 3 * 8)
    differing = [name for name in fused if not torch.equal(fused[name], listed[name])]
    assert differing == []
    with pytest.raises(WorkbenchError, match="keeps its experts as ListedExperts: dropping experts needs"):
        engines[1].check_plan(Plan(structure=Structure(drop_experts={0: [1]})))
