"""Paired bootstrap intervals, best/tied and flips: hand-made results, a saved and reloaded comparison, and
the tiny model's probes."""

import time

import numpy as np
import pytest

from tests.conftest import make_engine
from workbench.domain.plan import CalibrationSpec, Plan
from workbench.domain.replaycheck import check_probes
from workbench.domain.session import ComparisonFile, load_replayable, save_comparison
from workbench.infra.errors import WorkbenchError
from workbench.probes import ProbeResult, Units, flips
from workbench.studies import intervals
from workbench.studies.compare import Comparison, Variant, VariantResult, run_comparison
from workbench.studies.intervals import Interval, paired_interval, probe_row, resample_indices


def exact(right: list[int], name: str = "arithmetic") -> ProbeResult:
    """An exact-match result with one unit per item (1 right, 0 wrong)."""
    values = [float(x) for x in right]
    return ProbeResult(name, sum(values) / len(values), "exact match", True, len(values), 0.1, "quick", 3 / len(values),
                       0.0, units={"score": Units(values)})


def perplexity(nll: list[float], tokens: float = 32.0) -> ProbeResult:
    """A perplexity result with one unit per chunk: summed NLL of `tokens` tokens, link exp."""
    units = Units([x * tokens for x in nll], [tokens] * len(nll), "exp")
    return ProbeResult("perplexity", units.score(), "ppl", False, 2, 0.1, "quick", 0.01, 0.0, relative=True,
                       units={"score": units})


def comparison(results: dict[str, list[ProbeResult]], dense: list[ProbeResult]) -> Comparison:
    return Comparison(probes=[p.name for p in dense], dense=dense,
                      results=[VariantResult(n, Plan(), probes, [0.5], 0.5, 10, 1.0) for n, probes in results.items()])


def test_identical_results_give_a_zero_width_interval_at_zero():
    nll = [3.1, 2.7, 4.0, 3.3, 2.9, 3.8]
    for a in (exact([1, 0, 1, 1, 0, 0, 1, 0]), perplexity(nll)):
        b = ProbeResult.from_dict(a.to_dict())
        assert paired_interval(a, b) == Interval(0.0, 0.0, 0.0)


