"""Probes on the tiny random Llama: batched generation and scoring against unbatched references,
determinism, seeded item generators, the scoring functions on hand-made strings, cancellation and
the `workbench probe` / `workbench eval` parsers."""

import argparse
import inspect
import json
import random

import pytest
import tomli_w
import torch

from tests.tiny import tiny_llama
from workbench.cli.probe import SUITE, add_eval_parser, add_probe_parser, cmd_probe, probe_table
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.probes import CHUNK, PROBES, ProbeContext, ProbeResult, Units, flips, run_probes
from workbench.probes import arithmetic, brackets, facts, instructions
from workbench.probes._generate import (CALL_TOKENS, ChoiceScore, cached, common_prefix_length, cut_at_stop, greedy_generate,
                                       length_groups, score_choices)
from workbench.probes.efficiency import nonzero, parameter_counts

GENERATIVE = ("arithmetic", "brackets", "facts", "instructions")


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


@pytest.fixture
def ctx(tiny):
    model, tokenizer = tiny
    return ProbeContext(model, tokenizer, torch.device("cpu"))


# ----- shared generation and scoring ------------------------------------------------------------
def reference_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without cache, batching or padding."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


def test_batched_generation_matches_unbatched_reference(tiny):
    model, tokenizer = tiny
    header = tokenizer.encode("shared few-shot header\n")
    prompts = [header + tokenizer.encode(tail) for tail in ("a", "a longer prompt", "mid size", "zz")]
    with torch.no_grad():
        texts = greedy_generate(model, tokenizer, prompts, 6, torch.device("cpu"), stop_at_eos=False, batch_size=3)
    assert texts == [tokenizer.decode(reference_greedy(model, p, 6)) for p in prompts]
    unrelated = [tokenizer.encode("xy"), tokenizer.encode("no shared prefix")]
    with torch.no_grad():
        texts = greedy_generate(model, tokenizer, unrelated, 4, torch.device("cpu"), stop_at_eos=False)
    assert texts == [tokenizer.decode(reference_greedy(model, p, 4)) for p in unrelated]


