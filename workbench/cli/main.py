"""The `workbench` command: the app (no arguments, or `tui`) and the headless commands
`stats`, `prune`, `replay`, `probe`, `eval`, `compare`, `sensitivity`, `agent`, `heal` and `bench`. Never imports textual at module level.

Every user error is one line on stderr (`workbench: error: WHERE: WHAT`) with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

from workbench.cli.args import (add_model_args, add_model_command, add_plan_args, add_probe_option_args, calibration_of, plan_of,
                                probe_options_of, resolve_drops)
from workbench.cli.console import PROGRESS_MODES, progress_line, set_progress_mode
from workbench.cli.outputs import check_outputs, write_outputs
from workbench.domain.plan import DTYPES
from workbench.infra.errors import Cancelled, WorkbenchError, out_of_memory

EXIT_USAGE = 2
EXIT_CHECK_FAILED = 1


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _print(data: dict) -> None:
    print(json.dumps(data, indent=2, default=str))


def block_table(state) -> str:
    """The per-block table of `workbench stats` and `workbench prune`."""
    head = (f"{'block':>5} {'params':>9} {'target':>7} {'achieved':>8} {'mean|W|':>8} {'max|W|':>7} {'kurt':>7} "
            f"{'outlier%':>8} {'act':>7} {'recon':>7} {'influence':>9}")
    rows = [head, "-" * len(head)]
    for b in state.blocks:
        rows.append(
            f"{b.index:>5} {b.numel:>9,} {b.target:>7.1%} {b.achieved:>8.1%} {b.w_mean_abs:>8.4f} {b.w_max_abs:>7.3f} "
            f"{b.kurtosis:>7.1f} {_fmt(None if b.outlier_ratio is None else 100 * b.outlier_ratio, '.2f'):>8} "
            f"{_fmt(b.act_norm):>7} {_fmt(b.recon_error):>7} {_fmt(b.influence, '.3g'):>9}"
        )
    return "\n".join(rows)


# ----- commands -------------------------------------------------------------------------------------
def cmd_stats(args) -> int:
    from workbench.engine.facade import Engine

    engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress_line(args.json))
    if not args.no_calibration:
        engine.calibrate(progress=progress_line(args.json))
    state = engine.state()
    if args.json:
        _print(asdict(state))
    else:
        print(f"model {state.model}: {len(state.blocks)} blocks, {state.params_total:,} parameters in their linears")
        print(block_table(state))
    return 0


def _probe_pairs(dense: list, pruned: list) -> list[dict]:
    return [{"name": d.name, "metric": d.metric, "dense": d.score, "pruned": p.score, "items": p.items}
            for d, p in zip(dense, pruned)]


def underused_experts(state, calibration) -> list[tuple[int, int, int]]:
    """(block, expert, tokens) of the routed experts that saw fewer calibration tokens than the spec's minimum."""
    return [(b.index, e, t) for b in state.blocks for e, t in enumerate(b.expert_tokens or ())
            if t < calibration.expert_min_tokens]


