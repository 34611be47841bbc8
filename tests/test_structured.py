"""Structured pruning's pure parts: neuron importance and kept counts (width), block scores and the
blocks to drop (depth)."""

import math

import pytest
import torch

from workbench.infra.errors import WorkbenchError
from workbench.structured.depth import DepthStatistics, drop_by_angular, drop_by_influence, parse_drop
from workbench.structured.width import NEURON_SCORES, RANDOM_SEED, kept_count, kept_neurons, neuron_scores, random_scores


def _mlp(seed=0, hidden=8, intermediate=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(intermediate, hidden, generator=g), torch.randn(intermediate, hidden, generator=g),
            torch.randn(hidden, intermediate, generator=g))


def test_neuron_scores_follow_the_formulas():
    gate, up, down = _mlp()
    i = 5
    p2p = lambda w: w.max() + w.min().abs()  # noqa: E731
    assert neuron_scores("ppm", gate, up, down)[i] == pytest.approx(p2p(gate[i]) + p2p(up[i]))
    assert neuron_scores("vow", gate, up, down)[i] == pytest.approx(gate[i].var(unbiased=False) + up[i].var(unbiased=False))
    assert neuron_scores("pon", gate, up, down)[i] == pytest.approx(gate[i].abs().sum() * up[i].abs().sum())
    norms = torch.arange(1.0, 13.0) ** 2
    ppm_g = torch.stack([p2p(r) for r in gate])
    ppm_u = torch.stack([p2p(r) for r in up])
    ppm_d = torch.stack([p2p(c) for c in down.T])
    expected = (ppm_g[i] / ppm_g.max() + ppm_u[i] / ppm_u.max() + ppm_d[i] / ppm_d.max()) * math.sqrt(norms[i])
    assert neuron_scores("data", gate, up, down, norms)[i] == pytest.approx(expected.item())
    with pytest.raises(WorkbenchError, match="needs calibration statistics"):
        neuron_scores("data", gate, up, down)
    assert NEURON_SCORES.names() == ["data", "pon", "ppm", "random", "vow"]


def test_random_score_is_seeded_and_blind_to_the_weights():
    scores = neuron_scores("random", *_mlp(seed=0))
    assert torch.equal(scores, neuron_scores("random", *_mlp(seed=1)))  # the weights do not matter
    assert torch.equal(scores, random_scores(12, RANDOM_SEED)) and torch.equal(random_scores(12, 3), random_scores(12, 3))
    assert sorted(scores.tolist()) == list(range(12))  # a permutation: no ties
    assert len({tuple(kept_neurons(random_scores(1536, seed), 1331).tolist()) for seed in range(4)}) == 4
    assert kept_neurons(scores, 4).tolist() == [0, 3, 7, 10]  # recorded: a CPU generator gives these on any machine


@pytest.mark.parametrize("intermediate, hidden, ratio, divisor, kept", [
    (1536, 576, 2.4, None, 1383),   # (1 - 2.4*576/1536) = 10%: int(0.1 * 1536) = 153 pruned
    (1536, 576, 2.0, None, 1152),
    (1536, 576, 2.0, 128, 1152),
    (1536, 576, 1.9, 128, 1152),    # 1095 -> round(8.55) * 128
    (8192, 2048, 2.4, None, 4916),  # Llama-3.2-1B 4.0x -> 2.4x: int(0.4 * 8192) = 3276 pruned
    (8192, 2048, 2.4, 256, 4864),
    (1536, 576, 3.0, None, 1536),   # a ratio above the model's keeps everything
    (1536, 576, 0.001, None, 1),    # at most I - 1 pruned
])
def test_kept_count_as_optipfair(intermediate, hidden, ratio, divisor, kept):
    assert kept_count(intermediate, hidden, ratio, divisor) == kept


def test_kept_count_refuses_bad_ratio_and_divisor():
    with pytest.raises(WorkbenchError, match="width ratio"):
        kept_count(1536, 576, 0)
    with pytest.raises(WorkbenchError, match="width divisor"):
        kept_count(1536, 576, 2.0, 100)


def test_kept_neurons_are_the_top_k_in_index_order():
    scores = torch.tensor([0.5, 2.0, 1.0, 2.0, 0.1])
    assert kept_neurons(scores, 3).tolist() == [1, 2, 3]
    assert kept_neurons(scores, 1).tolist() == [1]  # ties go to the lower index


def _depth_stats():
    stats = DepthStatistics()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 4, generator=g)
    for block, scale in enumerate([1.0, 0.01, 0.02, 1.0]):  # blocks 1 and 2 barely change their input
        out = h + scale * torch.randn(2, 5, 4, generator=g)
        stats.add(block, h, out)
        h = out
    return stats


