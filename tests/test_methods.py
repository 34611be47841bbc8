"""Pure method functions: exact counts per row and per N:M group, SparseGPT beats magnitude."""

import pytest
import torch

from workbench.engine.stats import reconstruction_terms, relative_error
from workbench.infra.errors import WorkbenchError
from workbench.methods import METHODS, LinearStats, Pattern, lowest_k, parse_pattern


def _layer(out=48, cols=128, tokens=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(out, cols, generator=g)
    # correlated inputs with a few outlier channels, as in LLM activations
    X = torch.randn(tokens, cols, generator=g) @ (torch.eye(cols) + 0.3 * torch.randn(cols, cols, generator=g))
    X[:, :4] *= 20
    stats = LinearStats(sq_norm=X.pow(2).sum(0), tokens=tokens, hessian=X.T @ X)
    return W, X, stats


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
def test_unstructured_counts_are_exact(name, sparsity):
    W, _, stats = _layer()
    pruned = METHODS.get(name).prune(W, stats, sparsity, None)
    zeros_per_row = (pruned == 0).sum(1)
    if name == "sparsegpt":  # joint mask over rows per column block: the matrix total is exact
        assert int(zeros_per_row.sum()) == round(W.numel() * sparsity)
    else:
        assert torch.all(zeros_per_row == round(W.shape[1] * sparsity))


@pytest.mark.parametrize("name", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_nm_every_group_keeps_exactly_m_minus_n(name, pattern):
    W, _, stats = _layer()
    p = parse_pattern(pattern)
    pruned = METHODS.get(name).prune(W, stats, p.sparsity, p)
    groups = (pruned != 0).reshape(W.shape[0], -1, p.m).sum(2)
    assert torch.all(groups == p.m - p.n)


def test_magnitude_matrix_scope_uses_one_threshold():
    W, _, stats = _layer()
    pruned = METHODS.get("magnitude").prune(W, stats, 0.5, None, scope="matrix")
    kept, dropped = W[pruned != 0].abs(), W[pruned == 0].abs()
    assert int((pruned == 0).sum()) == W.numel() // 2
    assert dropped.max() <= kept.min()


def test_wanda_drops_lowest_scores_per_row():
    W, _, stats = _layer()
    pruned = METHODS.get("wanda").prune(W, stats, 0.5, None)
    scores = W.abs() * stats.sq_norm.sqrt()
    for row in range(W.shape[0]):
        assert scores[row][pruned[row] == 0].max() <= scores[row][pruned[row] != 0].min()


def test_wanda_differs_from_magnitude_with_outlier_channels():
    W, _, stats = _layer()
    wanda = METHODS.get("wanda").prune(W, stats, 0.5, None)
    magnitude = METHODS.get("magnitude").prune(W, stats, 0.5, None)
    assert not torch.equal(wanda == 0, magnitude == 0)
    assert torch.all(wanda[:, :4] != 0) or (wanda[:, :4] != 0).float().mean() > (magnitude[:, :4] != 0).float().mean()


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(pattern):
    W, X, stats = _layer()
    p = parse_pattern(pattern)
    errors = {}
    for name in ("magnitude", "wanda", "sparsegpt"):
        pruned = METHODS.get(name).prune(W, stats, 0.5, p)
        errors[name] = relative_error(*reconstruction_terms(W, pruned, stats.hessian))
        direct = ((W - pruned) @ X.T).norm() / (W @ X.T).norm()
        assert errors[name] == pytest.approx(direct.item(), rel=1e-3)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]


def test_sparsegpt_handles_dead_inputs():
    W, X, _ = _layer()
    X[:, 7] = 0
    stats = LinearStats(sq_norm=X.pow(2).sum(0), tokens=len(X), hessian=X.T @ X)
    pruned = METHODS.get("sparsegpt").prune(W, stats, 0.5, None)
    assert torch.all(pruned[:, 7] == 0) and torch.isfinite(pruned).all()


def test_methods_are_pure():
    W, _, stats = _layer()
    before = W.clone()
    for name in METHODS.names():
        a = METHODS.get(name).prune(W, stats, 0.5, None)
        b = METHODS.get(name).prune(W, stats, 0.5, None)
        assert torch.equal(a, b)
    assert torch.equal(W, before)


@pytest.mark.parametrize("text", ["2-4", "4:2", "0:4", "a:b", "2:2"])
def test_bad_patterns_are_refused(text):
    with pytest.raises(WorkbenchError):
        parse_pattern(text)


def test_pattern_needs_divisible_inputs():
    W, _, stats = _layer(cols=126)
    with pytest.raises(WorkbenchError, match="multiple of 4"):
        METHODS.get("wanda").prune(W, LinearStats(stats.sq_norm[:126], 1), 0.5, Pattern(2, 4))


def test_inverse_hessian_factor_is_the_upper_cholesky_factor_of_the_damped_inverse():
    from workbench.methods.sparsegpt import inverse_hessian_factor

    torch.manual_seed(0)
    x = torch.randn(400, 48, dtype=torch.float64) * torch.rand(48, dtype=torch.float64)
    hessian = (x.T @ x).float()
    hessian[:, 7] = hessian[7, :] = 0  # a dead input channel
    factor, dead, damp = inverse_hessian_factor(hessian, torch.device("cpu"), 0.01)
    damped = hessian.double().clone()
    damped[7, 7] = 1
    assert damp == pytest.approx(0.01 * damped.diagonal().mean().item(), rel=1e-6)
    damped.diagonal().add_(0.01 * damped.diagonal().mean())
    assert dead.nonzero().flatten().tolist() == [7]
    assert torch.equal(factor, factor.triu())
    assert torch.allclose(factor.double().T @ factor.double(), torch.linalg.inv(damped), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_group_gives_each_linear_what_pruning_it_alone_gives(pattern):
    from workbench.methods import LinearStats, parse_pattern
    from workbench.methods.sparsegpt import prune_sparsegpt, prune_sparsegpt_group

    torch.manual_seed(1)
    x = torch.randn(512, 160) * torch.rand(160)
    stats = LinearStats(sq_norm=x.pow(2).sum(0), tokens=512, hessian=x.T @ x)
    weights = [torch.randn(48, 160), torch.randn(16, 160), torch.randn(16, 160)]
    sparsities = [0.5, 0.3, 0.7]
    nm = parse_pattern(pattern) if pattern else None
    together = [r.weight for r in prune_sparsegpt_group(weights, stats, sparsities, nm, blocksize=64)]
    for w, s, got in zip(weights, sparsities, together):
        alone = prune_sparsegpt(w, stats, s, nm, blocksize=64)
        assert torch.equal(got == 0, alone == 0)
        assert torch.allclose(got, alone, atol=1e-5)
        if nm is None:
            assert int((got == 0).sum()) == round(w.numel() * s)


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_tracks_the_output_error_it_causes(pattern):
    from workbench.methods.sparsegpt import prune_sparsegpt_group

    W, X, _ = _layer(cols=200)
    X[:, 9] = 0  # a dead input: its weights are dropped and must not count
    stats = LinearStats(sq_norm=X.pow(2).sum(0), tokens=len(X), hessian=X.T @ X)
    weights = [W, W[:20] * 3]
    for w, (pruned, tracked) in zip(weights, prune_sparsegpt_group(weights, stats, [0.6, 0.4], parse_pattern(pattern))):
        direct, _ = reconstruction_terms(w, pruned, stats.hessian)
        assert tracked == pytest.approx(direct, rel=1e-3)


@pytest.mark.parametrize("n", [7, 128, 300])
def test_upper_triangular_inverse(n):
    from workbench.methods.sparsegpt import upper_triangular_inverse

    torch.manual_seed(n)
    R = torch.randn(n, n, dtype=torch.float64).triu() + n * torch.eye(n, dtype=torch.float64)
    inverse = upper_triangular_inverse(R, leaf=32)
    assert torch.equal(inverse, inverse.triu())
    assert torch.allclose(inverse @ R, torch.eye(n, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize("n,k", [(10, 0), (10, 10), (1000, 1), (200_000, 100_000), (200_000, 3)])
def test_lowest_k_selects_the_k_lowest(n, k):
    torch.manual_seed(n + k)
    values = torch.randn(n)
    mask = lowest_k(values, k)
    assert mask.sum().item() == k
    if 0 < k < n:
        assert values[mask].max() < values[~mask].min()


def test_lowest_k_breaks_ties_at_the_kth_value_by_index():
    values = torch.tensor([3.0, 1.0, 2.0, 1.0, 2.0, 2.0, 0.0])
    assert lowest_k(values, 4).tolist() == [False, True, True, True, False, False, True]