def test_cache_keyword_follows_the_model_class_signature(tiny):
    """The key/value cache goes in under the name the class's forward takes (`cache` from transformers 5.24,
    `past_key_values` before); the tiny model's own class takes one of them."""

    class NewStyle(torch.nn.Module):
        def forward(self, input_ids, cache=None):
            return cache

    class OldStyle(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return past_key_values

    marker = object()
    for module in (NewStyle(), OldStyle(), NewStyle()):
        (keyword, value), = cached(module, marker).items()
        assert module(None, **{keyword: value}) is marker
    model, _ = tiny
    (keyword, _), = cached(model, marker).items()
    assert keyword in inspect.signature(type(model).forward).parameters


def test_generation_stops_at_stop_string():
    assert cut_at_stop("12\nmore", ("\n",)) == ("12", True)
    assert cut_at_stop("ab;cd|e", ("|", ";")) == ("ab", True)
    assert cut_at_stop("abc", ("\n",)) == ("abc", False)


def test_common_prefix_keeps_one_token_of_the_shortest():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix_length([[7, 1], [8, 1]]) == 0


def test_length_groups_split_only_where_padding_costs_more_than_a_call():
    short, long = [1] * 40, [1 + CALL_TOKENS // 4] * 8
    widths = short + [0] + long
    groups = length_groups(widths)
    assert groups == [list(range(40)), list(range(41, 49))]  # 40 padded to the long width would waste more than a call
    assert length_groups([2, 3, 2, 0, 3]) == [[0, 2, 1, 4]]  # one more token each: not worth a call
    assert length_groups([0, 0]) == []


def test_choice_scores_match_full_forward(tiny):
    model, tokenizer = tiny
    header = tokenizer.encode("Q: shared\n")
    items = [
        (header + tokenizer.encode("first?"), [tokenizer.encode(" yes"), tokenizer.encode(" no way"), tokenizer.encode("!")]),
        (header + tokenizer.encode("second one?"), [tokenizer.encode(" a"), tokenizer.encode(" bcd")]),
        (header + tokenizer.encode("3?"), [tokenizer.encode(" xyz")]),
        (header + tokenizer.encode("single tokens only?"), [tokenizer.encode("y"), tokenizer.encode("n")]),
    ]
    with torch.no_grad():
        for batch_size in (32, 2):
            scores = score_choices(model, tokenizer, items, torch.device("cpu"), batch_size=batch_size)
            for (context, choices), item_scores in zip(items, scores):
                assert len(item_scores) == len(choices)
                for choice, score in zip(choices, item_scores):
                    logprobs = torch.log_softmax(model(torch.tensor([context + choice])).logits[0], -1)
                    rows = range(len(context) - 1, len(context) + len(choice) - 1)
                    expected = sum(float(logprobs[r, t]) for r, t in zip(rows, choice))
                    assert score.logprob == pytest.approx(expected, abs=1e-4)
                    assert score.tokens == len(choice)
                    assert score.greedy == all(int(logprobs[r].argmax()) == t for r, t in zip(rows, choice))


def test_greedy_flag_is_what_greedy_decoding_produces(tiny):
    model, tokenizer = tiny
    context = tokenizer.encode("abc")
    produced = reference_greedy(model, context, 3)
    other = [(produced[0] + 1) % 256] + produced[1:]
    with torch.no_grad():
        [[hit, miss]] = score_choices(model, tokenizer, [(context, [produced, other])], torch.device("cpu"))
    assert hit.greedy and not miss.greedy


# ----- item generators -----------------------------------------------------------------------------
def test_arithmetic_problems_are_reproducible_and_grow():
    first = arithmetic.make_problems(0, (1, 2, 3), 5)
    assert first == arithmetic.make_problems(0, (1, 2, 3), 5)
    assert first != arithmetic.make_problems(1, (1, 2, 3), 5)
    assert len(first) == 3 * 3 * 5
    for p in first:
        assert len(str(p.a)) == p.digits or (p.digits == 1 and p.a < 10)
        assert p.answer >= 0
        if p.op == "*":
            assert 2 <= p.b <= 9
    assert arithmetic.Problem(12, "-", 5, 2).answer == 7
    assert arithmetic.Problem(12, "*", 5, 2).text == "12 * 5 ="


def test_bracket_items_are_reproducible_and_well_formed():
    items = brackets.make_items(0, (1, 2, 5), 4)
    assert items == brackets.make_items(0, (1, 2, 5), 4)
    assert items != brackets.make_items(1, (1, 2, 5), 4)
    for prefix, choices in items:
        correct = choices[0]
        assert brackets.closing(prefix) == correct
        assert brackets.closing(prefix + correct) == []
        assert len(choices) == 1 + brackets.DISTRACTORS
        assert all(len(c) == len(correct) and c != correct for c in choices[1:])
        assert len({tuple(c) for c in choices}) == len(choices)
    assert [len(choices[0]) for _, choices in items] == [1] * 4 + [2] * 4 + [5] * 4


def test_fact_set_and_distractors():
    all_facts = facts.load_facts()
    assert 150 <= len(all_facts) <= 300
    assert len({f.question for f in all_facts}) == len(all_facts)
    for fact in all_facts:
        wrong = facts.distractors(all_facts, fact, seed=0)
        assert len(set(wrong)) == facts.DISTRACTORS and fact.answer not in wrong
        assert wrong == facts.distractors(all_facts, fact, seed=0)
    assert len(facts.select(all_facts, "quick")) == 26
    assert facts.select(all_facts, "full") == all_facts


def test_quick_instructions_cover_every_constraint_once():
    quick = instructions.select("quick")
    assert [i.kind for i in quick] == list(instructions.CHECKS)
    assert len(instructions.select("full")) == len(instructions.INSTRUCTIONS)


# ----- scoring on hand-made strings ----------------------------------------------------------------
@pytest.mark.parametrize("text, number", [
    (" 42", 42), ("-7\n", -7), ("The answer is 1,234.", 1234), (" 12 apples and 3", 12), ("none", None), ("", None),
])
def test_extract_number(text, number):
    assert arithmetic.extract_number(text) == number


@pytest.mark.parametrize("prefix, expected", [
    ("( [", ["]", ")"]),
    ("{ < > (", [")", "}"]),
    ("( ) [ ]", []),
    ("<", [">"]),
    ("[ ( { } ) <", [">", "]"]),
])
def test_bracket_closing(prefix, expected):
    assert brackets.closing(prefix.split()) == expected


@pytest.mark.parametrize("prefix", ["( ]", ")", "[ ( ] )", "( x"])
def test_bracket_closing_rejects_bad_prefixes(prefix):
    with pytest.raises(ValueError):
        brackets.closing(prefix.split())


@pytest.mark.parametrize("kind, args, good, bad", [
    ("lowercase", {}, "the sea is wide.", "The sea is wide."),
    ("uppercase", {}, "RAIN FALLS, SOFTLY.", "RAIN falls."),
    ("fewer_words", {"limit": 5}, "A small grey cat.", "A small grey cat sleeps all day."),
    ("keywords", {"words": ["bridge", "river"]}, "Bridges cross the River.", "A bridge over the road."),
    ("forbidden_words", {"words": ["green"]}, "Trees are greenish and tall.", "Trees are Green."),
    ("bullets", {"count": 3}, "* apple\n* pear\n- plum", "* apple\n* pear"),
    ("json", {}, '```json\n{"name": "Ana", "age": 30}\n```', '{"name": "Ana", age: 30}'),
    ("ends_with", {"phrase": "Is there anything else?"}, "Dogs are loyal. Is there anything else?", "Is there anything else? Dogs."),
    ("no_commas", {}, "The sun is bright today.", "The sun, bright today."),
    ("starts_with", {"word": "Welcome"}, "Welcome, new student!", "Hello and welcome."),
    ("title", {}, "<<Moonlight>>\nA poem.", "<Moonlight>"),
    ("quoted", {}, '"Hello there!"', 'Hello "there"'),
])
def test_instruction_checks(kind, args, good, bad):
    assert instructions.follows(kind, good, args)
    assert not instructions.follows(kind, bad, args)


@pytest.mark.parametrize("kind", ["lowercase", "no_commas", "forbidden_words", "fewer_words"])
def test_reply_without_letters_fails_every_constraint(kind):
    args = {"words": ["x"]} if kind == "forbidden_words" else {"limit": 5} if kind == "fewer_words" else {}
    assert not instructions.follows(kind, "", args)
    assert not instructions.follows(kind, " ... 123 ", args)


# ----- probes end to end on the tiny model -------------------------------------------------------------
def test_suite_is_registered():
    assert set(SUITE) <= set(PROBES.names())


@pytest.mark.parametrize("name", GENERATIVE + ("perplexity",))
def test_probe_is_deterministic_and_serializable(ctx, name):
    first = run_probes(ctx, [name])[0]
    second = run_probes(ctx, [name])[0]
    assert first.score == second.score and first.details == second.details
    assert first.items > 0 and first.seconds > 0 and first.size == "quick"
    assert not first.differs(second)
    tomli_w.dumps({"details": first.details})  # plain TOML data: no None, no tensors
    json.dumps(first.to_dict())


@pytest.mark.parametrize("name", GENERATIVE)
def test_exact_match_units_are_the_items_and_recompute_the_score(ctx, name):
    result = run_probes(ctx, [name])[0]
    units = result.units["score"]
    assert len(units.values) == result.items and set(units.values) <= {0.0, 1.0}
    assert units.weights is None and units.link == "mean"
    assert units.score() == result.score  # exact: both are (items right) / items
    assert ProbeResult.from_dict(json.loads(json.dumps(result.to_dict()))).units == result.units


def test_exact_match_units_follow_the_item_order(ctx, monkeypatch):
    """Items right in a known pattern (every third) give units in that pattern."""
    problems = arithmetic.make_problems(ctx.seed, arithmetic.DIGITS["quick"], arithmetic.PER_CELL["quick"])
    monkeypatch.setattr(arithmetic, "greedy_generate",
                        lambda *a, **k: [f" {p.answer}" if i % 3 == 0 else " x" for i, p in enumerate(problems)])
    result = run_probes(ctx, ["arithmetic"])[0]
    assert result.units["score"].values == [1.0 if i % 3 == 0 else 0.0 for i in range(len(problems))]

    def choices(model, tokenizer, items, device, cancel=None):
        return [[ChoiceScore(-1.0, 1, i % 3 == 0)] + [ChoiceScore(-2.0, 1, False)] * (len(c) - 1)
                for i, (_, c) in enumerate(items)]

    monkeypatch.setattr(facts, "score_choices", choices)
    result = run_probes(ctx, ["facts"])[0]
    assert result.units["score"].values == [1.0 if i % 3 == 0 else 0.0 for i in range(result.items)]


def test_perplexity_units_are_chunks_of_32_tokens(ctx):
    """Summed NLL per run of 32 predicted tokens in each 256-token window (255 predicted: 7 x 32 + 31),
    weighted by token count, link exp. The score adds the token NLLs per batch in float32 (as
    cross_entropy's sum), the units in float64: the score's total is off by float32 summation, about
    log2(510) x 6e-8 of it for pairwise sums, so the mean NLL (6.2 nats) by <= 4e-6 and the perplexity by
    that share; rel 1e-5 bounds it (6e-7 seen)."""
    result = run_probes(ctx, ["perplexity"])[0]
    units = result.units["score"]
    assert units.weights == ([float(CHUNK)] * 7 + [31.0]) * 2 and units.link == "exp"
    assert sum(units.weights) == result.details["tokens"]
    assert units.score() == pytest.approx(result.score, rel=1e-5)


def result_with(values, name="arithmetic", size="quick", weights=None):
    return ProbeResult(name, sum(values) / len(values), "exact match", True, len(values), 0.0, size, 0.0, 0.0,
                       units={"score": Units(values, weights)})


def test_flips_from_hand_made_units():
    dense = result_with([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    pruned = result_with([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    assert flips(dense, pruned) == {"lost": 2, "gained": 1}
    assert flips(pruned, dense) == {"lost": 1, "gained": 2}
    assert flips(dense, dense) == {"lost": 0, "gained": 0}
    assert flips(dense, result_with([1.0] * 5)) is None  # other items
    assert flips(dense, result_with(pruned.units["score"].values, size="full")) is None
    assert flips(dense, result_with(pruned.units["score"].values, name="facts")) is None
    chunks = [1.0] * 6
    assert flips(result_with(chunks, weights=chunks), result_with(chunks, weights=chunks)) is None  # chunks, not items


def test_run_reports_flips_against_the_dense_result(ctx):
    """The tiny random model gets every arithmetic item wrong: each item right in `dense` is lost."""
    result = run_probes(ctx, ["arithmetic"])[0]
    assert result.score == 0.0 and "flips" not in result.details
    dense = result_with([1.0, 0.0] * (result.items // 2))
    again = PROBES.get("arithmetic")().run(ctx, "quick", dense)
    assert again.details["flips"] == {"lost": result.items // 2, "gained": 0}
    assert "flips" not in PROBES.get("arithmetic")().run(ctx, "quick", result_with([1.0] * 3)).details


@pytest.mark.parametrize("name", GENERATIVE)
def test_random_model_scores_at_its_floor(ctx, name):
    result = run_probes(ctx, [name])[0]
    assert result.score <= result.floor + 0.1
    assert 0.0 <= result.score <= 1.0


def test_items_follow_the_seed(tiny):
    model, tokenizer = tiny
    base = ProbeContext(model, tokenizer, torch.device("cpu"), seed=0)
    other = ProbeContext(model, tokenizer, torch.device("cpu"), seed=5)
    a = run_probes(base, ["arithmetic"])[0].details["examples"]
    b = run_probes(other, ["arithmetic"])[0].details["examples"]
    assert a != b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_nonzero_counts_as_not_equal_zero_does(dtype):
    """The bit-pattern count agrees with `!= 0`: -0.0 (a pruned negative weight times 0) is zero, NaN
    and the smallest subnormal are not."""
    weight = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)).to(dtype)
    weight[weight.abs() < 0.7] = 0
    weight[0, :4] = torch.tensor([-0.0, float("nan"), torch.finfo(dtype).tiny / 2, -torch.finfo(dtype).tiny])
    weight[1] *= 0  # negative entries become -0.0
    assert nonzero(weight) == int((weight != 0).sum())
    assert nonzero(weight.t()) == int((weight != 0).sum())  # not contiguous: the plain count


def test_efficiency_counts_zeros_and_shapes():
    model, tokenizer = tiny_llama(seed=1)
    dense = parameter_counts(model)
    assert dense["model_params"] == sum(p.numel() for p in model.parameters())
    assert dense["block_linear_nonzero"] == dense["block_linear_params"]
    down = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        down[:, : down.shape[1] // 2] = 0
    pruned = parameter_counts(model)
    assert dense["block_linear_nonzero"] - pruned["block_linear_nonzero"] == down.shape[0] * (down.shape[1] // 2)
    assert pruned["model_params"] == dense["model_params"]
    result = run_probes(ProbeContext(model, tokenizer, torch.device("cpu")), ["efficiency"])[0]
    assert result.score == pytest.approx(pruned["model_nonzero"] / 1e6)
    assert result.details["tokens_per_second"] > 0
    assert result.details["energy"].startswith("not measured")
    assert not result.higher_is_better
    tomli_w.dumps({"details": result.details})


@pytest.mark.parametrize("name", SUITE)
def test_cancel_raises(tiny, name):
    model, tokenizer = tiny
    ctx = ProbeContext(model, tokenizer, torch.device("cpu"), cancel=lambda: True)
    with pytest.raises(Cancelled):
        PROBES.get(name)().run(ctx)


def test_cancel_midway_through_generation(tiny):
    model, tokenizer = tiny
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) > 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        greedy_generate(model, tokenizer, [tokenizer.encode("abc")], 10, torch.device("cpu"), cancel=cancel)
    assert len(calls) == 3


# ----- command line -------------------------------------------------------------------------------------
def parser():
    p = argparse.ArgumentParser(prog="workbench")
    sub = p.add_subparsers(dest="command")
    add_probe_parser(sub)
    add_eval_parser(sub)
    return p


def test_probe_parser_defaults_and_flags():
    args = parser().parse_args(["probe"])
    assert args.probes == ",".join(SUITE) and not args.full and not args.json and args.session is None
    args = parser().parse_args(["probe", "--model", "m", "--probes", "facts,brackets", "--full", "--json"])
    assert (args.model, args.probes, args.full, args.json) == ("m", "facts,brackets", True, True)
    assert args.func is cmd_probe


def test_eval_parser():
    args = parser().parse_args(["eval", "--tasks", "ifeval,gsm8k", "--limit", "20", "--session", "s.toml"])
    assert (args.tasks, args.limit, args.session, args.batch_size) == ("ifeval,gsm8k", 20.0, "s.toml", 8)
    with pytest.raises(SystemExit):
        parser().parse_args(["eval"])


@pytest.mark.parametrize("argv, message", [
    (["probe", "--probes", "nope"], "unknown probe 'nope'"),
    (["probe", "--probes", ","], "no probe given"),
    (["probe", "--model", "m", "--session", "s.toml", "--probes", "facts"], "not both"),
])
def test_probe_command_errors(argv, message):
    args = parser().parse_args(argv)
    with pytest.raises(WorkbenchError, match=message):
        args.func(args)


def test_probe_command_on_local_model(tiny_model_dir, capsys):
    args = parser().parse_args(["probe", "--model", str(tiny_model_dir), "--probes", "arithmetic,efficiency", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in out] == ["arithmetic", "efficiency"]
    assert out[0]["items"] == 48 and out[0]["tolerance"] > 0
    args = parser().parse_args(["probe", "--model", str(tiny_model_dir), "--probes", "brackets"])
    assert args.func(args) == 0
    table = capsys.readouterr().out
    assert "brackets" in table and "exact match" in table and "total" in table


def test_probe_table_lists_every_result(ctx):
    results = run_probes(ctx, ["brackets", "efficiency"])
    lines = probe_table(results).splitlines()
    assert lines[0].split()[:3] == ["probe", "score", "metric"]
    assert lines[2].startswith("brackets") and lines[3].startswith("efficiency")


def test_seeded_generators_do_not_touch_global_random_state(ctx):
    random.seed(123)
    expected = random.random()
    random.seed(123)
    run_probes(ctx, ["arithmetic", "brackets", "facts"])
    assert random.random() == expected


def test_nvml_energy_reader_with_a_fake_gpu(monkeypatch):
    import sys
    import types

    from workbench.probes import efficiency

    counter = iter([5000, 5000, 7500])  # millijoules
    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByUUID=lambda uuid: uuid,
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(counter),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(uuid="1234-abcd"))
    read = efficiency.nvml_energy_reader(torch.device("cuda:0"))
    assert callable(read)
    assert read() == 5.0 and read() == 7.5
    assert efficiency.nvml_energy_reader(torch.device("cpu")).startswith("not measured")
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert "pynvml" in efficiency.nvml_energy_reader(torch.device("cuda:0"))


def test_probe_command_on_a_session(tiny_model_dir, tmp_path, capsys):
    session = tmp_path / "s.toml"
    session.write_text(
        f"version = 1\n[model]\nspec = {json.dumps(str(tiny_model_dir))}\ndevice = \"cpu\"\n"
        "[calibration]\nsamples = 4\nseqlen = 32\nseed = 3\n[plan]\nmethod = \"wanda\"\nsparsity = 0.5\n"
    )
    args = parser().parse_args(["probe", "--session", str(session), "--probes", "efficiency,arithmetic", "--json"])
    assert args.func(args) == 0
    efficiency, arith = json.loads(capsys.readouterr().out)
    assert efficiency["details"]["block_linear_density"] == pytest.approx(0.5, abs=0.01)
    seeded = run_probes(ProbeContext(*tiny_llama(seed=0), torch.device("cpu"), seed=3), ["arithmetic"])[0]
    assert arith["details"]["examples"][0].split("=")[0] == seeded.details["examples"][0].split("=")[0]


def test_topic_gate_rejects_off_topic_replies():
    assert instructions.follows("no_commas", "The sun is hot today.", {}, ("sun",))
    assert not instructions.follows("no_commas", "the the the the", {}, ("sun",))
    assert not instructions.follows("fewer_words", "ok", {"limit": 12}, ("cat", "kitten"))
    assert instructions.on_topic("A small Kitten.", ("cat", "kitten"))


@pytest.mark.parametrize("instruction", instructions.INSTRUCTIONS, ids=lambda i: f"{i.kind}:{i.prompt[:24]}")
def test_topic_is_never_what_the_constraint_forces(instruction):
    assert instruction.topic and instruction.kind in instructions.CHECKS
    forced = " ".join([*instruction.args.get("words", []), instruction.args.get("word", ""), instruction.args.get("phrase", "")])
    if instruction.kind != "forbidden_words":
        assert not instructions.on_topic(forced, instruction.topic)
