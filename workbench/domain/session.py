"""Sessions: everything needed to rebuild a pruning state, as TOML. Never imports textual.

Schema (version 3); every key but `version`, `[model]` and `[plan]` is optional:

    version = 3
    theme = "dark"                      # the app's theme
    [versions]                          # written for the record: workbench, torch, transformers
    [model]
    spec = "embedded"                   # embedded | hub id | local directory | .gguf file
    device = "auto"                     # auto | cpu | cuda:N
    dtype = "auto"                      # auto | float32 | bfloat16 | float16
    [calibration]
    source = "embedded"                 # embedded | hf:NAME[:CONFIG[:SPLIT]] | file.txt | file.jsonl
    samples = 32
    seqlen = 256
    seed = 0
    mode = "sequential"                 # sequential | one-pass
    hessian = "auto"                    # auto | true | false
    expert_fallback = "pooled"          # mixture of experts, written when not the default: statistics of
    expert_min_tokens = 8               #   an expert routed fewer tokens than this (pooled | magnitude)
    [plan]
    method = "wanda"                    # magnitude | wanda | sparsegpt
    allocator = "owl"                   # uniform | owl
    sparsity = 0.7                      # global target in [0, 1)
    pattern = ""                        # "" (unstructured) | "2:4" | "4:8"
    [plan.method_params]                # e.g. scope = "matrix" for magnitude
    [plan.allocator_params]             # e.g. M = 5.0, lambda = 0.08 for owl
    [plan.overrides.blocks]             # "3" = 0.6: manual block targets on top of the allocator
    [plan.overrides.linears]            # "layers.3.mlp.down_proj" = 0.7
    [calibrated_with]                   # the plan of the last full calibration-aware prune, same keys
                                        # as [plan]; absent = same as [plan]
    [[history]]                         # the edit history, oldest first (free-form tables)
    [[probes]]                          # probe results on the saved state (see workbench.probes):
    name = "arithmetic"                 #   name, score, metric, higher_is_better, items, seconds, size,
    score = 0.021                       #   tolerance, floor, relative, details (free-form)
    [probes.units.score]                # what the score is recomputed from (workbench.probes.Units),
    bits = "0100..."                    #   exact-match: one character per item, 1 right, 0 wrong; or
    # values = "3.52 2.98 ..."          #   per-unit values (chunk NLL sums), space-separated, exact repr
    # weights = "32.0 32.0 ..."         #   optional: per-unit weights (tokens per chunk)
    # link = "exp"                      #   mean (default) | exp; other keys under [probes.units] name
                                        #   other statistics (e.g. top1 of the kl probe)
    [[dense_probes]]                    # the same probes on the dense model, with their units
    [evaluations]                       # lm-evaluation-harness results: task -> metric -> value
    [masks]                             # the saved state's masks (see workbench.engine.masks)
    file = "NAME.masks.safetensors"     # optional: exact masks beside the session (prune --save-masks)
    sha256 = "..."                      # of that file
    [masks.linears]                     # "layers.3.mlp.down_proj" = "KEPT HASH SAMPLE" per linear:
                                        # kept weights, mask hash, sampled keep bits (base64)
    [comparison]                        # the features' tables (workbench.domain.sections), each read and
                                        # written by its feature's section.py: the last comparison, with
                                        # its units (workbench.studies.compare)
    [sensitivity]                       # the last sensitivity scan
    [influence]                         # LayerIF's raw per-block scores when computed: estimator, aggregate,
                                        # scope, train, val, seqlen, and [influence.scores] per aggregate
    [agent]                             # an agent run's step log (see workbench.agent.record.AgentLog)

Replay = load the model, `prune(calibrated_with)` (which captures the same statistics), then
`apply(plan)`: on the same machine the weights are a pure function of these, so the numbers come back
exactly. On another machine (CPU, BLAS kernels, GPU) the statistics differ in their last bits and a few
keep/drop decisions next to a threshold flip: replay then reports the agreement of the masks with the
recorded fingerprints, and `--check` accepts it within documented limits (see `workbench.domain.replaycheck`).
With a mask file the replayed weights are restored from it, bit for bit on any machine.

Versions 1 (no [masks]) and 2 (no units) are still read; a file from a newer version is refused naming the
version. Version 3 is built to grow without another bump: every table but [model] and [plan] is optional
and absent means "not used", so later features add optional sections (say [experts] for mixture-of-experts
plans, [recovery], [reasoning]), optional keys in [plan] and probe results, and statistics under
[probes.units]; a reader of 3 that predates a section refuses it as an unknown key naming it, and a change
that alters the meaning of an existing key is what needs version 4.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from workbench.domain.plan import DTYPES, EXPERT_FALLBACKS, MODES, CalibrationSpec, Plan, Structure, check_structure, plan_to_dict, structure_from_dict
from workbench.domain.sections import SECTIONS
from workbench.engine.facade import Engine
from workbench.engine.masks import MaskAgreement, MaskFingerprint, compare_fingerprints, exact_agreement, load_mask_file, mask_file_for
from workbench.infra.atomic import atomic_write_text
from workbench.infra.errors import WorkbenchError
from workbench.infra.tensorfile import beside, load_tensors, save_tensors
from workbench.probes import LINKS, ProbeResult, Units
from workbench.studies.compare import Comparison, VariantResult


VERSION = 3
READS = (1, 2, 3)
COMPARISON_VERSION = 2
COMPARISON_READS = (1, 2)
COMPARISON_KEYS = {"probes", "size", "dense_probes", "outlier_ratios", "variants", "heal"}


@dataclass
class MaskRecord:
    """The saved state's mask fingerprints, and the exact mask file beside the session when saved."""

    fingerprints: dict[str, MaskFingerprint]
    file: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict:
        data: dict[str, Any] = {}
        if self.file:
            data.update(file=self.file, sha256=self.sha256)
        data["linears"] = {name: f"{fp.kept} {fp.hash} {fp.sample}" for name, fp in self.fingerprints.items()}
        return data


