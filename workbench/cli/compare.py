"""Headless comparison and sensitivity: `workbench compare`, `workbench sensitivity`, and the replay of a
comparison file.

`compare` evaluates the grid of allocators x methods (and any saved sessions' plans) at one sparsity and
prints one row per probe and one column per variant (score, delta vs dense with its paired 95% interval,
best marked `*` only where the intervals say so, else the tied variants under the table), then the
per-block targets. Ctrl-C stops it cleanly: what finished is printed and nothing is written. Replaying a
comparison file prints its recorded table (intervals from the saved units, no model needed) before re-running it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.cli.args import add_model_command, add_plan_args, add_probe_option_args, calibration_of, plan_of, probe_options_of, resolve_drops
from workbench.cli.console import progress_line
from workbench.domain.plan import Structure
from workbench.domain.signals import DEFAULT_SIGNAL
from workbench.infra.errors import Cancelled, WorkbenchError

if TYPE_CHECKING:
    from workbench.domain.session import ComparisonFile

EXIT_CHECK_FAILED = 1


def _names(text: str, where: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise WorkbenchError(where, "nothing given")
    return names


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    """Register `workbench compare`."""
    from workbench.cli.probe import SUITE

    p = add_model_command(subparsers, "compare", help="compare allocators and methods side by side on one sparsity")
    p.add_argument("--allocators", default="uniform,owl",
                   help="comma-separated allocators (default: uniform,owl; '' for none, with structured variants)")
    p.add_argument("--methods", default="wanda", help="comma-separated methods (default: wanda)")
    p.add_argument("--sparsity", type=float, default=0.5, help="global target in [0, 1)")
    p.add_argument("--pattern", default=None, help="N:M pattern for every variant, e.g. 2:4")
    p.add_argument("--probes", default=",".join(SUITE), help=f"comma-separated probes (default: {','.join(SUITE)})")
    p.add_argument("--full", action="store_true", help="full-size probes instead of quick ones")
    add_probe_option_args(p)
    p.add_argument("--width-ratios", default="", help="also compare GLU width pruning alone at these expansion ratios, e.g. 2.4,2.0")
    p.add_argument("--width-score", default=Structure.width_score,
                   help="neuron importance for --width-ratios: ppm (default), vow, pon, data; comma-separated for one variant each")
    p.add_argument("--width-divisor", type=int, default=None, help="round kept neurons to a multiple of 32, 64, 128 or 256")
    p.add_argument("--drops", default="", help="also compare dropping this many blocks alone, e.g. 3,6")
    p.add_argument("--drop-by", default="bi", help="how --drops chooses blocks: bi (default) or angular")
    p.add_argument("--session", action="append", default=[], metavar="FILE",
                   help="also compare this session's plan (e.g. a hand-tuned one); repeatable")
    p.add_argument("--heal", type=int, default=None, metavar="STEPS",
                   help="also heal each variant (masked LoRA, the other healing defaults) and probe it again, as NAME+heal")
    p.add_argument("--save", metavar="DIR", help="write each variant as a session and DIR/comparison.toml")
    p.add_argument("--plot", metavar="FILE", help="write a picture of allocations and scores (.png or .svg)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)
    return p


def add_sensitivity_parser(subparsers) -> argparse.ArgumentParser:
    """Register `workbench sensitivity`."""
    p = add_model_command(subparsers, "sensitivity", help="per block: the probe's change when only that block is pruned more")
    add_plan_args(p)
    p.add_argument("--session", metavar="FILE", help="scan this session's plan (its model and calibration)")
    p.add_argument("--blocks", default="all", help="all, or comma-separated block indices")
    p.add_argument("--step", type=float, default=0.1, help="how much each block's target is raised (default 0.1)")
    p.add_argument("--probe", default=DEFAULT_SIGNAL, help=f"the quick probe measured (default {DEFAULT_SIGNAL}: it ranks "
                                                           "blocks more stably across calibration seeds than perplexity)")
    p.add_argument("--save-session", metavar="FILE", help="write the plan's session with the scan in it")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sensitivity)
    return p


# ----- output -------------------------------------------------------------------------------------------
def comparison_table(comparison, columns: int | None = None) -> str:
    """Probe rows x variant columns: score, delta vs dense and its paired 95% interval, `*` on the best of a
    row only where its interval against every other variant excludes 0; the variants are split into groups
    that fit `columns` (the terminal's width by default). Under the table: the tied variants per probe,
    the flips vs dense and the probes without intervals; then the per-block targets of every variant."""
    columns = columns or shutil.get_terminal_size((120, 24)).columns
    rows = {row.probe: row for row in comparison.rows()}
    cells = {r.name: [_cell(r.probe(probe), rows[probe], r.name) for probe in comparison.probes] for r in comparison.results}
    widths = {n: 2 + max(len(n), *(len(c) for c in column)) for n, column in cells.items()}
    groups: list[list] = [[]]
    for r in comparison.results:
        if groups[-1] and 23 + sum(widths[g.name] for g in groups[-1]) + widths[r.name] > columns:
            groups.append([])
        groups[-1].append(r)
    lines = []
    for group in groups:
        head = f"{'probe':<13}{'dense':>10}" + "".join(f"{r.name:>{widths[r.name]}}" for r in group)
        lines += [head, "-" * len(head)]
        for k, probe in enumerate(comparison.probes):
            dense = comparison.dense_probe(probe)
            lines.append(f"{probe:<13}{_score(dense.score if dense else None):>10}"
                         + "".join(f"{cells[r.name][k]:>{widths[r.name]}}" for r in group))
        footer = [("achieved", [f"{r.achieved:.2%}" for r in group]), ("prune s", [f"{r.seconds:.1f}" for r in group])]
        if any(r.prepare_seconds >= 0.05 for r in comparison.results):  # scoring or search before the prune
            footer.append(("search s", [f"{r.prepare_seconds:.1f}" for r in group]))
        for label, values in footer:
            lines.append(f"{label:<13}{'':>10}" + "".join(f"{v:>{widths[r.name]}}" for v, r in zip(values, group)))
        lines.append("")
    lines += _notes(comparison, rows)
    names = [r.name for r in comparison.results]
    width = max([10, *(len(n) + 2 for n in names)])
    blocks = max((len(r.block_targets) for r in comparison.results), default=0)
    ratios = comparison.outlier_ratios
    head = f"{'block':>5} {'outlier%':>8}" + "".join(f"{n:>{width}}" for n in names)
    lines += [head, "-" * len(head)]
    for b in range(blocks):
        ratio = f"{100 * ratios[b]:.2f}" if ratios else "-"
        lines.append(f"{b:>5} {ratio:>8}" + "".join(f"{100 * r.block_targets[b]:>{width - 1}.1f}%" for r in comparison.results))
    return "\n".join(lines)


def _cell(result, row, name: str) -> str:
    """"466.3 +450 [+380,+530]*": a variant's score, its delta vs dense and the delta's interval."""
    if result is None:
        return "-"
    delta = row.deltas.get(name)
    text = _score(result.score)
    if delta is not None:
        text += f" {_compact(delta.delta)} [{_compact(delta.low)},{_compact(delta.high)}]"
    return text + ("*" if row.best == name else " ")


def _notes(comparison, rows) -> list[str]:
    """The lines under the table: ties, flips vs dense, probes without intervals."""
    from workbench.studies.intervals import LEVEL, RESAMPLES

    names = [r.name for r in comparison.results]
    if len(names) < 2:
        return []
    lines = [(f"delta vs dense [{LEVEL:.0%} paired bootstrap interval, {RESAMPLES} resamples]; * best: its interval "
              "against every other variant excludes 0")]
    tied = [(p, row.tied) for p, row in rows.items() if row.tied]
    if tied:
        lines.append("no best, tied (the top's interval against each includes 0):")
        lines += [f"  {p:<13}{'all' if len(t) == len(names) else ', '.join(t)}" for p, t in tied]
    flipped = [(p, row.flips) for p, row in rows.items() if row.flips]
    if flipped:
        lines.append("items flipped vs dense (right to wrong / wrong to right):")
        lines += [f"  {p:<13}" + ", ".join(f"{n} {f['lost']}/{f['gained']}" for n, f in changed.items()) for p, changed in flipped]
    bare = [p for p in comparison.probes if any(r.probe(p) is not None and not r.probe(p).units for r in comparison.results)]
    if bare:
        lines.append(f"no per-item data, so no interval (best by score alone): {', '.join(bare)}")
    return lines + [""]


def _score(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if abs(value) >= 100 else f"{value:.3f}"


def _compact(value: float) -> str:
    """A signed difference to about 3 significant digits, never in exponent form."""
    size = abs(value)
    return f"{value:+.0f}" if size >= 100 else f"{value:+.1f}" if size >= 10 else f"{value:+.2f}" if size >= 1 else f"{value:+.3f}"


def _comparison_json(comparison) -> dict:
    """The comparison as saved (probe results with their units), plus per probe: the best variant (null
    where none is clearly best), the tied ones, each delta vs dense and pairwise difference with its
    interval, and flips vs dense."""
    from workbench.domain.session import comparison_to_dict
    from workbench.studies.intervals import LEVEL, RESAMPLES, SEED

    data = comparison_to_dict(comparison)
    rows = comparison.rows()
    data["best"] = {row.probe: row.best for row in rows}
    data["tied"] = {row.probe: row.tied for row in rows}
    data["intervals"] = {"level": LEVEL, "resamples": RESAMPLES, "seed": SEED, "method": "paired bootstrap, percentile",
                         "rows": {row.probe: row.to_dict() for row in rows}}
    return data


# ----- commands -------------------------------------------------------------------------------------
def _variants(args, engine):
    from workbench.studies.compare import Variant, grid
    from workbench.domain.plan import Plan
    from workbench.domain.session import load_session

    methods = _names(args.methods, "--methods")
    allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
    variants = grid(methods, allocators, args.sparsity, args.pattern)
    scores = _names(args.width_score, "--width-score")
    for text in [r for r in args.width_ratios.split(",") if r.strip()]:
        ratio = _number(text, "--width-ratios")
        for score in scores:
            structure = Structure(width_ratio=ratio, width_score=score, width_divisor=args.width_divisor)
            name = f"width {ratio:g}" if len(scores) == 1 else f"width {ratio:g} {score}"
            variants.append(Variant(name, Plan(method=methods[0], sparsity=0.0, structure=structure)))
    for text in [n for n in args.drops.split(",") if n.strip()]:
        count = int(_number(text, "--drops"))
        drops = engine.choose_drops(count, args.drop_by)
        variants.append(Variant(f"drop {count}", Plan(method=methods[0], sparsity=0.0, structure=Structure(drop_blocks=drops))))
    for file in args.session:
        session = load_session(file)
        if session.model != engine.loaded.spec:
            raise WorkbenchError(f"--session {file}", f"is for model {session.model!r}, this comparison runs {engine.loaded.spec!r}")
        variants.append(Variant(Path(file).stem, session.plan))
    return variants


def _number(text: str, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise WorkbenchError(where, f"expected numbers separated by commas, got {text!r}") from None


def cmd_compare(args) -> int:
    from workbench.studies.compare import run_comparison
    from workbench.engine.facade import Engine

    if args.plot:
        from workbench.cli.figures import check_format

        check_format(Path(args.plot))  # a wrong extension fails before minutes of work
    probes = _names(args.probes, "--probes")
    options = probe_options_of(args)
    progress = progress_line(args.json)
    engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress)
    engine.prober.options = options
    variants = _variants(args, engine)
    if not variants:
        raise WorkbenchError("--allocators", "no variant to compare (give allocators, --width-ratios, --drops or --session)")
    sessions: dict[str, tuple] = {}  # name -> (session, the healing to write beside it or None)
    finished = []
    heal = None
    if args.heal is not None:
        from workbench.recovery.spec import HealSpec

        heal = HealSpec.of({"steps": args.heal}, "--heal")

    def keep(result) -> None:
        finished.append(result)
        if args.save:
            from workbench.domain.session import session_from_engine

            session = session_from_engine(engine, probes=result.probes, device=args.device, dtype=args.dtype)
            healing = (engine.healing.healed, finished[-2].probes) if result.healed else None
            sessions[result.name] = (session, healing)

    try:
        comparison = run_comparison(engine, variants, probes, "full" if args.full else "quick", progress=progress,
                                    on_result=keep, heal=heal)
    except (KeyboardInterrupt, Cancelled):
        if finished:
            from workbench.studies.compare import Comparison

            partial = Comparison(probes=probes, size="full" if args.full else "quick",
                                 dense=[engine.dense_probes[n] for n in probes if n in engine.dense_probes], results=finished,
                                 heal=heal.to_dict() if heal is not None else None)
            print(comparison_table(partial))
        print(f"workbench: comparison cancelled after {len(finished)} of {len(variants)} variants; nothing was written",
              file=sys.stderr)
        return 130
    if args.save:
        _save(args, engine, comparison, sessions)
    if args.plot:
        from workbench.cli.figures import comparison_figure

        comparison_figure(comparison, args.plot, title=f"{engine.loaded.spec}, sparsity {args.sparsity:.0%}")
    if args.json:
        print(json.dumps(_comparison_json(comparison), indent=2, default=str))
    else:
        print(f"{engine.loaded.spec}: {len(variants)} variants at sparsity {args.sparsity:.1%}"
              f"{' ' + args.pattern if args.pattern else ''}, {'full' if args.full else 'quick'} probes")
        print(comparison_table(comparison))
        if args.save:
            print(f"saved to {args.save}/comparison.toml and one session per variant")
        if args.plot:
            print(f"picture written to {args.plot}")
    return 0


def _save(args, engine, comparison, sessions) -> None:
    """Each variant's session, then the comparison file naming them."""
    from workbench.domain.session import ComparisonFile, save_comparison, save_session
    from workbench.recovery.record import attach_heal_file

    directory = Path(args.save)
    for result in comparison.results:
        result.session = f"{_file_name(result.name)}.toml"
        session, healing = sessions[result.name]
        if healing is not None:  # the trained tensors beside it, so that replay puts the healing back
            attach_heal_file(session, *healing, directory / result.session)
        save_session(session, directory / result.session)
    save_comparison(directory / "comparison.toml",
                    ComparisonFile(engine.loaded.spec, args.device, args.dtype, engine.calibration, comparison))


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def replay_comparison(path: str, file: ComparisonFile, args) -> int:
    """`workbench replay FILE` for a comparison file (read from `path`): print the recorded table (its
    intervals and flips recomputed from the saved units), then re-run every variant and check its probes
    (with the items that flipped between the two runs)."""
    from workbench.studies.compare import Variant, run_comparison
    from workbench.engine.facade import Engine
    from workbench.domain.replaycheck import check_probes
    from workbench.probes import recorded_options
    from workbench.recovery.spec import HealSpec

    recorded = file.comparison
    if not args.json:
        print(f"{path}: {file.model}, {len(recorded.results)} variants, {recorded.size} probes; as recorded:")
        print(comparison_table(recorded), flush=True)
    progress = progress_line(args.json)
    engine = Engine.load(file.model, args.device or file.device, args.dtype or file.dtype, file.calibration, progress=progress)
    engine.prober.options = recorded_options(recorded.dense)
    heal = HealSpec.of(recorded.heal) if recorded.heal is not None else None
    now = run_comparison(engine, [Variant(r.name, r.plan) for r in recorded.results if not r.healed], recorded.probes,
                         recorded.size, progress=progress, heal=heal)
    checks = {"dense": check_probes(recorded.dense, now.dense)}
    for r in recorded.results:
        checks[r.name] = check_probes(r.probes, now.result(r.name).probes)
    ok = all(c.ok for rows in checks.values() for c in rows)
    if args.json:
        print(json.dumps({"file": str(path), "ok": ok, "checks": {k: [vars(c) for c in v] for k, v in checks.items()},
                          "recorded": _comparison_json(recorded), "comparison": _comparison_json(now)}, indent=2, default=str))
    else:
        print("replayed:")
        for name, rows in checks.items():
            for c in rows:
                print(c.describe(f"{name:<16} "))
        print(comparison_table(now))
    return EXIT_CHECK_FAILED if (args.check and not ok) else 0


def cmd_sensitivity(args) -> int:
    from workbench.engine.facade import Engine
    from workbench.studies.sensitivity import scan

    progress = progress_line(args.json)
    if args.session:
        from workbench.domain.session import load_session, replay_engine

        session = load_session(args.session)
        engine = replay_engine(session, progress=progress, path=args.session, device=args.device, dtype=args.dtype).engine
        plan = session.plan
    else:
        engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress)
        plan = resolve_drops(args, engine, plan_of(args), progress)
        engine.prune(plan, progress=progress)
    blocks = None if args.blocks == "all" else [_block(b) for b in _names(args.blocks, "--blocks")]
    result = scan(engine, plan, args.step, args.probe, blocks, progress=progress)
    if args.save_session:
        from workbench.domain.session import save_session, session_from_engine

        session = session_from_engine(engine, device=args.device, dtype=args.dtype)
        session.sections["sensitivity"] = result
        save_session(session, args.save_session)
    targets = engine.block_targets(plan)
    if args.json:
        print(json.dumps({"plan_targets": targets, **result.to_dict()}, indent=2))
        return 0
    print(f"{engine.loaded.spec}: {plan.method} / {plan.allocator} {plan.sparsity:.1%}; {result.probe} {result.base:.4g}; "
          f"each block +{result.step:.0%} alone ({result.seconds:.1f} s)")
    scanned = [d for d in result.deltas if d is not None]
    top = max((abs(d) for d in scanned), default=0) or 1
    print(f"{'block':>5} {'target':>7} {'delta':>10}")
    for b, d in enumerate(result.deltas):
        if d is not None:
            print(f"{b:>5} {targets[b]:>7.1%} {d:>+10.4g} {'#' * round(20 * abs(d) / top)}")
    return 0


def _block(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise WorkbenchError("--blocks", f"expected all or block indices, got {text!r}") from None

