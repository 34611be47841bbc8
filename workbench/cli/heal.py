"""`workbench heal`: prune with the plan options (or rebuild `--session FILE`), heal with LoRA or sparse
fine-tuning that keeps the cut, and report every probe before and after healing with a paired 95%
interval of the change; `--export`, `--save-session` (the trained tensors beside it) and `--json` as
`workbench prune` has them. Ctrl-C stops between steps: the model is put back, and with `--checkpoint
FILE` the run so far is saved there for `--resume FILE`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from workbench.cli.args import add_model_command, add_plan_args, add_probe_option_args, calibration_of, plan_of, probe_options_of, resolve_drops
from workbench.cli.console import progress_line
from workbench.cli.outputs import check_outputs, interrupts_held, write_outputs
from workbench.infra.params import parse_typed
from workbench.recovery.spec import HEAL_PARAMS, HealSpec

PREFIX = "heal-"  # for a healing parameter whose flag the model and plan options already use (--seqlen, --seed)


def add_heal_parser(sub) -> None:
    """The `workbench heal` subcommand: one flag per declared healing parameter."""
    p = add_model_command(sub, "heal", help="heal the pruned model, keeping the cut, and compare probes before and after")
    add_plan_args(p)
    p.add_argument("--session", metavar="FILE", help="heal the state a saved session replays to (instead of the plan options)")
    taken = set(p._option_string_actions)
    for param in HEAL_PARAMS:
        flag = "--" + param.name.replace("_", "-")
        if flag in taken:
            flag = "--" + PREFIX + param.name.replace("_", "-")
        p.add_argument(flag, dest=f"heal_{param.name}", metavar="VALUE", default=None,
                       help=f"{param.hint} [default: {param.default}]")
    p.add_argument("--probes", default="perplexity,kl", help="comma-separated probes before and after healing")
    p.add_argument("--full", action="store_true", help="full-size probes instead of quick ones")
    add_probe_option_args(p)
    p.add_argument("--checkpoint", metavar="FILE", help="save the run at every held-out loss and on Ctrl-C, to resume from")
    p.add_argument("--resume", metavar="FILE", help="continue a run saved with --checkpoint (the same plan and spec)")
    p.add_argument("--export", metavar="DIR", help="save the healed model (adapter form: the sparse base plus adapter/)")
    p.add_argument("--save-session", metavar="FILE")
    p.add_argument("--save-masks", action="store_true", help="with --save-session: also write the exact masks beside it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_heal)


def spec_of(args) -> HealSpec:
    """The healing spec of the parsed flags (defaults for the rest), checked."""
    given = {p.name: getattr(args, f"heal_{p.name}") for p in HEAL_PARAMS if getattr(args, f"heal_{p.name}") is not None}
    return HealSpec.of(parse_typed(HEAL_PARAMS, given, "heal"), "heal")


def cmd_heal(args) -> int:
    from workbench.domain.session import load_session, replay_engine
    from workbench.engine.facade import Engine
    from workbench.recovery.record import attach_heal_file
    from workbench.studies.intervals import paired_interval

    spec = spec_of(args)
    check_outputs(args)
    options = probe_options_of(args)
    progress = progress_line(args.json)
    t0 = time.perf_counter()
    if args.session:
        engine = replay_engine(load_session(args.session), progress=progress, path=args.session).engine
        engine.apply(engine.plan)  # a healed session: back to its pruned state, healed again below
    else:
        engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress)
        plan = resolve_drops(args, engine, plan_of(args), progress)
        engine.prune(engine.check_plan(plan), progress=progress)
    engine.prober.options = options
    names = [n for n in args.probes.split(",") if n]
    size = "full" if args.full else "quick"
    dense = engine.dense_reference(names, size) if names else []
    before = engine.probe(names, size) if names else []
    t_prune = time.perf_counter() - t0
    with interrupts_held() as asked:  # Ctrl-C stops the run at its next step (where it can checkpoint)
        healed = engine.heal(spec, progress=progress, cancel=lambda: bool(asked),
                             checkpoint=Path(args.checkpoint) if args.checkpoint else None,
                             resume=Path(args.resume) if args.resume else None)
    after = engine.probe(names, size) if names else []
    attach = (lambda session: attach_heal_file(session, healed, before, args.save_session)) if args.save_session else None
    exported = write_outputs(args, engine, after, attach)
    rows = []
    for d, b, a in zip(dense, before, after):
        interval = paired_interval(b, a)
        rows.append({"name": a.name, "metric": a.metric, "dense": d.score, "before": b.score, "after": a.score,
                     "change": a.score - b.score, "interval": interval.to_dict() if interval else None})
    state = engine.state()
    summary = {"model": state.model, "plan": asdict(engine.plan), "achieved": state.achieved,
               "heal": {**healed.to_dict(), "dense_plan": state.achieved == 0},
               "probes": rows, "seconds": {"load_prune_probes": t_prune, "heal": healed.seconds},
               "session": args.save_session, "export": exported, "weights_sha256": engine.weights_digest()}
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print_summary(summary, healed)
    return 0


def print_summary(summary: dict, healed) -> None:
    spec, curve = healed.spec, healed.curve
    plan = summary["plan"]
    dense_note = " (a dense plan: nothing was pruned)" if summary["heal"]["dense_plan"] else ""
    print(f"{summary['model']}: {plan['method']} / {plan['allocator']}, target {plan['sparsity']:.1%}, "
          f"achieved {summary['achieved']:.2%}{dense_note}")
    print(f"  healed ({spec.form}): {spec.steps} steps of {spec.batch} x {spec.seqlen} tokens, "
          f"{healed.trained_params:,} parameters trained, {healed.seconds:.1f} s ({healed.tokens_per_second:.0f} tokens/s)")
    print(f"  held-out loss {curve.heldout[0]:.4f} -> {curve.heldout[-1]:.4f}; training loss "
          f"{curve.loss[0]:.4f} -> {curve.loss[-1]:.4f}")
    for row in summary["probes"]:
        interval = row["interval"]
        ci = f" [{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval else ""
        print(f"  {row['name']:<12} dense {row['dense']:>10.3f}   before {row['before']:>10.3f}   after "
              f"{row['after']:>10.3f}   change {row['change']:+.3f}{ci}  ({row['metric']})")
    if summary["session"]:
        print(f"  session saved to {summary['session']}")
    if summary["export"]:
        print(f"  model exported to {summary['export']}")