@dataclass
class Session:
    """A saved pruning state."""

    model: str = "embedded"
    device: str = "auto"
    dtype: str = "auto"
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    plan: Plan = field(default_factory=Plan)
    calibrated_with: Plan | None = None
    history: list[dict] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    dense_probes: list[ProbeResult] = field(default_factory=list)
    evaluations: dict = field(default_factory=dict)
    theme: str = "dark"
    versions: dict = field(default_factory=dict)
    masks: MaskRecord | None = None
    sections: dict[str, Any] = field(default_factory=dict)  # the features' tables by name (workbench.domain.sections)
    influence: dict = field(default_factory=dict)  # LayerIF's raw per-block scores (InfluenceScores.to_dict)
    calibration_ids: CalibrationIds | None = None  # self-generated calibration: its token ids beside the session


@dataclass
class CalibrationIds:
    """Self-generated calibration windows as a session keeps them: the ids' digest (`selfgen.ids_digest`),
    and the file beside the session that holds them, which `save_session` writes from `ids` (a session
    read from a file holds no ids)."""

    digest: str
    file: str = ""
    sha256: str = ""
    ids: Any = None  # a torch.Tensor to write beside the session, or None

    def to_dict(self) -> dict:
        return {"digest": self.digest, **({"file": self.file, "sha256": self.sha256} if self.file else {})}


@dataclass
class ComparisonFile:
    """A comparison file: the model and calibration the variants were evaluated on, and the comparison."""

    model: str
    device: str
    dtype: str
    calibration: CalibrationSpec
    comparison: Comparison


