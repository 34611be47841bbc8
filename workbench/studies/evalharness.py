"""Bridge to lm-evaluation-harness (`pip install lm-eval`, the optional `eval` extra).

The in-memory model (dense, pruned, or rebuilt from a session) is wrapped in lm-eval's `HFLM` and
evaluated with `lm_eval.simple_evaluate`; nothing is written to disk. Results come back as plain
data a session can store: task -> metric -> value. Metric keys are lm-eval's metric names, with the
filter in parentheses when it is not the default one (e.g. `exact_match (strict-match)`), plus
`samples`, the number of documents evaluated.
"""

from __future__ import annotations

import inspect
import logging
import math
from pathlib import Path
from typing import Sequence

from workbench.infra.errors import WorkbenchError

INSTALL_HINT = "lm-evaluation-harness is not installed (pip install lm-eval, or the workbench[eval] extra)"


def _lm_eval():
    """The `lm_eval` package, or a one-line error saying how to install it."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise WorkbenchError("workbench eval", INSTALL_HINT) from exc
    return lm_eval, HFLM, TaskManager


def task_manager(include_path: str | Path | None = None, builtin: bool = True):
    """lm-eval's task index: its built-in tasks (unless `builtin` is False) plus the YAML task
    configs under `include_path`."""
    _, _, TaskManager = _lm_eval()
    if include_path is not None and not Path(include_path).is_dir():
        raise WorkbenchError(f"--include-path {include_path}", "not a directory")
    return TaskManager(include_path=str(include_path) if include_path is not None else None, include_defaults=builtin)


def check_tasks(manager, tasks: Sequence[str]) -> None:
    """Refuse task names lm-eval does not know (tasks, groups and tags all count)."""
    if not tasks:
        raise WorkbenchError("--tasks", "no task given (e.g. --tasks ifeval,gsm8k)")
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise WorkbenchError("--tasks", f"unknown lm-eval task {unknown[0]!r} (list them with: lm-eval ls tasks)")


def plain_results(results: dict) -> dict[str, dict[str, float]]:
    """lm-eval's results as task -> metric -> float (no aliases, no 'N/A' or NaN entries)."""
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results.get("results", {}).items():
        row: dict[str, float] = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            metric, _, kind = key.partition(",")
            row[metric if kind in ("", "none") else f"{metric} ({kind})"] = float(value)
        samples = results.get("n-samples", {}).get(task, {}).get("effective")
        if isinstance(samples, int):
            row["samples"] = float(samples)
        out[task] = row
    return out


def evaluate(
    model,
    tokenizer,
    tasks: Sequence[str],
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    include_path: str | Path | None = None,
    chat_template: bool = False,
    manager=None,
    gen_kwargs: str | None = None,
    thinking: bool | None = None,
    think_end_token: str | None = None,
) -> dict[str, dict[str, float]]:
    """Run lm-eval `tasks` on the in-memory `model`; return task -> metric -> value.

    `limit` caps the documents per task (an int, or a fraction below 1); `include_path` adds local
    YAML task configs; `chat_template` formats prompts with the tokenizer's chat template; `manager`
    reuses a task index from `task_manager` (building one takes seconds). For reasoning models:
    `gen_kwargs` ("max_gen_toks=4096,temperature=0") overrides the tasks' generation settings (the budget of
    thinking plus answer), `thinking` switches the chat template's thinking mode (`enable_thinking`), and
    `think_end_token` ("</think>") has lm-eval score only what follows the thinking; the last two need
    lm-eval >= 0.4.10.
    """
    lm_eval, HFLM, _ = _lm_eval()
    if manager is None:
        manager = task_manager(include_path)
    check_tasks(manager, tasks)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    reasoning = {k: v for k, v in (("enable_thinking", thinking), ("think_end_token", think_end_token)) if v is not None}
    if reasoning and "enable_thinking" not in inspect.signature(HFLM.__init__).parameters:
        raise WorkbenchError("--thinking", "this lm-eval has no thinking options: pip install 'lm-eval>=0.4.10'")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **reasoning)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            apply_chat_template=chat_template,
            gen_kwargs=gen_kwargs,
            log_samples=False,
        )
    except OSError as exc:  # datasets that need the network, missing local files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkbenchError(f"lm-eval tasks {','.join(tasks)}", f"cannot load data: {first}") from exc
    return plain_results(results or {})
