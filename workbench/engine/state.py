"""The read model: every block and linear as plain dataclasses, for the app, the CLI and sessions."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.domain.plan import Plan, weighted_mean
from workbench.engine.calibration import CalibrationCache
from workbench.engine.signals import BlockSignals
from workbench.engine.stats import activation_norm, pool_weight_summaries, relative_error
from workbench.engine.weights import WeightBank
from workbench.model.layout import LinearRef
from workbench.structured.shaper import Shaper


@dataclass
class WeightStatistics:
    """What a linear and a block report alike. |W| statistics are of the dense weight; `None` means
    not measured."""

    numel: int
    target: float
    achieved: float
    w_mean_abs: float
    w_std: float
    w_max_abs: float
    kurtosis: float
    outlier_ratio: float | None
    act_norm: float | None
    recon_error: float | None


@dataclass
class LinearState(WeightStatistics):
    """One linear as plain data."""

    name: str
    block: int
    kind: str
    shape: tuple[int, int]
    method: str | None
    act_norm_max: float | None
    expert: int | None = None  # the routed expert it belongs to (mixture of experts)


@dataclass
class ExpertState(WeightStatistics):
    """Several linears pooled as one row: a routed expert (gate, up, down; `expert` its number) or a block's
    routed experts together (`expert` None). `name` is the module (`layers.3.mlp.experts.17`), which a manual
    target may name; `tokens` are the calibration tokens the router sent it. Its outlier ratio is the share of
    its weights whose Wanda score exceeds M times their own linear's mean (weighted by size)."""

    name: str
    expert: int | None
    tokens: int | None
    dropped: bool


def pooled_state(name: str, parts: list[LinearState], summaries: list, expert: int | None, tokens: int | None,
                 dropped: bool) -> ExpertState:
    """One row for several linears' states (`summaries`: their |W| summaries, to pool the moments)."""
    numels = [x.numel for x in parts]
    pooled = pool_weight_summaries(summaries)
    ratios = [x.outlier_ratio for x in parts]
    acts = [x.act_norm for x in parts]
    return ExpertState(
        numel=sum(numels), target=weighted_mean((x.target for x in parts), numels),
        achieved=weighted_mean((x.achieved for x in parts), numels), w_mean_abs=pooled.mean_abs, w_std=pooled.std,
        w_max_abs=pooled.max_abs, kurtosis=pooled.kurtosis,
        outlier_ratio=weighted_mean(ratios, numels) if None not in ratios else None,
        act_norm=sum(acts) / len(acts) if None not in acts else None, recon_error=None,
        name=name, expert=expert, tokens=tokens, dropped=dropped)


def expert_states(states: list[LinearState], bank: WeightBank, tokens: list[int] | None,
                  dropped: list[int]) -> list[ExpertState]:
    """The routed experts of one block from its linears' states, in expert order (empty for a dense block)."""
    by_expert: dict[int, list[LinearState]] = {}
    for x in states:
        if x.expert is not None:
            by_expert.setdefault(x.expert, []).append(x)
    return [pooled_state(parts[0].name.rsplit(".", 1)[0], parts, [bank.summary(x.name) for x in parts], e,
                         tokens[position] if tokens else None, e in dropped)
            for position, (e, parts) in enumerate(sorted(by_expert.items()))]


def expert_group(states: list[LinearState], bank: WeightBank, tokens: list[int] | None,
                 dropped: list[int]) -> ExpertState | None:
    """A block's running routed experts pooled as one row (`layers.3.mlp.experts`), or None for a dense block."""
    parts = [x for x in states if x.expert is not None and x.expert not in dropped]
    if not parts:
        return None
    return pooled_state(parts[0].name.rsplit(".", 2)[0], parts, [bank.summary(x.name) for x in parts], None,
                        sum(tokens) if tokens else None, False)


@dataclass
class BlockState(WeightStatistics):
    """One block: pooled statistics of its seven linears, its influence score when computed (LayerIF), its
    structure (dropped from the forward pass; GLU neurons kept of `intermediate`, None at full width) and
    its depth scores when computed (block influence, angular distance to the next block)."""

    index: int
    linears: list[LinearState]
    influence: float | None = None
    dropped: bool = False
    width: int | None = None
    intermediate: int = 0
    block_influence: float | None = None
    angular_distance: float | None = None
    expert_tokens: list[int] | None = None  # calibration tokens the router sent each expert (MoE blocks, calibrated)
    dropped_experts: list[int] = field(default_factory=list)  # routed experts removed (original numbers)
    experts: list[ExpertState] = field(default_factory=list)  # its routed experts (MoE blocks)
    expert_group: ExpertState | None = None  # its running routed experts as one row (MoE blocks)