def test_block_influence_and_drop_lowest():
    stats = _depth_stats()
    bi = stats.block_influence()
    assert len(bi) == 4 and bi[1] < bi[0] and bi[2] < bi[3]
    assert drop_by_influence(bi, 2) == [1, 2]
    assert drop_by_influence(bi, 0) == []
    with pytest.raises(WorkbenchError):
        drop_by_influence(bi, 4)


def test_angular_distance_of_a_run():
    stats = _depth_stats()
    d = stats.angular_distance(2)
    assert len(d) == 3 and all(0 <= x <= 1 for x in d)
    assert drop_by_angular(stats, 2) == [1, 2]
    a, b = stats.last_tokens[0][0], stats.last_tokens[2][0]
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    assert d[0] == pytest.approx((torch.arccos(cos) / math.pi).mean().item(), abs=1e-6)


def test_zero_vectors_count_half():
    stats = DepthStatistics()
    stats.add(0, torch.zeros(1, 3, 2), torch.ones(1, 3, 2))
    assert stats.block_influence() == [0.5]


def test_parse_drop():
    assert parse_drop("23, 22", 30) == [22, 23]
    with pytest.raises(WorkbenchError, match="no block 30"):
        parse_drop("30", 30)
    with pytest.raises(WorkbenchError, match="expected bi, angular"):
        parse_drop("x", 30)


def test_dropping_blocks_is_real_undoable_and_generates_with_a_cache():
    from tests.tiny import tiny_llama
    from workbench.structured.shrink import Depth

    model, _ = tiny_llama(seed=0, layers=4)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    dense_logits = model(ids).logits
    total = sum(p.numel() for p in model.parameters())
    depth = Depth(model)
    depth.drop([1, 2])
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2 and depth.active == [0, 3]
    per_block = sum(p.numel() for p in depth.blocks[0].parameters())
    assert sum(p.numel() for p in model.parameters()) == total - 2 * per_block
    # the shrunk model is exactly the kept blocks one after another
    inner = model.model
    h = inner.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    mask = torch.full((12, 12), float("-inf")).triu(1)[None, None]
    rotary = inner.rotary_emb(h, positions)
    for i in (0, 3):
        h = depth.blocks[i](h, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
        h = h[0] if isinstance(h, tuple) else h
    torch.testing.assert_close(model(ids).logits, model.lm_head(inner.norm(h)))
    # generation with the key/value cache matches generation without it
    cached = model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(ids[:1], max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with depth.full():
        assert torch.equal(model(ids).logits, dense_logits)
    assert len(model.model.layers) == 2
    depth.drop([])
    assert torch.equal(model(ids).logits, dense_logits) and model.config.num_hidden_layers == 4
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2, 3]


def test_sessions_keep_the_structure_and_refuse_bad_values(tmp_path):
    from workbench.domain.plan import Plan, Structure
    from workbench.domain.session import Session, load_session, save_session

    structure = Structure(width_ratio=2.4, width_score="data", width_divisor=64, width_overrides={3: 2.0}, drop_blocks=[22, 23])
    save_session(Session(plan=Plan(structure=structure)), tmp_path / "s.toml")
    assert load_session(tmp_path / "s.toml").plan.structure == structure
    save_session(Session(plan=Plan()), tmp_path / "dense.toml")
    assert "structure" not in (tmp_path / "dense.toml").read_text()
    text = (tmp_path / "s.toml").read_text()
    for old, new, message in [("width_ratio = 2.4", "width_ratio = 0", "plan.structure.width_ratio: an expansion ratio"),
                              ("width_divisor = 64", "width_divisor = 100", "plan.structure.width_divisor: must be one of"),
                              ("drop_blocks = [\n    22,\n    23,\n]", "drop_blocks = [1, 1]", "plan.structure.drop_blocks: block 1 chosen twice"),
                              ("width_ratio = 2.4", 'width_ratio = "x"', "plan.structure.width_ratio: expected int/float")]:
        assert old in text, old
        (tmp_path / "bad.toml").write_text(text.replace(old, new))
        with pytest.raises(WorkbenchError, match=message):
            load_session(tmp_path / "bad.toml")


# ----- through the engine (tiny model: hidden 128, intermediate 320, 4 blocks) ---------------------------
def _engine():
    from tests.conftest import make_engine

    return make_engine()


def _ids():
    return torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(1))


