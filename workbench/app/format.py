"""Number formatting, statistic columns and visual cues for the app. UI-free: it returns plain strings
and `Cell`s (text plus a tone name) that the widgets style with the theme."""

from __future__ import annotations

import statistics
import unicodedata
from dataclasses import dataclass
from typing import Iterable, Sequence

from workbench.agent.record import ACCEPTED, LABELS, NO_ACTION, ROLLED_BACK
from workbench.agent.record import DEFAULTS as AGENT_DEFAULTS

LEVELS = "▁▂▃▄▅▆▇█"
MAX_PERCENT = 99.0

# (heading, width): the statistic columns right of a slider; the extra ones show on wide terminals.
CORE_COLUMNS = (("achvd", 6), ("mean|W|", 7), ("outlier", 8), ("act", 6), ("recon", 7))
EXTRA_COLUMNS = (("std|W|", 7), ("max|W|", 7), ("kurt", 6), ("params", 7))


@dataclass(frozen=True)
class Cell:
    """One formatted column: `tone` is "" (plain), "dim", "warning" (outlier-heavy) or "error" (badly
    reconstructed)."""

    text: str
    tone: str = ""


_TONES = {"warning": "$warning", "error": "$error", "dim": "dim", "success": "$success"}


def cells_markup(cells: Sequence[Cell]) -> str:
    """Cells joined by spaces as Textual content markup, toned with theme variables."""
    return " ".join(f"[{_TONES[c.tone]}]{escape(c.text)}[/]" if c.tone else escape(c.text) for c in cells)


USAGE_BARS = "▁▂▃▄▅▆▇█"


def row_label(row, block) -> str:
    """The short name of a row of an expanded block (4 wide): a linear's (`linear_label`), "E32" for the
    group of a block's 32 routed experts, or an expert's number and a bar of the calibration tokens the
    router sent it, relative to the block's busiest expert ("17▅")."""
    if not hasattr(row, "tokens"):
        return linear_label(row)
    if row.expert is None:
        return f"E{len(block.experts)}"
    busiest = max((x.tokens or 0 for x in block.experts), default=0)
    bar = USAGE_BARS[round((len(USAGE_BARS) - 1) * (row.tokens or 0) / busiest)] if busiest else " "
    return f"{row.expert}{bar}"


def linear_label(linear) -> str:
    """A linear's short name in a pane (4 wide for up to 100 experts): its kind ("gate"), or an expert's
    number and the kind's initial ("12g", "12u", "12d"); "sg" for a shared expert's gate."""
    if linear.expert is not None:
        return f"{linear.expert}{linear.kind[0]}"
    if ".shared_expert." in linear.name:
        return f"s{linear.kind[0]}"
    return linear.kind


def escape(text: str) -> str:
    """Text shown literally in Textual markup."""
    return text.replace("[", "\\[")


