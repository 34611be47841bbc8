"""The read model: every block and linear as plain dataclasses, for the app, the CLI and sessions."""

from __future__ import annotations

from dataclasses import dataclass

from workbench.calibration import CalibrationCache
from workbench.model import LinearRef
from workbench.plan import Plan, weighted_mean
from workbench.signals import BlockSignals
from workbench.stats import activation_norm, pool_weight_summaries, relative_error
from workbench.weights import WeightBank


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


@dataclass
class BlockState(WeightStatistics):
    """One block: pooled statistics of its seven linears."""

    index: int
    linears: list[LinearState]


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
    act = activation_norm(cache.channel_norms(ref)) if cache.committed else (None, None)
    recon = bank.reconstruction(ref.name)
    return LinearState(
        name=ref.name, block=ref.block, kind=ref.kind, shape=tuple(ref.module.weight.shape), numel=ref.numel,
        target=a.target if a else 0.0, achieved=bank.achieved(ref.name), method=a.method if a else None,
        w_mean_abs=s.mean_abs, w_std=s.std, w_max_abs=s.max_abs, kurtosis=s.kurtosis, outlier_ratio=outlier_ratio,
        act_norm=act[0], act_norm_max=act[1], recon_error=relative_error(*recon) if recon else None,
    )


def read_state(spec: str, plan: Plan | None, linears: list[list[LinearRef]], bank: WeightBank,
               cache: CalibrationCache, signals: BlockSignals, M: float) -> EngineState:
    """A snapshot of every block and linear; outlier ratios (threshold `M`) from the committed statistics."""
    calibrated = cache.committed is not None
    block_ratios, linear_ratios = signals.outlier_ratios(M) if calibrated else (None, {})
    blocks = []
    for i, block in enumerate(linears):
        states = [_linear_state(ref, bank, cache, linear_ratios.get(ref.name)) for ref in block]
        numels = [x.numel for x in states]
        pooled = pool_weight_summaries([bank.summary(r.name) for r in block])
        recons = [bank.reconstruction(r.name) for r in block]
        blocks.append(BlockState(
            index=i, numel=sum(numels),
            target=weighted_mean((x.target for x in states), numels),
            achieved=weighted_mean((x.achieved for x in states), numels),
            w_mean_abs=pooled.mean_abs, w_std=pooled.std, w_max_abs=pooled.max_abs, kurtosis=pooled.kurtosis,
            outlier_ratio=block_ratios[i] if block_ratios else None,
            act_norm=sum(x.act_norm for x in states) / len(states) if calibrated else None,
            recon_error=relative_error(sum(r[0] for r in recons), sum(r[1] for r in recons)) if all(recons) else None,
            linears=states,
        ))
    total = sum(b.numel for b in blocks)
    nonzero = sum(round(x.numel * (1 - x.achieved)) for b in blocks for x in b.linears)
    return EngineState(
        model=spec, plan=plan, target=weighted_mean((b.target for b in blocks), (b.numel for b in blocks)),
        achieved=1 - nonzero / total, params_total=total, params_nonzero=nonzero, calibrated=calibrated, blocks=blocks,
    )