# ----- writing ----------------------------------------------------------------------------------------
def current_versions() -> dict:
    """Versions of workbench, torch and transformers in this process."""
    import torch
    import transformers

    import workbench

    return {"workbench": workbench.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def header_to_dict(model: str, device: str, dtype: str, c: CalibrationSpec) -> dict:
    """The [model] and [calibration] tables of a session or a comparison."""
    return {
        "model": {"spec": model, "device": device, "dtype": dtype},
        "calibration": {
            "source": c.source, "samples": c.samples, "seqlen": c.seqlen, "seed": c.seed, "mode": c.mode,
            "hessian": "auto" if c.hessian is None else c.hessian,
            **({"expert_fallback": c.expert_fallback, "expert_min_tokens": c.expert_min_tokens}
               if (c.expert_fallback, c.expert_min_tokens) != (CalibrationSpec.expert_fallback, CalibrationSpec.expert_min_tokens) else {}),
        },
    }


def session_to_dict(session: Session) -> dict:
    """A session as TOML-ready data."""
    data: dict[str, Any] = {
        "version": VERSION,
        "theme": session.theme,
        "versions": session.versions or current_versions(),
        **header_to_dict(session.model, session.device, session.dtype, session.calibration),
        "plan": plan_to_dict(session.plan),
    }
    if session.calibrated_with is not None and session.calibrated_with != session.plan:
        data["calibrated_with"] = plan_to_dict(session.calibrated_with)
    if session.history:
        data["history"] = session.history
    if session.probes:
        data["probes"] = [probe_to_dict(p) for p in session.probes]
    if session.dense_probes:
        data["dense_probes"] = [probe_to_dict(p) for p in session.dense_probes]
    if session.evaluations:
        data["evaluations"] = session.evaluations
    if session.influence:
        data["influence"] = session.influence
    if session.masks is not None:
        data["masks"] = session.masks.to_dict()
    if session.calibration_ids is not None:
        data["calibration_ids"] = session.calibration_ids.to_dict()
    for name, value in session.sections.items():
        if value is not None:
            data[name] = SECTIONS.get(name, where="session section").write(value)
    return data


def units_to_dict(units: Units) -> dict:
    """One statistic's units, compactly: right/wrong items as a string of bits, other values (and weights)
    as space-separated exact reprs."""
    if units.weights is None and units.link == "mean" and all(v in (0.0, 1.0) for v in units.values):
        return {"bits": "".join("1" if v else "0" for v in units.values)}
    data = {"values": " ".join(repr(float(v)) for v in units.values), "link": units.link}
    if units.weights is not None:
        data["weights"] = " ".join(repr(float(w)) for w in units.weights)
    return data


def probe_to_dict(p: ProbeResult) -> dict:
    """A probe result as TOML-ready data, its units (when it has any) in the compact form of `units_to_dict`."""
    data = p.to_dict()
    data.pop("units", None)
    if p.units:
        data["units"] = {key: units_to_dict(u) for key, u in p.units.items()}
    return data


def comparison_to_dict(c: Comparison) -> dict:
    """A comparison as TOML-ready data (the [comparison] table of a session, the body of a comparison file)."""
    data: dict[str, Any] = {"probes": list(c.probes), "size": c.size, "dense_probes": [probe_to_dict(p) for p in c.dense]}
    if c.outlier_ratios is not None:
        data["outlier_ratios"] = list(c.outlier_ratios)
    if c.heal is not None:
        data["heal"] = dict(c.heal)
    data["variants"] = []
    for r in c.results:
        variant = {"name": r.name, "seconds": r.seconds, "prepare_seconds": r.prepare_seconds, "achieved": r.achieved, "params_nonzero": r.params_nonzero,
                   "block_targets": list(r.block_targets), "plan": plan_to_dict(r.plan), "probes": [probe_to_dict(p) for p in r.probes]}
        if r.session:
            variant["session"] = r.session
        if r.healed:
            variant["healed"] = True
        data["variants"].append(variant)
    return data


def save_comparison(path: str | os.PathLike, file: ComparisonFile) -> None:
    """Write a comparison file (schema in `workbench.studies.compare`), atomically."""
    data = {"version": COMPARISON_VERSION, "kind": "comparison", "versions": current_versions(),
            **header_to_dict(file.model, file.device, file.dtype, file.calibration), **comparison_to_dict(file.comparison)}
    atomic_write_text(path, tomli_w.dumps(data))


def save_session(session: Session, path: str | os.PathLike) -> None:
    """Write `session` as TOML, atomically (see workbench.infra.atomic); a failed write is one WorkbenchError
    naming the file, and the previous file stays as it was. Self-generated calibration ids the session holds
    are written beside it first (`NAME.calib.safetensors`)."""
    ids = session.calibration_ids
    if ids is not None and ids.ids is not None:
        from workbench.engine.selfgen import IDS_FORMAT

        file = beside(path, "calib")
        ids.sha256, ids.file = save_tensors(file, {"ids": ids.ids}, IDS_FORMAT), file.name
    atomic_write_text(path, tomli_w.dumps(session_to_dict(session)))


def session_from_engine(engine: Engine, history: list[dict] | None = None, probes: list[ProbeResult] | None = None,
                        theme: str = "dark", device: str = "auto", dtype: str = "auto") -> Session:
    """The session that replays to `engine`'s current state."""
    if engine.plan is None:
        raise WorkbenchError("session", "nothing to save: the model has not been pruned yet")
    influence = engine.signals.influence_scores()
    generated = engine.statistics.generated
    return Session(
        model=engine.loaded.spec, device=device, dtype=dtype, calibration=engine.calibration, plan=engine.plan,
        calibrated_with=engine.calibrated_with, history=list(history or []), probes=list(probes or []),
        dense_probes=list(engine.dense_probes.values()), theme=theme, versions=current_versions(),
        masks=MaskRecord(engine.mask_fingerprints()), influence=influence.to_dict() if influence else {},
        calibration_ids=CalibrationIds(generated.sha256, ids=generated.ids) if generated is not None else None,
    )


def attach_mask_file(session: Session, engine: Engine, session_path: str | os.PathLike) -> Path:
    """Write the engine's exact masks beside the session file and record the file in `session`."""
    path = mask_file_for(session_path)
    sha256 = engine.save_masks(path)
    session.masks = MaskRecord(engine.mask_fingerprints(), file=path.name, sha256=sha256)
    return path


# ----- reading ----------------------------------------------------------------------------------------
class Reader:
    """Typed access to a parsed TOML document (a session or a comparison); every error names the file and
    the key."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, key: str, reason: str) -> WorkbenchError:
        return WorkbenchError(f"{self.path}: {key}", reason)

    def get(self, table: dict, key: str, prefix: str, kind, default=..., required: bool = False):
        full = f"{prefix}{key}"
        if key not in table:
            if required or default is ...:
                raise self.fail(full, "missing")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(full, f"expected {'/'.join(k.__name__ for k in kinds)}, got bool")
        if not isinstance(value, kinds):
            raise self.fail(full, f"expected {'/'.join(k.__name__ for k in kinds)}, got {type(value).__name__}")
        return value

    def table(self, table: dict, key: str, prefix: str, required: bool = False) -> dict:
        return self.get(table, key, prefix, dict, default={}, required=required)

    def known(self, table: dict, prefix: str, keys: set[str]) -> None:
        extra = sorted(set(table) - keys)
        if extra:
            raise self.fail(f"{prefix}{extra[0]}", f"unknown key (known: {', '.join(sorted(keys))})")

    def fraction(self, value, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"expected a number, got {type(value).__name__}")
        if not 0 <= value < 1:
            raise self.fail(key, f"sparsity must be in [0, 1), got {value}")
        return float(value)

    def plan(self, data: dict, prefix: str) -> Plan:
        from workbench.allocators import ALLOCATORS
        from workbench.methods import METHODS, parse_pattern

        self.known(data, prefix, {"method", "allocator", "sparsity", "pattern", "method_params", "allocator_params", "overrides",
                                  "structure", "expert_span"})
        method = self.get(data, "method", prefix, str, required=True)
        allocator = self.get(data, "allocator", prefix, str, default="uniform")
        for key, name, registry in (("method", method, METHODS), ("allocator", allocator, ALLOCATORS)):
            if name not in registry.names():
                raise self.fail(f"{prefix}{key}", f"unknown {key} {name!r} (known: {', '.join(registry.names())})")
        pattern = self.get(data, "pattern", prefix, str, default="")
        try:
            parse_pattern(pattern)
        except WorkbenchError as exc:
            raise self.fail(f"{prefix}pattern", exc.what) from None
        method_params = self.table(data, "method_params", prefix)
        allocator_params = self.table(data, "allocator_params", prefix)
        try:
            METHODS.get(method).params(method_params, where="method_params")
            ALLOCATORS.get(allocator).params(allocator_params, where="allocator_params")
        except WorkbenchError as exc:
            raise self.fail(f"{prefix}{exc.where}", exc.what) from None
        overrides = self.table(data, "overrides", prefix)
        self.known(overrides, f"{prefix}overrides.", {"blocks", "linears"})
        blocks: dict[int, float] = {}
        for key, value in self.table(overrides, "blocks", f"{prefix}overrides.").items():
            full = f"{prefix}overrides.blocks.{key}"
            if not key.isdigit():
                raise self.fail(full, "block keys are block indices such as \"3\"")
            blocks[int(key)] = self.fraction(value, full)
        linears = {key: self.fraction(value, f"{prefix}overrides.linears.{key}")
                   for key, value in self.table(overrides, "linears", f"{prefix}overrides.").items()}
        return Plan(
            method=method, method_params=method_params, allocator=allocator, allocator_params=allocator_params,
            sparsity=self.fraction(self.get(data, "sparsity", prefix, (int, float), required=True), f"{prefix}sparsity"),
            pattern=pattern or None, block_overrides=blocks, linear_overrides=linears,
            structure=self.structure(self.table(data, "structure", prefix), f"{prefix}structure."),
            expert_span=self.fraction(self.get(data, "expert_span", prefix, (int, float), default=0.0), f"{prefix}expert_span"),
        )

    def structure(self, data: dict, prefix: str) -> Structure:
        """A plan's [structure] table (see `workbench.domain.plan.structure_to_dict`)."""
        self.known(data, prefix, {"width_ratio", "width_score", "width_divisor", "width_overrides", "drop_blocks", "drop_experts"})
        self.get(data, "width_ratio", prefix, (int, float), default=None)
        self.get(data, "width_score", prefix, str, default=None)
        self.get(data, "width_divisor", prefix, int, default=None)
        for key, value in self.table(data, "width_overrides", prefix).items():
            if not key.isdigit():
                raise self.fail(f"{prefix}width_overrides.{key}", "block keys are block indices such as \"3\"")
            self.get(data["width_overrides"], key, f"{prefix}width_overrides.", (int, float))
        for i, block in enumerate(self.get(data, "drop_blocks", prefix, list, default=[])):
            if isinstance(block, bool) or not isinstance(block, int):
                raise self.fail(f"{prefix}drop_blocks[{i}]", f"expected a block number, got {block!r}")
        for key, experts in self.table(data, "drop_experts", prefix).items():
            where = f"{prefix}drop_experts.{key}"
            if not key.isdigit() or not isinstance(experts, list) or any(
                    isinstance(e, bool) or not isinstance(e, int) for e in experts):
                raise self.fail(where, "expected a block number (\"3\") and a list of expert numbers")
        structure = structure_from_dict(data)
        try:
            check_structure(structure, where=prefix.rstrip("."))
        except WorkbenchError as exc:
            raise self.fail(exc.where, exc.what) from None
        return structure

    def header(self, data: dict) -> tuple[str, str, str, CalibrationSpec]:
        """The [model] and [calibration] tables: model spec, device, dtype and calibration spec."""
        r, d = self, CalibrationSpec
        model = r.table(data, "model", "", required=True)
        r.known(model, "model.", {"spec", "device", "dtype"})
        dtype = r.get(model, "dtype", "model.", str, default="auto")
        if dtype not in DTYPES:
            raise r.fail("model.dtype", f"unknown dtype {dtype!r}")
        cal = r.table(data, "calibration", "")
        r.known(cal, "calibration.", {"source", "samples", "seqlen", "seed", "mode", "hessian", "expert_fallback", "expert_min_tokens"})
        hessian = r.get(cal, "hessian", "calibration.", (str, bool), default="auto")
        if isinstance(hessian, str) and hessian != "auto":
            raise r.fail("calibration.hessian", f"expected auto, true or false, got {hessian!r}")
        mode = r.get(cal, "mode", "calibration.", str, default=d.mode)
        if mode not in MODES:
            raise r.fail("calibration.mode", f"unknown mode {mode!r} (use {', '.join(MODES)})")
        calibration = CalibrationSpec(
            source=r.get(cal, "source", "calibration.", str, default=d.source),
            samples=r.get(cal, "samples", "calibration.", int, default=d.samples),
            seqlen=r.get(cal, "seqlen", "calibration.", int, default=d.seqlen),
            seed=r.get(cal, "seed", "calibration.", int, default=d.seed),
            mode=mode,
            hessian=None if hessian == "auto" else hessian,
            expert_fallback=r.get(cal, "expert_fallback", "calibration.", str, default=d.expert_fallback),
            expert_min_tokens=r.get(cal, "expert_min_tokens", "calibration.", int, default=d.expert_min_tokens),
        )
        if calibration.samples < 1 or calibration.seqlen < 2:
            raise r.fail("calibration.samples", "samples must be >= 1 and seqlen >= 2")
        if calibration.expert_fallback not in EXPERT_FALLBACKS:
            raise r.fail("calibration.expert_fallback", f"unknown fallback {calibration.expert_fallback!r} "
                                                        f"(use {', '.join(EXPERT_FALLBACKS)})")
        if calibration.expert_min_tokens < 0:
            raise r.fail("calibration.expert_min_tokens", "expected a count >= 0")
        spec = r.get(model, "spec", "model.", str, required=True)
        return spec, r.get(model, "device", "model.", str, default="auto"), dtype, calibration

    def comparison(self, data: dict, prefix: str) -> Comparison:
        """A comparison table (see `comparison_to_dict`)."""
        self.known(data, prefix, COMPARISON_KEYS)
        probes = self.get(data, "probes", prefix, list, required=True)
        if not probes or not all(isinstance(p, str) for p in probes):
            raise self.fail(f"{prefix}probes", "expected a non-empty list of probe names")
        size = self.get(data, "size", prefix, str, default="quick")
        if size not in ("quick", "full"):
            raise self.fail(f"{prefix}size", f"expected quick or full, got {size!r}")
        ratios = self.get(data, "outlier_ratios", prefix, list, default=None)
        results = []
        for i, item in enumerate(self.get(data, "variants", prefix, list, required=True)):
            where = f"{prefix}variants[{i}]."
            if not isinstance(item, dict):
                raise self.fail(where[:-1], "expected a table")
            self.known(item, where, {"name", "session", "seconds", "prepare_seconds", "achieved", "params_nonzero", "block_targets", "plan", "probes", "healed"})
            results.append(VariantResult(
                name=self.get(item, "name", where, str, required=True),
                plan=self.plan(self.table(item, "plan", where, required=True), f"{where}plan."),
                probes=self.probes(item, "probes", where),
                block_targets=[float(t) for t in self.get(item, "block_targets", where, list, default=[])],
                achieved=float(self.get(item, "achieved", where, (int, float), default=0.0)),
                params_nonzero=self.get(item, "params_nonzero", where, int, default=0),
                seconds=float(self.get(item, "seconds", where, (int, float), default=0.0)),
                prepare_seconds=float(self.get(item, "prepare_seconds", where, (int, float), default=0.0)),
                session=self.get(item, "session", where, str, default=None),
                healed=self.get(item, "healed", where, bool, default=False),
            ))
        names = [r.name for r in results]
        if len(set(names)) != len(names):
            raise self.fail(f"{prefix}variants", "two variants have the same name")
        heal = self.table(data, "heal", prefix) or None
        if heal is not None:
            from workbench.recovery.spec import HealSpec

            heal = HealSpec.of(heal, f"{self.path}: {prefix}heal").to_dict()
        if any(r.healed for r in results) and heal is None:
            raise self.fail(f"{prefix}heal", "missing: the comparison has healed variants")
        return Comparison(probes=probes, size=size, dense=self.probes(data, "dense_probes", prefix), results=results,
                          outlier_ratios=[float(x) for x in ratios] if ratios is not None else None, heal=heal)

    def masks(self, data: dict) -> MaskRecord | None:
        if "masks" not in data:
            return None
        table = self.table(data, "masks", "")
        self.known(table, "masks.", {"file", "sha256", "linears"})
        fingerprints = {}
        for name, value in self.table(table, "linears", "masks.", required=True).items():
            parts = value.split(" ") if isinstance(value, str) else []
            if len(parts) != 3 or not parts[0].isdigit():
                raise self.fail(f"masks.linears.{name}", "expected \"KEPT HASH SAMPLE\"")
            fingerprints[name] = MaskFingerprint(int(parts[0]), parts[1], parts[2])
        file = self.get(table, "file", "masks.", str, default=None)
        sha256 = self.get(table, "sha256", "masks.", str, default=None)
        if file is not None and sha256 is None:
            raise self.fail("masks.sha256", "missing (needed with masks.file)")
        return MaskRecord(fingerprints, file, sha256)

    def calibration_ids(self, data: dict) -> CalibrationIds | None:
        if "calibration_ids" not in data:
            return None
        table = self.table(data, "calibration_ids", "")
        self.known(table, "calibration_ids.", {"digest", "file", "sha256"})
        file = self.get(table, "file", "calibration_ids.", str, default="")
        sha256 = self.get(table, "sha256", "calibration_ids.", str, default="")
        if bool(file) != bool(sha256):
            raise self.fail("calibration_ids.file", "file and sha256 go together")
        return CalibrationIds(self.get(table, "digest", "calibration_ids.", str, required=True), file, sha256)

    def probes(self, data: dict, key: str, prefix: str = "") -> list[ProbeResult]:
        out = []
        for i, item in enumerate(self.get(data, key, prefix, list, default=[])):
            where = f"{prefix}{key}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, "expected a table")
            missing = [f for f in ("name", "score", "tolerance") if f not in item]
            if missing:
                raise self.fail(f"{where}.{missing[0]}", "missing")
            for f in ("score", "tolerance"):
                self.get(item, f, f"{where}.", (int, float))
            defaults = {"metric": "", "higher_is_better": True, "items": 0, "seconds": 0.0, "size": "quick", "floor": 0.0}
            result = ProbeResult.from_dict({**defaults, **item, "units": {}})
            result.units = {key: self.units(u, f"{where}.units.{key}") for key, u in self.table(item, "units", f"{where}.").items()}
            out.append(result)
        return out

    def units(self, data, where: str) -> Units:
        """One statistic's units (see `units_to_dict`; version 2 files wrote lists of numbers)."""
        if not isinstance(data, dict):
            raise self.fail(where, "expected a table")
        self.known(data, f"{where}.", {"bits", "values", "weights", "link"})
        if ("bits" in data) == ("values" in data):
            raise self.fail(where, "expected bits or values")
        if "bits" in data:
            bits = self.get(data, "bits", f"{where}.", str)
            if not bits or set(bits) - {"0", "1"}:
                raise self.fail(f"{where}.bits", "expected a string of 0 and 1")
            return Units([float(b) for b in bits])
        link = self.get(data, "link", f"{where}.", str, default="mean")
        if link not in LINKS:
            raise self.fail(f"{where}.link", f"expected {' or '.join(LINKS)}, got {link!r}")
        values = self.numbers(data["values"], f"{where}.values")
        weights = self.numbers(data["weights"], f"{where}.weights") if "weights" in data else None
        if weights is not None and len(weights) != len(values):
            raise self.fail(f"{where}.weights", f"{len(weights)} weights for {len(values)} values")
        return Units(values, weights, link)

    def numbers(self, value, key: str) -> list[float]:
        """A non-empty list of numbers, or a string of them separated by spaces."""
        numbers = None
        if isinstance(value, str):
            try:
                numbers = [float(x) for x in value.split()]
            except ValueError:
                pass
        elif isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
            numbers = [float(x) for x in value]
        if not numbers:
            raise self.fail(key, "expected numbers separated by spaces")
        return numbers


def read_toml(path: Path, what: str) -> dict:
    """Parse a TOML file; a missing, unreadable or malformed file is one WorkbenchError naming it."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise WorkbenchError(str(path), f"{what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorkbenchError(str(path), f"invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkbenchError(str(path), f"cannot read: {exc}") from None


def load_session(path: str | os.PathLike) -> Session:
    """Read and validate a session file; any problem is one WorkbenchError naming file, key and reason."""
    path = Path(path)
    return _session(path, read_toml(path, "session file"))


def load_replayable(path: str | os.PathLike) -> Session | ComparisonFile:
    """What `workbench replay` re-runs: a comparison file (kind = "comparison") or else a session (validated
    as `load_session` does), read once; any problem is one WorkbenchError naming file, key and reason."""
    path = Path(path)
    data = read_toml(path, "session file")
    return _comparison(path, data) if data.get("kind") == "comparison" else _session(path, data)


def _session(path: Path, data: dict) -> Session:
    """A session from its parsed TOML."""
    r = Reader(path)
    version = r.get(data, "version", "", int, required=True)
    if version > VERSION:
        import workbench

        writer = data.get("versions", {}).get("workbench", "unknown") if isinstance(data.get("versions"), dict) else "unknown"
        raise r.fail("version", f"session version {version} was written by a newer workbench ({writer}); this "
                                f"workbench {workbench.__version__} reads versions up to {VERSION}: upgrade workbench")
    if version not in READS:
        raise r.fail("version", f"unsupported session version {version} (this workbench reads {', '.join(map(str, READS))})")
    r.known(data, "", {"version", "theme", "versions", "model", "calibration", "plan", "calibrated_with",
                       "history", "probes", "dense_probes", "evaluations", "masks", "influence", "calibration_ids",
                       *SECTIONS.names()})
    model, device, dtype, calibration = r.header(data)
    plan = r.plan(r.table(data, "plan", "", required=True), "plan.")
    calibrated_with = r.plan(data["calibrated_with"], "calibrated_with.") if "calibrated_with" in data else None
    history = r.get(data, "history", "", list, default=[])
    for i, item in enumerate(history):
        if not isinstance(item, dict):
            raise r.fail(f"history[{i}]", "expected a table")
    return Session(
        model=model, device=device, dtype=dtype, calibration=calibration, plan=plan, calibrated_with=calibrated_with, history=history,
        probes=r.probes(data, "probes"), dense_probes=r.probes(data, "dense_probes"),
        evaluations=r.table(data, "evaluations", ""), theme=r.get(data, "theme", "", str, default="dark"),
        versions=r.table(data, "versions", ""), masks=r.masks(data),
        sections={name: SECTIONS.get(name).read(r, r.table(data, name, ""), f"{name}.")
                  for name in SECTIONS.names() if name in data},
        influence=r.table(data, "influence", ""), calibration_ids=r.calibration_ids(data),
    )


def _comparison(path: Path, data: dict) -> ComparisonFile:
    """A comparison file from its parsed TOML."""
    r = Reader(path)
    version = r.get(data, "version", "", int, required=True)
    if version not in COMPARISON_READS:
        raise r.fail("version", f"unsupported comparison version {version} (this workbench reads "
                                f"{', '.join(map(str, COMPARISON_READS))})")
    if data.get("kind") != "comparison":
        raise r.fail("kind", "expected \"comparison\"")
    r.known(data, "", {"version", "kind", "versions", "model", "calibration"} | COMPARISON_KEYS)
    model, device, dtype, calibration = r.header(data)
    body = {k: v for k, v in data.items() if k in COMPARISON_KEYS}
    return ComparisonFile(model, device, dtype, calibration, r.comparison(body, ""))


def check_against_model(session: Session, engine: Engine, path: str | os.PathLike) -> None:
    """Refuse plans naming blocks or linears this model does not have (one line naming file and key)."""
    for prefix, plan in (("plan.", session.plan), ("calibrated_with.", session.calibrated_with)):
        if plan is None:
            continue
        try:
            engine.check_plan(plan)
        except WorkbenchError as exc:
            raise WorkbenchError(f"{path}: {prefix}{exc.where}", exc.what) from None


@dataclass
class Replayed:
    """A replayed session: the engine in the saved state, the agreement of its masks with the recorded
    fingerprints (None when the session has none), and, when a mask file restored the exact masks, the
    share of decisions that this machine's own recomputation had right before the restore."""

    engine: Engine
    masks: MaskAgreement | None
    restored: bool
    recomputed_agreement: float | None = None
    healed: str | None = None  # how the session's healing came back: "restored" from its file, or "retrained"
    calibration_ids: str | None = None  # self-generated calibration: "restored" from its file, or how regenerating went


def replay_engine(session: Session, progress=None, cancel=None, path: str | os.PathLike = "session",
                  device: str | None = None, dtype: str | None = None, use_mask_file: bool = True) -> Replayed:
    """Rebuild the saved state headlessly: load, full prune with `calibrated_with`, apply `plan`; then,
    when the session has a mask file (and `use_mask_file`), restore its exact masks."""
    stored = None
    if use_mask_file and session.masks is not None and session.masks.file:
        stored = load_mask_file(Path(path).parent / session.masks.file, session.masks.sha256)
    engine = Engine.load(session.model, device=device or session.device, dtype=dtype or session.dtype,
                         calibration=session.calibration, progress=progress)
    check_against_model(session, engine, path)
    ids = replay_calibration_ids(engine, session.calibration_ids, path, use_mask_file)
    engine.prune(session.calibrated_with or session.plan, progress=progress, cancel=cancel)
    engine.apply(session.plan, progress=progress, cancel=cancel)
    recomputed = None
    if stored is not None:
        recomputed = exact_agreement({n: m.keep for n, m in stored.items()}, engine.keep_masks())
        engine.restore_masks(stored, where=f"{path}: masks.file")
    agreement = None
    if session.masks is not None:
        numels = {name: ref.numel for name, ref in engine.refs.items()}
        agreement = compare_fingerprints(session.masks.fingerprints, engine.mask_fingerprints(), numels)
    healed = replay_healing(engine, session.sections.get("heal"), path, use_mask_file, progress, cancel)
    return Replayed(engine, agreement, stored is not None, recomputed, healed, ids)


def replay_calibration_ids(engine: Engine, record: CalibrationIds | None, path, use_file: bool) -> str | None:
    """Calibrate on the session's self-generated windows: read from the file beside it (checked against the
    recorded SHA-256 and digest), or generated again (no file, or `use_file` off) and compared."""
    if record is None:
        return None
    from workbench.engine.selfgen import Generated, ids_digest

    if use_file and record.file:
        where = f"{path}: calibration_ids.file"
        ids = load_tensors(Path(path).parent / record.file, record.sha256, where,
                           "replay --recompute generates them again")["ids"]
        if ids_digest(ids) != record.digest:
            raise WorkbenchError(where, "the token ids do not match the recorded digest")
        engine.statistics.use_generated(Generated(ids, record.digest, 0.0, cached=True))
        return "restored"
    engine.statistics.ids()
    same = engine.statistics.generated.sha256 == record.digest
    return "regenerated, identical" if same else "regenerated, different from the recorded ids (greedy generation on this machine)"


def replay_healing(engine: Engine, record, path, use_file: bool, progress, cancel) -> str | None:
    """Put the session's healing back: its trained tensors from the file beside it (checked against the
    recorded SHA-256 and digest), or trained again (no file, or `use_file` off)."""
    if record is None:
        return None
    from workbench.engine.healing import Saved
    from workbench.recovery.record import load_trained

    if use_file and record.file:
        where = f"{path}: heal.file"
        tensors = load_trained(Path(path).parent / record.file, record.sha256, where)
        healed = engine.heal(record.spec, saved=Saved(tensors, record.curve, where))
        if healed.digest != record.digest:
            raise WorkbenchError(where, "the restored tensors do not match the recorded digest")
        return "restored"
    engine.heal(record.spec, progress=progress, cancel=cancel)
    return "retrained"