def cmd_prune(args) -> int:
    from workbench.engine.facade import Engine

    plan = plan_of(args)
    check_outputs(args)
    options = probe_options_of(args)
    progress = progress_line(args.json)
    t0 = time.perf_counter()
    engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress)
    engine.prober.options = options
    plan = resolve_drops(args, engine, plan, progress)
    checked = engine.check_plan(plan)  # refused before any work; the prune below takes it checked
    problem = engine.shaper.experts.export_problem(plan.structure.drop_experts) if args.export else None
    if problem:
        raise WorkbenchError("--export", problem)
    t_load = time.perf_counter() - t0
    names = [n for n in args.probes.split(",") if n]
    size = "full" if args.full else "quick"
    t1 = time.perf_counter()
    # the dense reference first: a probe that cannot run (too little held-out text) fails before the prune
    dense = engine.probe(names, size) if names else []
    t_probe = time.perf_counter() - t1
    report = engine.prune(checked, progress=progress)
    t1 = time.perf_counter()
    pruned = engine.probe(names, size) if names else []
    t_probe += time.perf_counter() - t1
    state = engine.state()
    exported = write_outputs(args, engine, pruned)
    summary = {
        "model": state.model, "plan": asdict(plan), "target": state.target, "achieved": state.achieved,
        "params_total": state.params_total, "params_nonzero": state.params_nonzero,
        "probes": _probe_pairs(dense, pruned),
        "seconds": {"load": t_load, "prune": report.seconds, "probes": t_probe},
        "session": args.save_session, "export": exported, "weights_sha256": engine.weights_digest(),
    }
    influence = engine.signals.influence_scores()
    if influence is not None:
        summary["influence"] = influence.to_dict()
    few = underused_experts(state, engine.calibration)
    if any(b.expert_tokens for b in state.blocks):
        summary["expert_tokens"] = {b.index: b.expert_tokens for b in state.blocks if b.expert_tokens}
        summary["underused_experts"] = [{"block": b, "expert": e, "tokens": t} for b, e, t in few]
    if args.json:
        _print(summary)
        return 0
    pattern = plan.pattern or "unstructured"
    print(f"{state.model}: {plan.method} / {plan.allocator} / {pattern}, target {plan.sparsity:.1%}, "
          f"achieved {state.achieved:.2%} ({state.params_nonzero:,} of {state.params_total:,} linear weights remain)")
    for row in summary["probes"]:
        print(f"  {row['name']:<12} dense {row['dense']:>10.3f}   pruned {row['pruned']:>10.3f}  ({row['metric']}, {row['items']} items)")
    print(f"  time: load {t_load:.1f} s, prune {report.seconds:.1f} s, probes {t_probe:.1f} s")
    if few:
        listed = ", ".join(f"block {b} expert {e} ({t})" for b, e, t in few[:8]) + (" ..." if len(few) > 8 else "")
        print(f"  {len(few)} experts had fewer than {engine.calibration.expert_min_tokens} calibration tokens and took "
              f"{engine.calibration.expert_fallback} statistics: {listed}")
    if args.save_session:
        print(f"  session saved to {args.save_session}")
    if exported:
        print(f"  model exported to {exported}")
    return 0


def cmd_replay(args) -> int:
    from workbench.cli.compare import replay_comparison
    from workbench.domain.replaycheck import ReplayReport, check_probes
    from workbench.domain.session import ComparisonFile, load_replayable, replay_engine
    from workbench.probes import recorded_options

    session = load_replayable(args.file)
    if isinstance(session, ComparisonFile):
        return replay_comparison(args.file, session, args)
    replayed = replay_engine(session, progress=progress_line(args.json), path=args.file, device=args.device,
                             dtype=args.dtype, use_mask_file=not args.recompute)
    engine = replayed.engine
    engine.prober.options = recorded_options(session.probes)
    state = engine.state()
    now = []
    for size in sorted({p.size for p in session.probes}):
        now += engine.probe([p.name for p in session.probes if p.size == size], size)
    report = ReplayReport(replayed.masks, replayed.restored, check_probes(session.probes, now), engine.weights_digest())
    if args.json:
        _print({"file": str(args.file), "achieved": state.achieved, "target": state.target,
                "recomputed_agreement": replayed.recomputed_agreement, "healed": replayed.healed,
                "calibration_ids": replayed.calibration_ids, **report.to_dict()})
    else:
        plan = session.plan
        print(f"{args.file}: {session.model}, {plan.method} / {plan.allocator} / {plan.pattern or 'unstructured'}, "
              f"target {state.target:.2%}, achieved {state.achieved:.2%}")
        if report.masks is None:
            print("  masks: no fingerprints recorded (a version 1 session)")
        else:
            print(f"  {report.masks.describe()} {'ok' if report.masks_ok else 'DIFFERS'}")
        if replayed.restored:
            print(f"  restored from {session.masks.file}; this machine's recomputation agreed on "
                  f"{replayed.recomputed_agreement:.4%} of the decisions")
        if replayed.healed:
            heal = session.sections["heal"]
            how = f"restored from {heal.file} (SHA-256 and digest ok)" if replayed.healed == "restored" else "retrained"
            print(f"  healing ({heal.spec.form}, {heal.spec.steps} steps): {how}")
        if replayed.calibration_ids:
            print(f"  self-generated calibration ids: {replayed.calibration_ids}")
        for row in report.probes:
            print(f"  {row.name:<12} recorded {row.recorded:>10.4f}   now {row.now:>10.4f}   "
                  f"(allowed +-{row.allowed:.4g}) {'ok' if row.ok else 'DIFFERS'}")
        if not report.probes:
            print("  no probes recorded in this session")
    return EXIT_CHECK_FAILED if (args.check and not report.ok) else 0