def test_each_resample_scores_both_sides_as_units_score_does_on_the_same_indices():
    a, b = exact([1, 0, 1, 1, 0, 0, 1, 0, 1, 1]), exact([0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
    index = resample_indices(10, intervals.probe_seed("arithmetic", 10))
    scores = intervals.bootstrap([a, b])
    for r in range(0, intervals.RESAMPLES, 97):
        # exact: sums of 0/1 over 10 draws and the division by 10 are exact in float64
        assert scores[r, 0] == a.units["score"].score(index[r]) and scores[r, 1] == b.units["score"].score(index[r])
    low, high = np.quantile(scores[:, 1] - scores[:, 0], [0.025, 0.975])
    assert paired_interval(a, b) == Interval(b.score - a.score, low, high)


def test_the_resamples_are_fixed_by_seed_probe_and_unit_count():
    # PCG64's raw stream is fixed across NumPy versions and machines; these are its draws, scaled to 0..9
    assert resample_indices(10, 18, resamples=2)[0].tolist() == resample_indices(10, 18, resamples=5)[0].tolist()
    assert intervals.probe_seed("facts", 26) == intervals.probe_seed("facts", 26) != intervals.probe_seed("facts", 27)
    first = resample_indices(10, intervals.probe_seed("arithmetic", 10), resamples=1)[0].tolist()
    assert first == FIRST_RESAMPLE


FIRST_RESAMPLE = [9, 6, 8, 2, 8, 1, 5, 8, 6, 5]  # recorded once: a change of seed derivation or draw shows here


def test_mismatched_units_are_refused_in_one_line():
    with pytest.raises(WorkbenchError) as err:
        paired_interval(exact([1, 0, 1]), exact([1, 0, 1, 1]))
    assert "\n" not in str(err.value) and "cannot pair 3 mean units" in str(err.value) and "4 mean units" in str(err.value)
    assert paired_interval(exact([1, 0]), ProbeResult("arithmetic", 0.5, "", True, 2, 0.0, "quick", 0.0, 0.0)) is None


def test_a_difference_within_the_interval_is_tied_and_a_clear_win_is_best():
    rng = np.random.default_rng(0)
    base = (rng.random(48) < 0.5).astype(int).tolist()
    one_more = list(base)
    one_more[base.index(0)] = 1  # one item better: far inside the interval of 48 items
    clear = [1] * 48
    dense = exact(base)
    row = probe_row("arithmetic", dense, {"a": exact(base), "b": exact(one_more)})
    assert row.best is None and row.tied == ["b", "a"]
    assert row.pairwise[("a", "b")].includes_zero() and row.pairwise[("a", "b")].delta == pytest.approx(1 / 48)
    row = probe_row("arithmetic", dense, {"a": exact(base), "b": exact(one_more), "c": exact(clear)})
    assert row.best == "c" and row.tied == []
    assert row.pairwise[("a", "b")] == paired_interval(exact(base), exact(one_more))  # whatever else is compared
    assert not row.deltas["c"].includes_zero() and row.deltas["a"] == Interval(0.0, 0.0, 0.0)
    assert row.flips["b"] == {"lost": 0, "gained": 1} and row.flips["c"] == {"lost": 0, "gained": 48 - sum(base)}


def test_lower_is_better_and_results_without_units():
    nll = [3.0, 3.4, 2.8, 3.9, 3.1, 3.6, 2.9, 3.3]
    dense = perplexity(nll)
    worse = perplexity([x + 1.0 for x in nll])
    close = perplexity([x + 1.0 + (0.02 if i % 2 else -0.02) for i, x in enumerate(nll)])
    row = probe_row("perplexity", dense, {"worse": worse, "better": perplexity([x + 0.5 for x in nll])})
    assert row.best == "better" and row.deltas["worse"].low > 0
    row = probe_row("perplexity", dense, {"worse": worse, "close": close})
    assert row.best is None and set(row.tied) == {"worse", "close"}
    bare = [ProbeResult("efficiency", s, "params", False, 0, 0.0, "quick", 1000, 0.0) for s in (5.0, 4.0, 4.0)]
    row = probe_row("efficiency", bare[0], {"a": bare[1], "b": bare[2]})
    assert row.deltas == {"a": None, "b": None} and row.best is None and row.tied == ["a", "b"]
    row = probe_row("efficiency", bare[0], {"a": bare[0], "b": bare[1]})
    assert row.best == "b" and row.pairwise == {} and row.flips == {}


def test_flips_need_exact_match_units_of_the_same_items():
    assert flips(exact([1, 1, 0, 0]), exact([1, 0, 1, 1])) == {"lost": 1, "gained": 2}
    assert flips(exact([1, 1, 0]), exact([1, 0, 1, 1])) is None
    assert flips(perplexity([3.0, 2.0]), perplexity([3.0, 2.5])) is None
    checks = check_probes([exact([1, 1, 0, 0]), perplexity([3.0, 2.0])], [exact([1, 0, 1, 0]), perplexity([3.0, 2.0])])
    assert checks[0].flips == {"lost": 1, "gained": 1} and checks[1].flips is None
    assert "items 1 lost / 1 gained" in checks[0].describe()


def six_by_seven() -> tuple[Comparison, int]:
    """Six variants x seven probes (six with units) and the number of probes with units."""
    rng = np.random.default_rng(1)
    sizes = {"arithmetic": 48, "brackets": 24, "facts": 26, "instructions": 12, "kl": 16}

    def results(shift: float) -> list[ProbeResult]:
        out = [perplexity((3 + shift + rng.random(16)).tolist())]
        out += [exact((rng.random(n) < 0.6 - shift / 4).astype(int).tolist(), name) for name, n in sizes.items()]
        return out + [ProbeResult("efficiency", 6e7 + shift, "params", False, 0, 0.0, "quick", 1000, 0.0)]

    return comparison({f"v{i}": results(0.1 * i + 0.3) for i in range(6)}, results(0.0)), 6


def test_a_whole_comparison_is_one_bootstrap_per_probe_without_a_loop_over_resamples(monkeypatch):
    c, with_units = six_by_seven()
    calls = []
    draw = intervals.resample_indices
    monkeypatch.setattr(intervals, "resample_indices", lambda *a, **k: calls.append(a) or draw(*a, **k))

    def no_loop(self, index=None):
        raise AssertionError("a resample scored one at a time")

    monkeypatch.setattr(Units, "score", no_loop)
    start = time.perf_counter()
    rows = c.rows()
    seconds = time.perf_counter() - start
    assert len(calls) == with_units
    assert all(len(r.pairwise) == 15 for r in rows if r.probe != "efficiency")
    assert seconds < 1.0  # the target for a whole comparison


def test_intervals_reproduce_exactly_from_a_saved_and_reloaded_file(tmp_path):
    c, _ = six_by_seven()
    save_comparison(tmp_path / "comparison.toml", ComparisonFile("tiny", "cpu", "float32", CalibrationSpec(), c))
    loaded = load_replayable(tmp_path / "comparison.toml").comparison
    assert [r.to_dict() for r in loaded.rows()] == [r.to_dict() for r in c.rows()]


def test_the_tiny_models_probes_carry_units_through_a_saved_comparison(tmp_path):
    engine = make_engine()
    variants = [Variant("uniform", Plan(sparsity=0.6)), Variant("owl", Plan(allocator="owl", sparsity=0.6))]
    c = run_comparison(engine, variants, ["perplexity", "arithmetic"])
    assert all(p.units for r in c.results for p in r.probes) and all(p.units for p in c.dense)
    save_comparison(tmp_path / "c.toml", ComparisonFile("tiny", "cpu", "float32", engine.calibration, c))
    loaded = load_replayable(tmp_path / "c.toml").comparison
    assert loaded.results[0].probes == c.results[0].probes and loaded.dense == c.dense
    row = loaded.row("perplexity")
    assert row.to_dict() == c.row("perplexity").to_dict()
    assert set(row.deltas) == {"uniform", "owl"} and all(iv.low < iv.high for iv in row.deltas.values())
    assert loaded.row("arithmetic").to_dict() == c.row("arithmetic").to_dict()
