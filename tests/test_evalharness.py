"""The lm-evaluation-harness bridge, offline: two tiny local tasks (multiple choice and generation)
defined in a temporary directory and run on the tiny random Llama."""

import json

import pytest

from workbench.infra.errors import WorkbenchError

pytest.importorskip("lm_eval")

from workbench.model.loader import load_model  # noqa: E402
from workbench.studies import evalharness  # noqa: E402

DOCS = [
    {"question": "2 + 2 =", "choices": [" 4", " 5", " 22"], "label": 0, "answer": "4"},
    {"question": "The sky is", "choices": [" blue", " loud"], "label": 0, "answer": "blue"},
    {"question": "Water freezes at", "choices": [" 0 degrees", " 90 degrees"], "label": 0, "answer": "0"},
]


def write_tasks(directory):
    """A multiple-choice and a generation task over one local JSONL file."""
    data = directory / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = (
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {data}\n"
        "test_split: test\n"
        'doc_to_text: "{{question}}"\n'
    )
    (directory / "tiny_choice.yaml").write_text(
        "task: tiny_choice\n" + common + "output_type: multiple_choice\n"
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    (directory / "tiny_generate.yaml").write_text(
        "task: tiny_generate\n" + common + "output_type: generate_until\n"
        'doc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 4\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n"
    )
    return directory


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(scope="module")
def manager(tasks):
    return evalharness.task_manager(tasks, builtin=False)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu")


def test_local_tasks_on_tiny_model(tiny, manager):
    results = evalharness.evaluate(tiny.model, tiny.tokenizer, ["tiny_choice", "tiny_generate"], batch_size=2, manager=manager)
    assert set(results) == {"tiny_choice", "tiny_generate"}
    assert 0.0 <= results["tiny_choice"]["acc"] <= 1.0
    assert 0.0 <= results["tiny_generate"]["exact_match"] <= 1.0
    assert results["tiny_choice"]["samples"] == len(DOCS)
    for metrics in results.values():
        assert all(isinstance(v, float) for v in metrics.values())
    again = evalharness.evaluate(tiny.model, tiny.tokenizer, ["tiny_choice"], batch_size=3, manager=manager)
    assert again["tiny_choice"]["acc"] == results["tiny_choice"]["acc"]


def test_limit_caps_documents(tiny, manager):
    results = evalharness.evaluate(tiny.model, tiny.tokenizer, ["tiny_choice"], limit=2, manager=manager)
    assert results["tiny_choice"]["samples"] == 2


def test_include_path_without_manager(tiny, tasks):
    results = evalharness.evaluate(tiny.model, tiny.tokenizer, ["tiny_choice"], include_path=tasks, limit=1)
    assert results["tiny_choice"]["samples"] == 1


def test_unknown_task_and_bad_path_are_one_line_errors(manager, tmp_path):
    with pytest.raises(WorkbenchError, match="unknown lm-eval task 'no_such_task'"):
        evalharness.check_tasks(manager, ["tiny_choice", "no_such_task"])
    with pytest.raises(WorkbenchError, match="no task given"):
        evalharness.check_tasks(manager, [])
    with pytest.raises(WorkbenchError, match="not a directory"):
        evalharness.task_manager(tmp_path / "missing")


def test_plain_results_drops_aliases_and_names_filters():
    raw = {
        "results": {"gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.1,
                              "acc,none": 0.5, "acc_stderr,none": "N/A", "bleu,none": float("nan")}},
        "n-samples": {"gsm8k": {"original": 10, "effective": 4}},
    }
    assert evalharness.plain_results(raw) == {
        "gsm8k": {"exact_match (strict-match)": 0.25, "exact_match_stderr (strict-match)": 0.1, "acc": 0.5, "samples": 4.0}
    }


def test_missing_lm_eval_is_one_line_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_lm_eval(name, *args, **kwargs):
        if name == "lm_eval" or name.startswith("lm_eval."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_lm_eval)
    with pytest.raises(WorkbenchError, match="pip install lm-eval"):
        evalharness.task_manager()


def write_session(path, model_dir):
    path.write_text(
        f"version = 1\n[model]\nspec = {json.dumps(str(model_dir))}\ndevice = \"cpu\"\n"
        "[calibration]\nsamples = 4\nseqlen = 32\n[plan]\nmethod = \"wanda\"\nsparsity = 0.5\n"
    )
    return path


def test_eval_command_stores_results_in_the_session(tiny_model_dir, tasks, tmp_path, capsys):
    import argparse

    from workbench.cli.probe import add_eval_parser
    from workbench.domain.session import load_session

    session = write_session(tmp_path / "s.toml", tiny_model_dir)
    parser = argparse.ArgumentParser()
    add_eval_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "--session", str(session), "--tasks", "tiny_choice", "--include-path", str(tasks),
                              "--limit", "2", "--json"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    stored = load_session(session).evaluations
    assert stored == printed and stored["tiny_choice"]["samples"] == 2


def test_reasoning_options_reach_lm_eval(tiny, manager, monkeypatch):
    """The generation budget goes to lm-eval's evaluation and the thinking switches to its model wrapper."""
    lm_eval, HFLM, manager_class = evalharness._lm_eval()
    seen = {}

    class Recording(HFLM):
        def __init__(self, *args, enable_thinking=None, think_end_token=None, **kwargs):
            seen["model"] = {"enable_thinking": enable_thinking, "think_end_token": think_end_token}
            super().__init__(*args, enable_thinking=enable_thinking, think_end_token=think_end_token, **kwargs)

    evaluate = lm_eval.simple_evaluate

    def recording_evaluate(**kwargs):
        seen["gen_kwargs"] = kwargs.get("gen_kwargs")
        return evaluate(**kwargs)

    monkeypatch.setattr(evalharness, "_lm_eval", lambda: (lm_eval, Recording, manager_class))
    monkeypatch.setattr(lm_eval, "simple_evaluate", recording_evaluate)
    results = evalharness.evaluate(tiny.model, tiny.tokenizer, ["tiny_generate"], manager=manager,
                                   gen_kwargs="max_gen_toks=2", thinking=False, think_end_token="</think>")
    assert results["tiny_generate"]["samples"] == len(DOCS)
    assert seen == {"model": {"enable_thinking": False, "think_end_token": "</think>"}, "gen_kwargs": "max_gen_toks=2"}