def cmd_tui(args) -> int:
    from workbench.tui.app import run_app

    return run_app(model=args.model, session=args.session, theme=args.theme, device=args.device, dtype=args.dtype)


def _add_tui_args(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    p.add_argument("--session", help="open this session file")
    p.add_argument("--theme", help="dark, light, mono, or any theme in themes/")
    p.set_defaults(func=cmd_tui)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `workbench` command."""
    from workbench.cli.agent import add_agent_parser
    from workbench.cli.bench import add_bench_parser
    from workbench.cli.compare import add_compare_parser, add_sensitivity_parser
    from workbench.cli.heal import add_heal_parser
    from workbench.cli.probe import add_eval_parser, add_probe_parser

    parser = argparse.ArgumentParser(prog="workbench", description="A terminal workbench for pruning LLMs.")
    sub = parser.add_subparsers(dest="command")

    _add_tui_args(sub.add_parser("tui", help="open the app (the default without arguments)"))

    p = add_model_command(sub, "stats", help="per-block weight, outlier and activation statistics")
    p.add_argument("--no-calibration", action="store_true", help="weights only: skip the calibration pass")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = add_model_command(sub, "prune", help="prune headlessly and report sparsity, probes and times")
    add_plan_args(p)
    p.add_argument("--probes", default="perplexity", help="comma-separated probes to run dense and pruned ('' for none)")
    p.add_argument("--full", action="store_true", help="full-size probes instead of quick ones")
    add_probe_option_args(p)
    p.add_argument("--save-session", metavar="FILE")
    p.add_argument("--save-masks", action="store_true",
                   help="with --save-session: also write the exact masks beside it (NAME.masks.safetensors), "
                        "so replay restores them bit for bit on any machine")
    p.add_argument("--export", metavar="DIR", help="save the pruned model and tokenizer (save_pretrained, safetensors)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("replay", help="rebuild a saved session (or re-run a comparison file) headlessly and re-run its probes")
    p.add_argument("file")
    p.add_argument("--device", default=None, help="override the session's device")
    p.add_argument("--dtype", default=None, choices=DTYPES)
    p.add_argument("--json", action="store_true")
    p.add_argument("--check", action="store_true",
                   help="exit 1 if the masks agree less than documented or a probe differs beyond its tolerance")
    p.add_argument("--recompute", action="store_true", help="ignore the session's mask file: recompute every mask")
    p.set_defaults(func=cmd_replay)

    add_probe_parser(sub)
    add_eval_parser(sub)
    add_compare_parser(sub)
    add_sensitivity_parser(sub)
    add_agent_parser(sub)
    add_heal_parser(sub)

    add_bench_parser(sub)
    for name, command in sub.choices.items():
        if name != "tui":
            command.add_argument("--progress", choices=PROGRESS_MODES, default="auto",
                                 help="progress on stderr: a bar on a terminal, throttled lines for a log or a pipe "
                                      "(auto: bar on a terminal, lines otherwise), or none")
    return parser


def _say(line: str) -> None:
    """One line on stderr, after clearing a progress line left on a terminal."""
    print(("\r\033[K" if sys.stderr.isatty() else "") + line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `workbench` console script."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if not argv or argv[0] == "tui":
            # The app's first frame must not wait for torch, which the full parser imports (through the
            # method and allocator registries): parse the app's options alone.
            parser = argparse.ArgumentParser(prog="workbench tui", description="Open the app.")
            _add_tui_args(parser)
            args = parser.parse_args(argv[1:])
        else:
            parser = build_parser()
            args = parser.parse_args(argv)
            if args.command is None:
                parser.print_help()
                return EXIT_USAGE
            set_progress_mode(args.progress, args.command)
        return args.func(args)
    except WorkbenchError as exc:
        _say(f"workbench: error: {exc}")
        return EXIT_USAGE
    except (Cancelled, KeyboardInterrupt):
        _say("workbench: cancelled; nothing was written")
        return 130
    except (MemoryError, RuntimeError) as exc:
        hint = out_of_memory(exc)
        if hint is None:
            raise
        _say(f"workbench: error: {hint}")
        return EXIT_USAGE

