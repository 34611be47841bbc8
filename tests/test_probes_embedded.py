"""The quick probe suite on the dense embedded SmolLM2-135M-Instruct: every probe clearly above its
floor, so that damage from pruning shows (no network; about a minute on two CPU cores)."""

import pytest

from workbench.cli.probe import SUITE
from workbench.model.loader import load_model
from workbench.probes import ProbeContext, run_probes

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def results():
    loaded = load_model("embedded")
    ctx = ProbeContext(loaded.model, loaded.tokenizer, loaded.device)
    return {r.name: r for r in run_probes(ctx, SUITE)}


def test_perplexity_is_that_of_a_trained_model(results):
    assert 5 < results["perplexity"].score < 40


@pytest.mark.parametrize("name, margin", [("arithmetic", 0.25), ("brackets", 0.15), ("facts", 0.3), ("instructions", 0.2)])
def test_accuracy_clearly_above_floor(results, name, margin):
    result = results[name]
    assert result.score >= result.floor + margin, result.details


@pytest.mark.parametrize("name", ["brackets", "facts"])
def test_loglik_variant_clearly_above_chance(results, name):
    details = results[name].details
    assert details["loglik_accuracy"] >= details["loglik_floor"] + 0.3


def test_efficiency_counts_the_dense_model(results):
    result = results["efficiency"]
    assert 130 < result.score < 136  # about 134.5M parameters, a few quantization zeros
    assert result.details["block_linear_density"] > 0.99
    assert result.details["tokens_per_second"] > 0


def test_quick_suite_is_deterministic(results):
    loaded = load_model("embedded")
    ctx = ProbeContext(loaded.model, loaded.tokenizer, loaded.device)
    again = {r.name: r for r in run_probes(ctx, ("arithmetic", "brackets"))}
    for name, result in again.items():
        assert result.score == results[name].score
