"""Declared parameters: one declaration gives the defaults, the check (sessions, the engine), the CLI's
typing and help, and the app's form."""

import pytest

from workbench.allocators import ALLOCATORS
from workbench.cli.main import main
from workbench.infra.errors import WorkbenchError
from workbench.infra.params import Param, complete, help_line, parse_typed
from workbench.methods import METHODS

FRACTION = Param("eps", 0.3, "spread", low=0, high=1, open_high=True)
COUNT = Param("train", 24, "windows", low=1, whole=True)
WORD = Param("scope", "attention", "which linears", choices=("attention", "all"))
POSITIVE = Param("M", 5.0, "threshold", low=0, open_low=True)
DECLARED = (FRACTION, COUNT, WORD, POSITIVE, Param("steps", (), "recorded", recorded=True))


def test_bounds_read_as_a_researcher_writes_them():
    assert [p.bounds() for p in DECLARED[:4]] == ["in [0, 1)", "a whole number >= 1", "one of attention, all", "> 0"]
    assert FRACTION.hint == "spread (in [0, 1))" and DECLARED[4].hint == "recorded"


@pytest.mark.parametrize("key, value, message", [
    ("eps", 1.0, "must be in [0, 1), got 1"), ("eps", -0.1, "must be in [0, 1), got -0.1"),
    ("eps", True, "must be a number, got True"), ("eps", "0.2", "must be a number, got '0.2'"),
    ("train", 2.5, "must be a whole number >= 1, got 2.5"), ("train", 0, "must be a whole number >= 1, got 0"),
    ("scope", "mlp", "unknown scope 'mlp' (use attention, all)"), ("scope", 3, "must be a word, got 3"),
    ("M", 0.0, "must be > 0, got 0"),
])
def test_values_out_of_range_or_of_the_wrong_type_are_refused_naming_the_key(key, value, message):
    with pytest.raises(WorkbenchError) as caught:
        complete("allocator", "x", DECLARED, {key: value}, "plan.allocator_params")
    assert caught.value.where == f"plan.allocator_params.{key}" and caught.value.what == message


def test_completion_keeps_given_values_and_fills_defaults():
    assert complete("allocator", "x", DECLARED, {"eps": 0.0, "train": 3}, "p") == \
        {"eps": 0.0, "train": 3, "scope": "attention", "M": 5.0, "steps": ()}
    with pytest.raises(WorkbenchError, match="unknown parameter.*epsilon for allocator x"):
        complete("allocator", "x", DECLARED, {"epsilon": 0.1}, "p")


def test_text_is_typed_by_the_declaration():
    assert parse_typed(DECLARED, {"eps": "0.25", "train": "8", "scope": " all "}, "--allocator-param") == \
        {"eps": 0.25, "train": 8, "scope": "all"}
    assert isinstance(parse_typed(DECLARED, {"train": "8"}, "w")["train"], int)
    with pytest.raises(WorkbenchError, match="eps: not a number: 'x'"):
        parse_typed(DECLARED, {"eps": "x"}, "w")
    with pytest.raises(WorkbenchError, match="unknown parameter 'steps'"):  # recorded: never typed in
        parse_typed(DECLARED, {"steps": "[]"}, "w")


def test_help_lists_every_typed_parameter_with_its_range():
    assert help_line("x", DECLARED) == "x: eps (in [0, 1)), train (a whole number >= 1), scope (one of attention, all), M (> 0)"
    assert help_line("owl", ALLOCATORS.get("owl").declared) == "owl: M (> 0), lambda (in [0, 1))"
    assert "blocksize (a whole number >= 1)" in help_line("sparsegpt", METHODS.get("sparsegpt").declared)


@pytest.mark.parametrize("option, text, message", [
    ("--allocator-param", "eps=abc", "--allocator-param: eps: not a number: 'abc'"),
    ("--allocator-param", "eps=1.5", "allocator_params.eps: must be in [0, 1), got 1.5"),
    ("--allocator-param", "estimator=exact", "allocator_params.estimator: unknown estimator 'exact' (use datainf, identity)"),
    ("--allocator-param", "lambda=0.1", "--allocator-param: unknown parameter 'lambda'"),
])
def test_the_cli_types_and_checks_allocator_params_by_their_declaration(tiny_model_dir, capsys, option, text, message):
    assert main(["prune", "--model", str(tiny_model_dir), "--samples", "2", "--seqlen", "16", "--allocator", "layerif",
                 option, text]) == 2
    assert message in capsys.readouterr().err


def test_a_method_parameter_of_the_wrong_kind_is_refused_before_any_work(tiny_model_dir, capsys):
    assert main(["prune", "--model", str(tiny_model_dir), "--method", "magnitude", "--method-param", "scope=column"]) == 2
    assert "method_params.scope: unknown scope 'column' (use row, matrix)" in capsys.readouterr().err
