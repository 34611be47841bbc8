"""Structured pruning's pure parts: neuron importance and kept counts (width), block scores and the
blocks to drop (depth)."""

import math

import pytest
import torch

from workbench.errors import WorkbenchError
from workbench.structured.depth import DepthStatistics, drop_by_angular, drop_by_influence, parse_drop
from workbench.structured.width import NEURON_SCORES, kept_count, kept_neurons, neuron_scores


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
    assert NEURON_SCORES.names() == ["data", "pon", "ppm", "vow"]


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