def test_width_shrinks_for_real_and_equals_masking_the_same_neurons():
    from workbench.domain.plan import Plan, Structure

    engine = _engine()
    ids = _ids()
    engine.prune(Plan(sparsity=0.0, structure=Structure(width_ratio=2.0)))
    state = engine.state()
    assert [b.width for b in state.blocks] == [256] * 4 and state.blocks[0].intermediate == 320
    mlp = engine.loaded.model.model.layers[0].mlp
    assert mlp.gate_proj.weight.shape == (256, 128) and mlp.down_proj.weight.shape == (128, 256)
    assert state.params_total - state.params_nonzero == 4 * 3 * 128 * 64
    shrunk = engine.loaded.model(ids).logits
    masked = _engine()  # the dense model with the same neurons zeroed instead of removed
    for block in range(4):
        glu = {r.kind: r for r in masked.linears[block]}
        kept = kept_neurons(neuron_scores("ppm", *(glu[k].module.weight for k in ("gate", "up", "down"))), 256)
        drop = torch.ones(320, dtype=torch.bool)
        drop[kept] = False
        glu["gate"].module.weight.data[drop] = 0
        glu["up"].module.weight.data[drop] = 0
        glu["down"].module.weight.data[:, drop] = 0
    torch.testing.assert_close(shrunk, masked.loaded.model(ids).logits, rtol=1e-4, atol=1e-5)


def test_unstructured_pruning_composes_with_width_and_depth():
    from workbench.domain.plan import Plan, Structure

    engine = _engine()
    engine.prune(Plan(sparsity=0.5, structure=Structure(width_ratio=2.0, width_divisor=32, drop_blocks=[2])))
    state = engine.state()
    assert [b.dropped for b in state.blocks] == [False, False, True, False]
    assert len(engine.loaded.model.model.layers) == 3
    for b in state.blocks:
        if not b.dropped:
            assert b.achieved == pytest.approx(0.5, abs=0.01) and b.width == 256
    assert state.blocks[2].achieved == 0 and state.blocks[2].act_norm is None
    assert engine.needs_full_prune(Plan(sparsity=0.6, structure=Structure(width_ratio=2.0, width_divisor=32, drop_blocks=[2]))) is False
    assert engine.needs_full_prune(Plan(sparsity=0.5))
    engine.apply(Plan(sparsity=0.6, structure=Structure(width_ratio=2.0, width_divisor=32, drop_blocks=[2])))
    assert engine.state().blocks[0].achieved == pytest.approx(0.6, abs=0.01)


def test_structural_edits_undo_from_dense_bit_for_bit():
    from workbench.domain.plan import Plan, Structure

    engine, reference = _engine(), _engine()
    dense = {n: r.module.weight.detach().clone() for n, r in engine.refs.items()}
    dense_logits = engine.loaded.model(_ids()).logits
    for structure in (Structure(width_ratio=1.5, width_score="data"), Structure(drop_blocks=[0, 3]),
                      Structure(width_overrides={1: 1.0}, drop_blocks=[2])):
        engine.prune(Plan(method="sparsegpt", sparsity=0.5, structure=structure))
    engine.prune(Plan(sparsity=0.5))
    reference.prune(Plan(sparsity=0.5))
    assert engine.weights_digest() == reference.weights_digest()
    engine.restore_dense()
    assert all(torch.equal(r.module.weight, dense[n]) for n, r in engine.refs.items())
    assert torch.equal(engine.loaded.model(_ids()).logits, dense_logits)


def test_dense_reference_runs_the_full_model():
    from workbench.domain.plan import Plan, Structure

    engine, reference = _engine(), _engine()
    engine.prune(Plan(sparsity=0.3, structure=Structure(width_ratio=2.0, drop_blocks=[1])))
    shrunk = engine.probe(["perplexity"])[0]
    dense = engine.dense_probes["perplexity"]
    assert dense.score == reference.probe(["perplexity"])[0].score and shrunk.score != dense.score


def test_a_cancelled_structured_prune_puts_everything_back():
    from workbench.infra.errors import Cancelled
    from workbench.domain.plan import Plan, Structure

    engine = _engine()
    engine.prune(Plan(sparsity=0.5, structure=Structure(width_ratio=2.0)))
    before, layers = engine.weights_digest(), len(engine.loaded.model.model.layers)
    calls = []
    with pytest.raises(Cancelled):
        engine.prune(Plan(sparsity=0.6, structure=Structure(drop_blocks=[1])), cancel=lambda: calls.append(1) or len(calls) > 3)
    assert engine.weights_digest() == before and len(engine.loaded.model.model.layers) == layers
    assert engine.state().blocks[0].width == 256


def test_blocks_to_drop_from_depth_scores():
    engine = _engine()
    bi = engine.depth_scores().block_influence()
    assert len(bi) == 4 and all(0 <= x <= 2 for x in bi)
    assert engine.choose_drops(2, "bi") == drop_by_influence(bi, 2)
    run = engine.choose_drops(2, "angular")
    assert run[1] == run[0] + 1
    assert engine.choose_drops(0, "1,3") == [1, 3]
    engine.prune(__import__("workbench.domain.plan", fromlist=["Plan"]).Plan(sparsity=0.5))
    assert engine.state().blocks[0].block_influence == pytest.approx(bi[0])


