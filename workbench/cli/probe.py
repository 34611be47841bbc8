"""Headless probes and lm-evaluation-harness runs: `workbench probe` and `workbench eval`.

Both run on a model spec (`--model`) or on the pruned model a session file rebuilds (`--session`).
`probe` prints a table or a JSON list of probe results; `eval` prints lm-eval metrics and, with
`--session`, stores them in the session's `[evaluations]` table.
"""

from __future__ import annotations

import argparse
import json

from workbench.cli.args import add_probe_option_args, probe_options_of
from workbench.cli.console import progress_line
from workbench.domain.plan import DTYPES, CalibrationSpec
from workbench.infra.errors import WorkbenchError

SUITE = ("perplexity", "kl", "arithmetic", "brackets", "facts", "instructions", "efficiency")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="embedded (default), a hub id, a local HF directory or a .gguf file")
    p.add_argument("--session", metavar="FILE", help="rebuild this session's pruned model and use it")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda:N")
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    """Register `workbench probe`."""
    p = subparsers.add_parser("probe", help="run the quick (or full) probes on a model or a session's pruned model")
    _add_source_args(p)
    p.add_argument("--probes", default=",".join(SUITE), help=f"comma-separated probes (default: {','.join(SUITE)})")
    p.add_argument("--full", action="store_true", help="full-size probes instead of quick ones")
    add_probe_option_args(p)
    p.add_argument("--data", default=None, help="evaluation text for perplexity: embedded (default), hf:NAME[:CONFIG[:SPLIT]], "
                                                "or a .txt/.jsonl file; a session uses its calibration source")
    p.add_argument("--seed", type=int, default=None, help="seed of the generated probe items (default 0; a session uses its own)")
    p.set_defaults(func=cmd_probe)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """Register `workbench eval`."""
    p = subparsers.add_parser("eval", help="run lm-evaluation-harness tasks on a model or a session's pruned model")
    _add_source_args(p)
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks, e.g. ifeval,gsm8k")
    p.add_argument("--limit", type=float, default=None, help="documents per task (a fraction if below 1)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--include-path", metavar="DIR", help="directory of extra lm-eval YAML task configs")
    p.add_argument("--chat-template", action="store_true", help="format prompts with the tokenizer's chat template")
    p.add_argument("--gen-kwargs", metavar="K=V,...", help="generation settings for every task, e.g. "
                                                          "max_gen_toks=4096 (a reasoning model's thinking budget plus its answer)")
    p.add_argument("--thinking", choices=("on", "off"), help="the chat template's thinking mode (enable_thinking; with --chat-template)")
    p.add_argument("--think-end-token", metavar="TEXT", help="score only what follows this end of thinking, e.g. '</think>'")
    p.set_defaults(func=cmd_eval)
    return p


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise WorkbenchError("--probes", "no probe given")
    return names


def _source(args):
    """(loaded model, session or None, eval source, seed, engine or None) for --model or --session."""
    if args.session and args.model:
        raise WorkbenchError("--model", "give --model or --session, not both (a session names its model)")
    data = getattr(args, "data", None)
    seed = getattr(args, "seed", None)
    progress = progress_line(args.json)
    if args.session:
        from workbench.domain.session import load_session, replay_engine

        session = load_session(args.session)
        engine = replay_engine(session, progress=progress, path=args.session, device=args.device, dtype=args.dtype).engine
        loaded = engine.loaded
        source = data or session.calibration.text
        seed = session.calibration.seed if seed is None else seed
    else:
        from workbench.model.loader import EMBEDDED, load_model

        session, engine = None, None
        loaded = load_model(args.model or EMBEDDED, device=args.device or "auto", dtype=args.dtype or "auto", progress=progress)
        source = data or CalibrationSpec.source
        seed = CalibrationSpec.seed if seed is None else seed
    return loaded, session, source, seed, engine


def probe_table(results) -> str:
    """The readable table of `workbench probe`."""
    head = f"{'probe':<13} {'score':>10} {'metric':<17} {'floor':>7} {'items':>6} {'seconds':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        arrow = "^" if r.higher_is_better else "v"
        rows.append(f"{r.name:<13} {r.score:>10.4f} {arrow} {r.metric:<15} {r.floor:>7.3f} {r.items:>6} {r.seconds:>8.2f}")
    rows.append(f"{'total':<13} {'':>10} {'':<17} {'':>7} {'':>6} {sum(r.seconds for r in results):>8.2f}")
    return "\n".join(rows)


def cmd_probe(args) -> int:
    """`workbench probe`: run probes headlessly and print their results."""
    from workbench.probes import PROBES, ProbeContext, run_probes

    names = _names(args.probes)
    for name in names:
        PROBES.get(name, where="--probes")
    options = probe_options_of(args)
    loaded, session, source, seed, engine = _source(args)
    size = "full" if args.full else "quick"
    if engine is not None and (source, seed) == (session.calibration.text, session.calibration.seed):
        engine.prober.options = options
        results = engine.probe(names, size, progress_line(args.json))  # kl against the dense model, flips
    else:
        if engine is not None and "kl" in names:
            raise WorkbenchError("--probes", "kl compares with the dense model on the session's own held-out data: "
                                             "run it without --data and --seed")
        ctx = ProbeContext(loaded.model, loaded.tokenizer, loaded.device, eval_source=source, seed=seed, options=options)
        results = run_probes(ctx, names, size, progress=progress_line(args.json))
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(probe_table(results))
    return 0


def _limit(value: float | None) -> int | float | None:
    if value is None:
        return None
    if value <= 0:
        raise WorkbenchError("--limit", f"must be positive, got {value:g}")
    return value if value < 1 else int(value)


def cmd_eval(args) -> int:
    """`workbench eval`: run lm-eval tasks on the in-memory model; with --session, store the results."""
    from workbench.studies import evalharness

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    limit = _limit(args.limit)
    manager = evalharness.task_manager(args.include_path)
    evalharness.check_tasks(manager, tasks)  # before the model loads
    loaded, session, _, _, _ = _source(args)
    results = evalharness.evaluate(loaded.model, loaded.tokenizer, tasks, limit=limit, num_fewshot=args.num_fewshot,
                                   batch_size=args.batch_size, chat_template=args.chat_template, manager=manager,
                                   gen_kwargs=args.gen_kwargs, think_end_token=args.think_end_token,
                                   thinking=None if args.thinking is None else args.thinking == "on")
    if session is not None:
        from workbench.domain.session import save_session

        session.evaluations.update(results)
        save_session(session, args.session)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for task, metrics in results.items():
        print(task)
        for metric, value in metrics.items():
            print(f"  {metric:<40} {value:.4f}")
    if session is not None:
        print(f"results stored in {args.session} [evaluations]")
    return 0