@dataclass
class EngineState:
    """Everything the app, the CLI and sessions show about the model."""

    model: str
    plan: Plan | None
    target: float
    achieved: float
    params_total: int
    params_nonzero: int
    calibrated: bool
    blocks: list[BlockState]


def _linear_state(ref: LinearRef, bank: WeightBank, cache: CalibrationCache, outlier_ratio: float | None) -> LinearState:
    s = bank.summary(ref.name)
    a = bank.assignment(ref.name)
    measured = cache.committed is not None and cache.committed[ref.block] is not None and ref.group in cache.committed[ref.block]
    act = activation_norm(cache.channel_norms(ref)) if measured else (None, None)
    recon = bank.reconstruction(ref.name)
    return LinearState(
        name=ref.name, block=ref.block, kind=ref.kind, shape=tuple(ref.module.weight.shape), numel=ref.numel,
        target=a.target if a else 0.0, achieved=bank.achieved(ref.name), method=a.method if a else None,
        w_mean_abs=s.mean_abs, w_std=s.std, w_max_abs=s.max_abs, kurtosis=s.kurtosis, outlier_ratio=outlier_ratio,
        act_norm=act[0], act_norm_max=act[1], recon_error=relative_error(*recon) if recon else None, expert=ref.expert,
    )


def expert_tokens(block: list[LinearRef], stats) -> list[int] | None:
    """Calibration tokens routed to each expert of a block, from its statistics (None: a dense block or none)."""
    experts = sorted({r.expert for r in block if r.expert is not None})
    if not experts or stats is None:
        return None
    return [stats[f"experts.{e}.gate"].tokens if f"experts.{e}.gate" in stats else 0 for e in experts]


def read_state(spec: str, plan: Plan | None, linears: list[list[LinearRef]], bank: WeightBank,
               cache: CalibrationCache, signals: BlockSignals, shaper: Shaper, M: float) -> EngineState:
    """A snapshot of every block and linear; outlier ratios (threshold `M`) from the committed statistics,
    influence scores as last read (when any were computed). `params_total` counts the model as loaded and
    `params_nonzero` what runs now, so structured removal counts as sparsity; a block's `achieved` is the
    share of zeros in its linears as they are (shrunk or not)."""
    calibrated = cache.committed is not None
    block_ratios, linear_ratios = signals.outlier_ratios(M) if calibrated else (None, {})
    influence = signals.influence_if_computed()
    depth = shaper.depth_statistics
    bi = depth.block_influence() if depth else None
    angular = depth.angular_distance(1) if depth else None
    blocks = []
    for i, block in enumerate(linears):
        states = [_linear_state(ref, bank, cache, linear_ratios.get(ref.name)) for ref in block]
        running = [x for x in states if shaper.experts.running(i, x.expert)]  # a block's figures leave dropped experts out
        tokens, dropped = expert_tokens(block, cache.committed[i] if calibrated else None), list(shaper.experts.dropped.get(i, ()))
        numels = [x.numel for x in running]
        pooled = pool_weight_summaries([bank.summary(r.name) for r in block])
        recons = [bank.reconstruction(r.name) for r in block]
        blocks.append(BlockState(
            index=i, numel=sum(numels),
            target=weighted_mean((x.target for x in running), numels),
            achieved=weighted_mean((x.achieved for x in running), numels),
            w_mean_abs=pooled.mean_abs, w_std=pooled.std, w_max_abs=pooled.max_abs, kurtosis=pooled.kurtosis,
            outlier_ratio=block_ratios[i] if block_ratios else None,
            act_norm=sum(x.act_norm for x in running) / len(running) if running[0].act_norm is not None else None,
            recon_error=relative_error(sum(r[0] for r in recons), sum(r[1] for r in recons)) if all(recons) else None,
            linears=states, influence=influence[i] if influence else None,
            dropped=i in shaper.depth.dropped, width=shaper.kept(i), intermediate=shaper.intermediate(i),
            block_influence=bi[i] if bi else None, angular_distance=angular[i] if angular and i < len(angular) else None,
            expert_tokens=tokens, dropped_experts=dropped, experts=expert_states(states, bank, tokens, dropped),
            expert_group=expert_group(states, bank, tokens, dropped),
        ))
    total = sum(bank.original(r.name).numel() for block in linears for r in block)
    nonzero = sum(round(x.numel * (1 - x.achieved)) for b in blocks if not b.dropped for x in b.linears
                  if x.expert is None or x.expert not in b.dropped_experts)
    return EngineState(
        model=spec, plan=plan,
        target=weighted_mean((b.target for b in blocks if not b.dropped), (b.numel for b in blocks if not b.dropped)),
        achieved=1 - nonzero / total, params_total=total, params_nonzero=nonzero, calibrated=calibrated, blocks=blocks,
    )