def pct(value: float | None, digits: int = 1) -> str:
    """0.5 -> "50.0%"; None -> "-"."""
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def short(value: float | None) -> str:
    """A number in at most 5 characters: 0.718, 12.3, 512, 5e-05; None -> "-"."""
    if value is None:
        return "-"
    size = abs(value)
    if size == 0:
        return "0"
    if size >= 1e4 or size < 0.001:
        return f"{value:.0e}"
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def params(count: int) -> str:
    """134515008 -> "134.5M", 172032 -> "172.0K"."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit}"
    return str(count)


def level(value: float | None, top: float) -> str:
    """A one-cell bar for `value` relative to `top`: ▁ (small) to █ (the largest); blank for None."""
    if value is None:
        return " "
    if top <= 0:
        return LEVELS[0]
    index = round(min(max(value / top, 0.0), 1.0) * (len(LEVELS) - 1))
    return LEVELS[index]


def flag_threshold(values: Iterable[float | None]) -> float:
    """Values at or above mean + one standard deviation (and above zero) stand out."""
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return float("inf")
    return max(statistics.fmean(known) + statistics.pstdev(known), 1e-12)


@dataclass(frozen=True)
class Scale:
    """Reference values among siblings (all blocks, or one block's linears) for the cues."""

    outlier_top: float = 0.0
    outlier_flag: float = float("inf")
    recon_top: float = 0.0
    recon_flag: float = float("inf")

    @classmethod
    def of(cls, rows: Sequence) -> "Scale":
        """The scale of rows that have `outlier_ratio` and `recon_error` attributes."""
        outliers = [r.outlier_ratio for r in rows]
        recons = [r.recon_error for r in rows]
        return cls(
            outlier_top=max((v for v in outliers if v is not None), default=0.0),
            outlier_flag=flag_threshold(outliers),
            recon_top=max((v for v in recons if v is not None), default=0.0),
            recon_flag=flag_threshold(recons),
        )


def _tone(value: float | None, threshold: float, tone: str) -> str:
    if value is None:
        return "dim"
    return tone if value >= threshold else ""


def core_cells(row, scale: Scale) -> list[Cell]:
    """The always-visible statistics of a block or linear state: achieved, mean |W|, outlier ratio
    (with a bar), activation norm, reconstruction error (with a bar)."""
    outlier = "-" if row.outlier_ratio is None else f"{100 * row.outlier_ratio:.2f}%"
    return [
        Cell(f"{pct(row.achieved):>6}"),
        Cell(f"{row.w_mean_abs:>7.4f}"),
        Cell(f"{outlier:>6} {level(row.outlier_ratio, scale.outlier_top)}",
             _tone(row.outlier_ratio, scale.outlier_flag, "warning")),
        Cell(f"{short(row.act_norm):>6}", "" if row.act_norm is not None else "dim"),
        Cell(f"{short(row.recon_error):>5} {level(row.recon_error, scale.recon_top)}",
             _tone(row.recon_error, scale.recon_flag, "error")),
    ]


def extra_cells(row) -> list[Cell]:
    """The statistics shown on wide terminals: std and max of |W|, kurtosis, parameter count."""
    return [
        Cell(f"{short(row.w_std):>7}"),
        Cell(f"{short(row.w_max_abs):>7}"),
        Cell(f"{short(row.kurtosis):>6}"),
        Cell(f"{params(row.numel):>7}"),
    ]


def headings(columns: Sequence[tuple[str, int]]) -> str:
    """Column headings, right-aligned to the column widths and separated by one space."""
    return " ".join(f"{name:>{width}}" for name, width in columns)


def columns_width(columns: Sequence[tuple[str, int]]) -> int:
    """Characters taken by `columns` joined with single spaces."""
    return sum(width for _, width in columns) + len(columns) - 1


def parse_percent(text: str) -> float:
    """A typed sparsity in percent ("62.5" or "62.5%") as a fraction; ValueError with a short reason."""
    cleaned = text.strip().removesuffix("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"not a number: {text.strip()!r}") from None
    if not 0 <= value <= MAX_PERCENT:
        raise ValueError(f"must be between 0 and {MAX_PERCENT:g} percent")
    return round(value / 100, 6)


PROBE_LABELS = {"perplexity": "ppl", "arithmetic": "arith", "brackets": "brackets", "efficiency": "Mparams",
                "instructions": "instr", "reasoning": "reason"}


def probe_summary(result, dense) -> Cell:
    """"ppl 512.3 (+12)": a probe's score and its change against the dense model, compactly; KL with its
    top-1 agreement ("KL 0.79 top1 54%"); exact-match items lost and gained against dense ("-9/+1")."""
    if result.name == "kl":
        top1 = result.details.get("top1")
        return Cell(f"KL {short(result.score)}" + (f" top1 {top1:.0%}" if top1 is not None else ""))
    cell = against_dense(f"{PROBE_LABELS.get(result.name, result.name)} {short(result.score)}", result, dense)
    budgets = result.details.get("budgets")
    if budgets:  # reasoning: how long it thought at the largest budget
        cell = Cell(f"{cell.text} think {short(budgets[max(budgets, key=int)]['mean_tokens'])}", cell.tone)
    changed = result.details.get("flips")
    if changed and (changed["lost"] or changed["gained"]):
        return Cell(f"{cell.text} -{changed['lost']}/+{changed['gained']}", cell.tone)
    return cell


def against_dense(text: str, result, dense) -> Cell:
    """`text` followed by the change of `result` against `dense` (when known); the tone is "error" when
    it is worse than dense by more than its tolerance."""
    if dense is None:
        return Cell(text)
    change = result.score - dense.score
    worse = (change < 0) if result.higher_is_better else (change > 0)
    tone = "error" if worse and dense.differs(result) else ""
    return Cell(f"{text} ({change:+.2g})", tone)


def signed(value: float) -> str:
    """A change in at most 6 characters: +12.3, -0.051, +0."""
    return ("+" if value >= 0 else "") + short(value)


# ----- the Compare screen and the sensitivity column ----------------------------------------------------
WAITING = Cell("…", "dim")
NONE = Cell("-", "dim")


def comparison_labels(probes: Sequence[str]) -> list[str]:
    """The row labels of the Compare screen's table."""
    return ["method", "allocator", "target", *probes, "achieved", "non-zero", "prune"]


def dense_column(probes: Sequence[str], comparison) -> list[Cell]:
    """The dense reference's cells, row by row (see `comparison_labels`)."""
    dense = [comparison.dense_probe(name) if comparison else None for name in probes]
    return [NONE, NONE, Cell(pct(0.0)), *[Cell(short(d.score)) if d else NONE for d in dense], Cell(pct(0.0)),
            NONE, NONE]


def variant_column(plan, result, probes: Sequence[str], comparison, rows: dict | None = None) -> list[Cell]:
    """One variant's cells, row by row: its plan, then (once measured) each probe's score with its change
    against dense and that change's 95% interval (on a second line, see `score_cell`), ★ marking the best of the row (only where its intervals
    against the others exclude zero; = marks the variants tied at the top), then achieved sparsity, weights
    left and prune time. `rows`: `comparison.rows()` by probe, computed once for every column."""
    edited = "*" if plan.block_overrides or plan.linear_overrides else ""
    cells = [Cell(plan.method), Cell(plan.allocator + edited), Cell(pct(plan.sparsity) + (f" {plan.pattern}" if plan.pattern else ""))]
    if result is None:
        return cells + [WAITING] * (len(probes) + 3)
    rows = rows if rows is not None else {row.probe: row for row in comparison.rows()}
    for name in probes:
        row = rows.get(name)
        mark = "" if row is None else "★" if row.best == result.name else "=" if len(row.tied) > 1 and result.name in row.tied else ""
        interval = row.deltas.get(result.name) if row is not None else None
        cells.append(score_cell(result.probe(name), comparison.dense_probe(name), mark, interval))
    return cells + [Cell(pct(result.achieved)), Cell(params(result.params_nonzero)), Cell(f"{result.seconds:.1f}s")]


def score_cell(result, dense, mark: str = "", interval=None) -> Cell:
    """"★ 512.3 (+12)" over "[+8.000,+16.0]": a variant's score on one probe against dense, with the
    change's interval (when known) on a second line, so that a column stays narrow (at most 18
    characters: three variants fit 80 columns); ★ (and the "success" tone unless it is worse than dense)
    marks the best of its row."""
    if result is None:
        return NONE
    cell = against_dense((f"{mark} " if mark else "") + short(result.score), result, dense)
    if interval is not None:
        cell = Cell(f"{cell.text}\n[{signed(interval.low)},{signed(interval.high)}]", cell.tone)
    return Cell(cell.text, "success") if mark == "★" and not cell.tone else cell


def heat_cells(deltas: Sequence[float | None], higher_is_better: bool) -> list[Cell]:
    """The sensitivity column, per block: a bar for how much the probe gets worse when only that block is
    pruned harder, then the change itself; toned from "success" (cheap) through "warning" to "error" (the
    blocks where sparsity hurts most). Blocks not scanned are a dim dot."""
    costs = [None if d is None else (-d if higher_is_better else d) for d in deltas]
    top = max((c for c in costs if c is not None), default=0.0)
    cells = []
    for delta, cost in zip(deltas, costs):
        if cost is None:
            cells.append(Cell("·", "dim"))
            continue
        share = cost / top if top > 0 else 0.0
        tone = "success" if share < 1 / 3 else "warning" if share < 2 / 3 else "error"
        cells.append(Cell(f"{level(cost, top)} {signed(delta)}", tone))
    return cells


def influence_cells(scores: Sequence[float | None]) -> list[Cell]:
    """The influence column, per block: the LayerIF influence score (lower: a better-trained block, pruned
    less), right-aligned in 6 characters; a dim dash where it is unknown."""
    return [Cell(f"{short(s):>6}") if s is not None else Cell(f"{'-':>6}", "dim") for s in scores]


WIDTH_CELL = 9  # "2.4x 1383", "dropped"


def kept_text(count: int) -> str:
    """Neurons kept in at most 4 characters: 1383, 14k."""
    return str(count) if count < 10_000 else f"{count // 1000}k"


def width_cells(blocks: Sequence, structure, hidden: int) -> list[Cell]:
    """The width column, per block: the expansion ratio the plan asks for (the full one where it sets none)
    and the neurons the block keeps now, dim at full width; "dropped" for a block the plan drops."""
    cells = []
    for block in blocks:
        if block.index in structure.drop_blocks:
            cells.append(Cell(f"{'dropped':>{WIDTH_CELL}}", "dim"))
            continue
        ratio = structure.width_overrides.get(block.index, structure.width_ratio)
        kept = block.width or block.intermediate
        text = f"{ratio if ratio is not None else block.intermediate / hidden:.1f}x {kept_text(kept):>4}"
        cells.append(Cell(f"{text:>{WIDTH_CELL}}", "dim" if block.width is None else ""))
    return cells


def global_width_cell(structure) -> Cell:
    """The global row's width: its expansion ratio (or "full") and the neuron score."""
    ratio = "full" if structure.width_ratio is None else f"{structure.width_ratio:.1f}x"
    return Cell(f"{ratio + ' ' + structure.width_score:>{WIDTH_CELL}}")


def depth_cells(blocks: Sequence) -> list[Cell]:
    """The depth column, per block: block influence and the angular distance to the next block (of the dense
    model; low values mark blocks that change the hidden state least); dim dashes where unknown."""
    def number(value: float | None) -> str:
        return f"{short(value) if value is not None else '-':>5}"

    return [Cell(f"{number(b.block_influence)} {number(b.angular_distance)}",
                 "" if b.block_influence is not None else "dim") for b in blocks]


def structured(structure, blocks: Sequence) -> bool:
    """Whether the plan removes anything or the state shown has shrunk or dropped blocks (the width column
    and the width plot appear)."""
    return not structure.is_dense() or any(b.dropped or b.width is not None for b in blocks)


def block_widths(blocks: Sequence, hidden: int) -> list[float]:
    """Each block's expansion ratio as it runs (kept neurons / hidden size; 0 for a dropped block)."""
    return [0.0 if b.dropped else (b.width or b.intermediate) / hidden for b in blocks]


def symbol(name: str) -> str:
    """A parameter named after a Greek letter as that letter ("lambda" -> "λ", "alpha" -> "α"); any other
    name as it is."""
    if len(name) < 2 or not name.isalpha():
        return name
    try:  # Unicode spells lambda "LAMDA"
        return unicodedata.lookup(f"GREEK SMALL LETTER {name.upper().replace('LAMBDA', 'LAMDA')}")
    except KeyError:
        return name


def param_text(key: str, value) -> str | None:
    """One allocator parameter in a line of text: "M=5", "estimator=datainf", a list as its length
    ("12 steps"); None (nothing recorded yet) as nothing."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return f"{len(value)} {key}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{symbol(key)}={value:g}"
    return f"{symbol(key)}={value}"


def params_text(values: dict) -> str:
    """Allocator parameters in a line: lists first ("12 steps"), then the rest by name."""
    ordered = sorted(values.items(), key=lambda kv: (not isinstance(kv[1], (list, tuple)), kv[0]))
    return " ".join(text for k, v in ordered if (text := param_text(k, v)) is not None)


def structure_text(structure) -> str:
    """"width 2.4x ppm, 2 block widths, drop 1,3": the structure in a few words ("" when nothing is removed)."""
    parts = []
    if structure.width_ratio is not None or structure.width_overrides:
        width = f"width {structure.width_ratio:g}x" if structure.width_ratio is not None else "width"
        parts.append(f"{width} {structure.width_score}")
        if structure.width_overrides:
            count = len(structure.width_overrides)
            parts.append(f"{count} block width{'s' if count > 1 else ''}")
    if structure.drop_blocks:
        parts.append("drop " + ",".join(map(str, structure.drop_blocks)))
    return ", ".join(parts)


def plan_line(model: str, plan, session: str | None, dirty: bool, allocator_defaults: dict | None = None) -> str:
    """"tiny · wanda · owl M=5 λ=0.08 · unstructured · width 2.4x ppm · run.toml*": what is being pruned,
    and how (the allocator's parameters completed with its defaults, the structure when it removes anything)."""
    allocator = plan.allocator
    shown = params_text({**(allocator_defaults or {}), **plan.allocator_params})
    if shown:
        allocator += " " + shown
    parts = [model, plan.method, allocator, plan.pattern or "unstructured"]
    if not plan.structure.is_dense():
        parts.append(structure_text(plan.structure))
    if session:
        parts.append(session + ("*" if dirty else ""))
    elif dirty:
        parts.append("unsaved")
    return " · ".join(parts)


def sparsity_line(state, plan, note: str | None) -> list[Cell]:
    """Global target against achieved sparsity and the weights left; `note` says why the state shown is
    not (yet) the plan's, e.g. "re-pruning"."""
    cells = [Cell(f"target {pct(plan.sparsity)}")]
    if state is None:
        return cells + [Cell("· measuring the weights", "dim")]
    cells.append(Cell(f"achieved {pct(state.achieved)}", "warning" if note else ""))
    cells.append(Cell(f"· {params(state.params_nonzero)}/{params(state.params_total)} weights"))
    if note:
        cells.append(Cell(f"· {note}", "dim"))
    return cells


def probes_line(results: list, dense: dict, stale: bool) -> list[Cell]:
    """The latest probe results with their change against dense, or a hint to run them."""
    if not results:
        return [Cell("probes: none yet (t runs the quick probes)", "dim")]
    cells = [Cell("probes:")] + [probe_summary(r, dense.get(r.name)) for r in results]
    if stale:
        cells.append(Cell("(before the last edit)", "dim"))
    return cells


# ----- the Agent screen ---------------------------------------------------------------------------------
def agent_columns(measure: str) -> tuple[str, ...]:
    """The step log's column labels for a run measuring `measure` (perplexity or kl)."""
    label = LABELS[measure]
    return "step", "raised", "global", label, f"Δ{label}", "outcome", "time"

OUTCOME_TONES = {ACCEPTED: "success", ROLLED_BACK: "error", NO_ACTION: "dim"}


def agent_step_cells(record) -> list[Cell]:
    """One row of the step log (a `StepRecord`): step, the blocks raised and by how many points, the global
    target after the step, the measured value and its change over the checkpoint, the outcome, seconds."""
    raised = "-"
    if record.blocks:
        points = sorted({round(100 * by, 2) for by in record.by})
        raised = f"+{'/'.join(f'{p:g}' for p in points)} on {','.join(map(str, record.blocks))}"
    change = "-" if record.change is None else f"{record.change:+.1%}"
    return [Cell(str(record.index)), Cell(raised), Cell(pct(record.sparsity)), Cell(short(record.score)), Cell(change),
            Cell(record.outcome, OUTCOME_TONES.get(record.outcome, "")), Cell(f"{record.seconds:.1f}s")]


def agent_settings_line(form, target: float) -> str:
    """"Agent · builtin · target 60.0% · step 2.5 pts · max 40 steps · rollback 10%" (an LLM policy adds
    the model it asks)."""
    parts = ["Agent", form.policy, f"target {pct(target)}", f"step {100 * form.step:g} pts",
             f"max {form.max_steps} steps", f"rollback {pct(form.rollback, 0)}"]
    if form.measure != AGENT_DEFAULTS["measure"]:
        parts.append(f"measure {form.measure}")
    if form.asks_llm and form.model:
        parts.insert(2, form.model)
    return " · ".join(parts)


def agent_run_line(run, stepping: bool) -> list[Cell]:
    """How the run stands (an `AgentRun`, or None): steps taken, accepted and rolled back, the global target
    reached, and whether it runs, is paused or stopped (why, and the final measured value)."""
    if run is None:
        return [Cell("no run yet: r starts the agent, e edits the settings", "dim")]
    records = run.records
    accepted, rolled = (sum(r.outcome == outcome for r in records) for outcome in (ACCEPTED, ROLLED_BACK))
    cells = [Cell(f"{len(records)} steps: {accepted} accepted, {rolled} rolled back")]
    if records:
        cells.append(Cell(f"· global {pct(records[-1].sparsity)}"))
    if stepping:
        return cells + [Cell("· running", "warning")]
    if not run.done:
        return cells + [Cell("· paused (r resumes)", "warning")]
    final = f", {LABELS[run.settings.measure]} {short(run.final_score)}" if run.final_score is not None else ""
    return cells + [Cell(f"· stopped: {run.stop_reason}{final}", "dim")]
