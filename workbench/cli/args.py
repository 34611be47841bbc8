"""Command-line options shared by the headless commands: model, calibration and plan options, and how
they become a `CalibrationSpec` and a `Plan`."""

from __future__ import annotations

import argparse
import dataclasses

from workbench.domain.plan import DROP_BY, DTYPES, MODES, CalibrationSpec, Plan, Structure, drop_problem
from workbench.infra.errors import WorkbenchError


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
    """--calibration, --samples, --seqlen, --seed, --mode, --hessian."""
    p.add_argument("--calibration", default=CalibrationSpec.source, help="embedded, hf:NAME[:CONFIG[:SPLIT]], or a .txt/.jsonl file")
    p.add_argument("--samples", type=int, default=CalibrationSpec.samples)
    p.add_argument("--seqlen", type=int, default=CalibrationSpec.seqlen)
    p.add_argument("--seed", type=int, default=CalibrationSpec.seed)
    p.add_argument("--mode", default=CalibrationSpec.mode, choices=MODES,
                   help="sequential: block i calibrates on the pruned blocks before it; one-pass: statistics of the dense model")
    p.add_argument("--hessian", action="store_true", help="also capture X X^T (reconstruction errors for every method)")


def key_values(items: list[str], where: str, key_type=str) -> dict:
    """Parse repeated KEY=VALUE options; values become int/float/bool when they look like one."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise WorkbenchError(where, f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            key = key_type(key)
        except ValueError:
            raise WorkbenchError(where, f"bad key {key!r} in {item!r}") from None
        out[key] = scalar(value)
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
    """The calibration spec of parsed calibration options."""
    return CalibrationSpec(source=args.calibration, samples=args.samples, seqlen=args.seqlen, seed=args.seed,
                           mode=args.mode, hessian=True if args.hessian else None)


def add_method_args(p: argparse.ArgumentParser) -> None:
    """--method, --method-param, --sparsity."""
    from workbench.methods import METHODS

    p.add_argument("--method", default=Plan.method, choices=METHODS.names())
    p.add_argument("--method-param", action="append", metavar="KEY=VALUE", help="e.g. scope=matrix for magnitude")
    p.add_argument("--sparsity", type=float, default=Plan.sparsity, help="global target in [0, 1)")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    """The method options, --allocator, --pattern, the manual overrides and the structure."""
    from workbench.allocators import ALLOCATORS

    add_method_args(p)
    p.add_argument("--allocator", default=Plan.allocator, choices=ALLOCATORS.names())
    p.add_argument("--allocator-param", action="append", metavar="KEY=VALUE", help="e.g. M=5 or lambda=0.08 for owl")
    p.add_argument("--pattern", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    p.add_argument("--block-sparsity", action="append", metavar="BLOCK=VALUE", help="manual block target, e.g. 3=0.6")
    p.add_argument("--linear-sparsity", action="append", metavar="NAME=VALUE", help="e.g. layers.3.mlp.down_proj=0.7")
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


def plan_of(args) -> Plan:
    """The plan of parsed plan options."""
    return Plan(
        method=args.method, method_params=key_values(args.method_param, "--method-param"),
        allocator=args.allocator, allocator_params=key_values(args.allocator_param, "--allocator-param"),
        sparsity=args.sparsity, pattern=args.pattern,
        block_overrides=key_values(args.block_sparsity, "--block-sparsity", int),
        linear_overrides=key_values(args.linear_sparsity, "--linear-sparsity"),
        structure=Structure(width_ratio=args.width_ratio, width_score=args.width_score, width_divisor=args.width_divisor,
                            width_overrides=key_values(args.width_block, "--width-block", int)),
    )


def resolve_drops(args, engine, plan: Plan, progress=None) -> Plan:
    """`plan` with the blocks `--drop-blocks/--drop-by` choose (scored on the dense model when by score)."""
    if not args.drop_blocks and args.drop_by in DROP_BY:
        return plan
    drops = engine.choose_drops(args.drop_blocks, args.drop_by, progress)
    problem = drop_problem(drops, asked=args.drop_blocks or None)
    if problem:
        raise WorkbenchError("--drop-blocks/--drop-by", problem)
    return dataclasses.replace(plan, structure=dataclasses.replace(plan.structure, drop_blocks=drops))
