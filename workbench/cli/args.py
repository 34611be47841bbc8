"""Command-line options shared by the headless commands: model, calibration and plan options, and how
they become a `CalibrationSpec` and a `Plan`."""

from __future__ import annotations

import argparse
import dataclasses

from workbench.domain.plan import DROP_BY, DTYPES, EXPERT_FALLBACKS, EXPERT_SCORES, MODES, CalibrationSpec, Plan, Structure, drop_problem
from workbench.infra.errors import WorkbenchError
from workbench.infra.params import help_line, parse_typed


def add_model_command(subparsers, name: str, help: str) -> argparse.ArgumentParser:
    """Register a subcommand that loads a model and calibrates it: the model and calibration options."""
    p = subparsers.add_parser(name, help=help)
    add_model_args(p)
    add_calibration_args(p)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype."""
    p.add_argument("--model", default="embedded", help="embedded (default), a hub id, a local HF directory or a .gguf file")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPES)


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """--calibration, --samples, --seqlen, --seed, --mode, --hessian, --expert-fallback, --expert-min-tokens."""
    p.add_argument("--calibration", default=CalibrationSpec.source, help="embedded, hf:NAME[:CONFIG[:SPLIT]], a .txt/.jsonl file, or self[:N][:reasoning]: "
                                                                  "N windows of the dense model's own chat replies (default --samples)")
    p.add_argument("--samples", type=int, default=CalibrationSpec.samples)
    p.add_argument("--seqlen", type=int, default=CalibrationSpec.seqlen)
    p.add_argument("--seed", type=int, default=CalibrationSpec.seed)
    p.add_argument("--mode", default=CalibrationSpec.mode, choices=MODES,
                   help="sequential: block i calibrates on the pruned blocks before it; one-pass: statistics of the dense model")
    p.add_argument("--hessian", action="store_true", help="also capture X X^T (reconstruction errors for every method)")
    p.add_argument("--expert-fallback", default=CalibrationSpec.expert_fallback, choices=EXPERT_FALLBACKS,
                   help="mixture of experts: statistics of an expert the router sent too few calibration tokens "
                        "(pooled: summed over the block's experts; magnitude: |W| alone)")
    p.add_argument("--expert-min-tokens", type=int, default=CalibrationSpec.expert_min_tokens,
                   help="mixture of experts: an expert with fewer calibration tokens takes the fallback")


def key_values(items: list[str], where: str, key_type=str, cast: bool = True) -> dict:
    """Parse repeated KEY=VALUE options; values become int/float/bool when they look like one (unless not
    `cast`: the text)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise WorkbenchError(where, f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            key = key_type(key)
        except ValueError:
            raise WorkbenchError(where, f"bad key {key!r} in {item!r}") from None
        out[key] = scalar(value) if cast else value
    return out


def scalar(text: str):
    """A command-line value as bool, int or float when it looks like one, else the text."""
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def calibration_of(args) -> CalibrationSpec:
    """The calibration spec of parsed calibration options (a self-generated source checked now)."""
    spec = CalibrationSpec(source=args.calibration, samples=args.samples, seqlen=args.seqlen, seed=args.seed,
                           mode=args.mode, hessian=True if args.hessian else None, expert_fallback=args.expert_fallback,
                           expert_min_tokens=args.expert_min_tokens)
    spec.generated  # noqa: B018 - parses self[:N][:reasoning], one error naming it
    return spec


def params_help(registry) -> str:
    """Each entry's typed parameters, from their declarations, for a KEY=VALUE option's help."""
    lines = [help_line(name, registry.get(name).declared) for name in registry.names()]
    return "; ".join(line for line in lines if line)


def declared_values(entry, items: list[str] | None, where: str) -> dict:
    """Repeated KEY=VALUE options typed by `entry`'s declared parameters (a method or an allocator)."""
    typed = key_values(items, where, cast=False)
    return parse_typed(entry.declared, typed, where) if typed else {}


def add_method_args(p: argparse.ArgumentParser) -> None:
    """--method, --method-param, --sparsity."""
    from workbench.methods import METHODS

    p.add_argument("--method", default=Plan.method, choices=METHODS.names())
    p.add_argument("--method-param", action="append", metavar="KEY=VALUE", help=params_help(METHODS))
    p.add_argument("--sparsity", type=float, default=Plan.sparsity, help="global target in [0, 1)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The method options, --allocator, --pattern, the manual overrides and the structure."""
    from workbench.allocators import ALLOCATORS

    add_method_args(p)
    p.add_argument("--allocator", default=Plan.allocator, choices=ALLOCATORS.names())
    p.add_argument("--allocator-param", action="append", metavar="KEY=VALUE", help=params_help(ALLOCATORS))
    p.add_argument("--pattern", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    p.add_argument("--block-sparsity", action="append", metavar="BLOCK=VALUE", help="manual block target, e.g. 3=0.6")
    p.add_argument("--linear-sparsity", action="append", metavar="NAME=VALUE", help="e.g. layers.3.mlp.down_proj=0.7; a module sets every linear inside it: layers.3.self_attn=0.3, layers.3.mlp.experts=0.6 (a block's experts), layers.3.mlp.experts.5=0.8 (one expert); the most specific name wins")
    p.add_argument("--expert-span", type=float, default=Plan.expert_span, metavar="SPAN",
                   help="mixture of experts: spread each block's target over its experts by router usage, the least "
                        "used pruned up to SPAN more and the most used up to SPAN less (0: one target per block)")
    add_structure_args(p)


def add_structure_args(p: argparse.ArgumentParser) -> None:
    """Width (GLU expansion ratio) and depth (dropped blocks) options."""
    p.add_argument("--width-ratio", type=float, default=None,
                   help="GLU expansion ratio to keep (kept neurons / hidden size), e.g. 2.4")
    p.add_argument("--width-score", default=Structure.width_score, help="neuron importance: ppm (default), vow, pon, data, random (a seeded control)")
    p.add_argument("--width-divisor", type=int, default=None, help="round kept neurons to a multiple of 32, 64, 128 or 256")
    p.add_argument("--width-block", action="append", metavar="BLOCK=RATIO", help="per-block expansion ratio, e.g. 3=2.0")
    p.add_argument("--drop-blocks", type=int, default=0, metavar="N", help="drop N blocks from the forward pass")
    p.add_argument("--drop-by", default="bi",
                   help="bi (lowest block influence, default), angular (the run of lowest angular distance), "
                        "or block numbers such as 22,23")
    p.add_argument("--drop-experts", action="append", metavar="BLOCK:E,E", default=[],
                   help="mixture of experts: drop these routed experts of a block, e.g. 3:5,17 (repeatable)")
    p.add_argument("--experts-keep", type=int, default=None, metavar="N",
                   help="mixture of experts: keep the N best experts of every MoE block (by --drop-experts-by)")
    p.add_argument("--drop-experts-by", default="reap", choices=EXPERT_SCORES,
                   help="reap (router-weighted output norm, default) or frequency (tokens routed), on the dense model")


def method_params_of(args) -> dict:
    """--method-param options, typed by the method's declarations."""
    from workbench.methods import METHODS

    return declared_values(METHODS.get(args.method, "--method"), args.method_param, "--method-param")


def plan_of(args) -> Plan:
    """The plan of parsed plan options."""
    from workbench.allocators import ALLOCATORS

    return Plan(
        method=args.method, method_params=method_params_of(args), allocator=args.allocator,
        allocator_params=declared_values(ALLOCATORS.get(args.allocator, "--allocator"), args.allocator_param, "--allocator-param"),
        sparsity=args.sparsity, pattern=args.pattern,
        block_overrides=key_values(args.block_sparsity, "--block-sparsity", int),
        linear_overrides=key_values(args.linear_sparsity, "--linear-sparsity"),
        structure=Structure(width_ratio=args.width_ratio, width_score=args.width_score, width_divisor=args.width_divisor,
                            width_overrides=key_values(args.width_block, "--width-block", int)),
        expert_span=args.expert_span,
    )


def resolve_drops(args, engine, plan: Plan, progress=None) -> Plan:
    """`plan` with the blocks `--drop-blocks/--drop-by` choose (scored on the dense model when by score) and the
    experts `--drop-experts` or `--experts-keep` choose."""
    plan = resolve_expert_drops(args, engine, plan)
    if not args.drop_blocks and args.drop_by in DROP_BY:
        return plan
    drops = engine.choose_drops(args.drop_blocks, args.drop_by, progress)
    problem = drop_problem(drops, asked=args.drop_blocks or None)
    if problem:
        raise WorkbenchError("--drop-blocks/--drop-by", problem)
    return dataclasses.replace(plan, structure=dataclasses.replace(plan.structure, drop_blocks=drops))


def resolve_expert_drops(args, engine, plan: Plan) -> Plan:
    """`plan` with the experts `--drop-experts` names or `--experts-keep` keeps (the two do not mix)."""
    if args.drop_experts and args.experts_keep is not None:
        raise WorkbenchError("--drop-experts", "name experts or give --experts-keep, not both")
    if args.experts_keep is not None:
        drops = engine.choose_expert_drops(args.drop_experts_by, args.experts_keep)
    elif args.drop_experts:
        drops = {}
        for item in args.drop_experts:
            block, _, experts = item.partition(":")
            try:
                drops.setdefault(int(block), []).extend(int(e) for e in experts.split(","))
            except ValueError:
                raise WorkbenchError("--drop-experts", f"expected BLOCK:E,E such as 3:5,17, got {item!r}") from None
    else:
        return plan
    return dataclasses.replace(plan, structure=dataclasses.replace(plan.structure, drop_experts=drops))


def _probe_option_flags():
    """(probe name, its declared option, the flag's dest) for every probe option."""
    from workbench.probes import PROBES

    return [(probe.name, param, f"probe_{probe.name}_{param.name}") for probe in PROBES.entries() for param in probe.options]


def add_probe_option_args(p: argparse.ArgumentParser) -> None:
    """One flag per declared probe option (`--thinking`, `--budgets`, ... of the reasoning probe)."""
    for name, param, dest in _probe_option_flags():
        p.add_argument(f"--{param.name.replace('_', '-')}", dest=dest, default=None, metavar=param.name.upper(),
                       help=f"{name} probe: {param.hint}")


def probe_options_of(args) -> dict[str, dict]:
    """The probe options given on the command line, typed and checked, by probe name."""
    from workbench.probes import option_values

    typed: dict[str, dict] = {}
    for name, param, dest in _probe_option_flags():
        if getattr(args, dest, None) is not None:
            typed.setdefault(name, {})[param.name] = getattr(args, dest)
    given = {}
    for name, values in typed.items():
        given[name] = parse_typed(tuple(p for n, p, _ in _probe_option_flags() if n == name), values, name)
        option_values(name, given[name])  # checked now, before any model loads
    return given