def test_bad_structures_are_refused_before_any_change():
    from workbench.domain.plan import Plan, Structure

    engine = _engine()
    for structure, where in [(Structure(drop_blocks=[0, 1, 2, 3]), "structure.drop_blocks"),
                             (Structure(drop_blocks=[7]), "structure.drop_blocks"),
                             (Structure(width_overrides={9: 2.0}), "structure.width_overrides"),
                             (Structure(width_ratio=2.0, width_score="nope"), "structure.width_score"),
                             (Structure(width_ratio=-1.0), "structure.width_ratio")]:
        with pytest.raises(WorkbenchError) as err:
            engine.prune(Plan(structure=structure))
        assert err.value.where == where
    assert engine.plan is None and len(engine.loaded.model.model.layers) == 4


@pytest.mark.parametrize("structure, intermediate, layers, padded", [
    (dict(width_ratio=2.0, drop_blocks=[1]), 256, 3, False),
    (dict(width_ratio=2.0, width_overrides={0: 1.5}), 256, 4, True),
])
def test_export_loads_as_the_smaller_architecture_with_the_same_logits(tmp_path, structure, intermediate, layers, padded):
    from transformers import AutoModelForCausalLM

    from workbench.domain.plan import Plan, Structure

    engine = _engine()
    engine.prune(Plan(sparsity=0.5, structure=Structure(**structure)))
    notes = []
    engine.loaded.tokenizer.save_pretrained = lambda directory: None  # the byte tokenizer has no files
    engine.export(tmp_path / "out", notice=notes.append)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.config.intermediate_size == intermediate and loaded.config.num_hidden_layers == layers
    assert bool(notes) == padded and (not padded or "padded with zero neurons to 256" in notes[0])
    torch.testing.assert_close(loaded(_ids()).logits, engine.loaded.model(_ids()).logits, rtol=1e-4, atol=1e-5)
    assert engine.loaded.model.config.intermediate_size == 320  # the engine's own config is untouched


def test_cli_prune_with_width_and_depth_exports_and_replays(tiny_model_dir, tmp_path, capsys):
    import json

    from transformers import AutoModelForCausalLM

    from workbench.cli.main import main

    tiny = ["--samples", "4", "--seqlen", "32"]
    session, out = tmp_path / "s.toml", tmp_path / "out"
    assert main(["prune", "--model", str(tiny_model_dir), *tiny, "--sparsity", "0.3", "--width-ratio", "2.0",
                 "--drop-blocks", "1", "--drop-by", "angular", "--probes", "perplexity,efficiency",
                 "--save-session", str(session), "--export", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    efficiency = next(p for p in summary["probes"] if p["name"] == "efficiency")
    assert efficiency["pruned"] < efficiency["dense"]
    assert summary["plan"]["structure"]["drop_blocks"] and summary["plan"]["structure"]["width_ratio"] == 2.0
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.num_hidden_layers == 3 and loaded.config.intermediate_size == 256
    assert main(["replay", str(session), "--check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    assert main(["prune", "--model", str(tiny_model_dir), *tiny, "--drop-by", "9"]) == 2
    assert "--drop-by: no block 9" in capsys.readouterr().err


def test_cli_compare_structured_variants(tiny_model_dir, capsys):
    import json

    from workbench.cli.main import main

    assert main(["compare", "--model", str(tiny_model_dir), "--samples", "4", "--seqlen", "32", "--allocators", "uniform",
                 "--sparsity", "0.25", "--width-ratios", "2.0", "--drops", "1", "--probes", "perplexity,efficiency",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["uniform", "width 2", "drop 1"]
    nonzero = {v["name"]: v["params_nonzero"] for v in data["variants"]}
    per_block = 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 320  # q, o; k, v (2 of 4 heads); gate, up, down
    assert nonzero["width 2"] == 4 * per_block - 4 * 3 * 128 * 64  # 64 of 320 neurons gone in every block
    assert nonzero["drop 1"] == 3 * per_block


def test_cli_compare_one_width_variant_per_score(tiny_model_dir, capsys):
    import json

    from workbench.cli.main import main

    assert main(["compare", "--model", str(tiny_model_dir), "--samples", "4", "--seqlen", "32", "--allocators", "",
                 "--width-ratios", "2.0", "--width-score", "ppm,data", "--probes", "perplexity", "--json"]) == 0
    variants = json.loads(capsys.readouterr().out)["variants"]
    assert [v["name"] for v in variants] == ["width 2 ppm", "width 2 data"]
    assert [v["plan"]["structure"]["width_score"] for v in variants] == ["ppm", "data"]
    assert variants[0]["params_nonzero"] == variants[1]["params_nonzero"]
