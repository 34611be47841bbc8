"""Healing after pruning (issue #21): the three forms keep the cut, the held-out loss goes down, cancel
and errors leave the model as it was, a run resumes from its checkpoint, edits undo the healing, and a
session with healing replays it from the trained tensors beside it (checked by hash)."""

import json

import pytest
import torch

from tests.conftest import make_engine
from workbench.cli.main import main
from workbench.domain.plan import Plan, Structure
from workbench.domain.session import load_session
from workbench.engine.healing import Saved
from workbench.infra.errors import Cancelled, WorkbenchError
from workbench.recovery.spec import HealSpec

QUICK = dict(steps=12, batch=2, seqlen=32, lr=3e-3, heldout_every=4, heldout_windows=2)
TINY = ["--samples", "4", "--seqlen", "32"]
HEAL = ["--steps", "6", "--batch", "2", "--heal-seqlen", "32", "--lr", "0.003", "--heldout-every", "3",
        "--heldout-windows", "2"]


def spec(**changes) -> HealSpec:
    return HealSpec.of({**QUICK, **changes})


def zeros(engine) -> dict[str, torch.Tensor]:
    return {n: r.module.weight == 0 for n, r in engine.refs.items()}


def weights(engine) -> dict[str, torch.Tensor]:
    return {n: r.module.weight.detach().clone() for n, r in engine.refs.items()}


@pytest.mark.parametrize("form", ["masked", "adapter", "sparse"])
@pytest.mark.parametrize("plan", [
    Plan(method="wanda", sparsity=0.5),
    Plan(method="sparsegpt", sparsity=0.5, pattern="2:4"),
    Plan(method="magnitude", sparsity=0.3, structure=Structure(width_ratio=2.0, drop_blocks=[2])),
], ids=["unstructured", "2:4", "width+depth"])
def test_every_form_keeps_the_cut_and_lowers_the_heldout_loss(form, plan):
    engine = make_engine()
    engine.prune(plan)
    before, shapes = zeros(engine), {n: r.module.weight.shape for n, r in engine.refs.items()}
    healed = engine.heal(spec(form=form))
    after = zeros(engine)
    assert all(torch.equal(after[n] | ~before[n], torch.ones_like(before[n])) for n in before), "a pruned weight came back"
    assert {n: r.module.weight.shape for n, r in engine.refs.items()} == shapes
    if plan.pattern == "2:4":
        assert all((~after[n]).reshape(-1, 4).sum(-1).le(2).all() for n in after)
    assert healed.curve.heldout[-1] < healed.curve.heldout[0]
    assert len(healed.curve.loss) == QUICK["steps"] and healed.curve.heldout_steps == [0, 4, 8, 12]
    changed = engine.weights_digest() != make_digest(plan)
    assert changed == (form != "adapter")  # the adapter form leaves the sparse base as it was
    assert all(r.block != 2 for r in engine.healing.refs) if plan.structure.drop_blocks else True


def make_digest(plan) -> str:
    engine = make_engine()
    engine.prune(plan)
    return engine.weights_digest()


def test_healing_changes_the_probes_not_the_dense_reference_and_edits_undo_it():
    engine = make_engine()
    plan = Plan(method="wanda", sparsity=0.6)
    engine.prune(plan)
    pruned = engine.weights_digest()
    dense = engine.dense_reference(["perplexity"])[0].score
    before = engine.probe(["perplexity"])[0].score
    for form in ("masked", "adapter"):
        engine.heal(spec(form=form))
        assert engine.probe(["perplexity"])[0].score < before
        engine.dense_probes.clear()  # measured again, with the healing on the model
        assert engine.dense_reference(["perplexity"])[0].score == pytest.approx(dense, rel=1e-6)
        engine.apply(plan)
        assert engine.weights_digest() == pruned and engine.healing is None
        assert engine.probe(["perplexity"])[0].score == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("form", ["masked", "sparse"])
def test_cancel_mid_run_leaves_the_model_as_it_was(form):
    engine = make_engine()
    engine.prune(Plan(method="wanda", sparsity=0.5))
    digest = engine.weights_digest()
    calls = []
    with pytest.raises(Cancelled):
        engine.heal(spec(form=form), cancel=lambda: calls.append(1) or len(calls) > 5)
    assert engine.weights_digest() == digest and engine.healing is None
    assert not any(p.requires_grad for p in engine.loaded.model.parameters())
    assert all(type(m).__name__ != "MaskedLoraLinear" for m in engine.loaded.model.modules())


def test_resume_from_a_checkpoint_continues_where_it_stopped(tmp_path):
    """The resumed run sees the windows and optimizer state the uninterrupted one had; on one machine its
    tensors come out equal to the last bit (the same operations in the same order)."""
    plan, checkpoint = Plan(method="wanda", sparsity=0.5), tmp_path / "run.pt"
    whole = make_engine()
    whole.prune(plan)
    straight = whole.heal(spec())
    engine = make_engine()
    engine.prune(plan)
    calls = []
    with pytest.raises(Cancelled):
        engine.heal(spec(), cancel=lambda: calls.append(1) or len(calls) > 6, checkpoint=checkpoint)
    resumed = engine.heal(spec(), resume=checkpoint)
    assert resumed.curve.loss[:6] == straight.curve.loss[:6] and len(resumed.curve.loss) == QUICK["steps"]
    assert all(torch.equal(resumed.trained[n], straight.trained[n]) for n in straight.trained)
    with pytest.raises(WorkbenchError, match="another healing spec"):
        engine.heal(spec(steps=13), resume=checkpoint)


def test_a_dense_plan_heals_and_the_bad_inputs_are_one_line_each():
    engine = make_engine()
    engine.prune(Plan(method="wanda", sparsity=0.0))
    assert not any((r.module.weight == 0).any() for r in engine.refs.values())
    healed = engine.heal(spec(form="masked"))
    assert healed.curve.heldout[-1] < healed.curve.heldout[0] and engine.probe(["perplexity"])[0].score > 0
    digest = engine.weights_digest()
    for bad, message in [({"steps": 0}, "heal.steps"), ({"form": "qlora"}, "heal.form"),
                         ({"targets": "q,x"}, "heal.targets")]:
        with pytest.raises(WorkbenchError, match=message):
            HealSpec.of({**QUICK, **bad})
    with pytest.raises(WorkbenchError, match="heal.rank: 65 is larger than layers.0.self_attn.k_proj"):
        engine.heal(spec(rank=65))
    with pytest.raises(WorkbenchError, match="too short"):
        engine.heal(spec(seqlen=512, data=str(_short_text(engine))))
    assert engine.weights_digest() == digest and engine.healing is not None  # refused before undoing the last one


def test_cli_says_a_dense_plan_is_dense(tiny_model_dir, capsys):
    assert main(["heal", "--model", str(tiny_model_dir), *TINY, "--sparsity", "0", *HEAL, "--probes", ""]) == 0
    out = capsys.readouterr().out
    assert "a dense plan: nothing was pruned" in out and "held-out loss" in out


def _short_text(engine):
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "short.txt"
    path.write_text("\n\n".join(f"document {i}: a few words" for i in range(12)))
    return path


def test_restoring_saved_tensors_gives_the_same_model():
    plan = Plan(method="wanda", sparsity=0.5)
    for form in ("masked", "adapter", "sparse"):
        engine = make_engine()
        engine.prune(plan)
        healed = engine.heal(spec(form=form))
        digest, score = engine.weights_digest(), engine.probe(["perplexity"])[0].score
        other = make_engine()
        other.prune(plan)
        again = other.heal(spec(form=form), saved=Saved(healed.trained, healed.curve, "test"))
        assert again.digest == healed.digest and other.weights_digest() == digest
        assert other.probe(["perplexity"])[0].score == score


def test_cli_heal_saves_a_session_that_replays_the_healing_checked_by_hash(tiny_model_dir, tmp_path, capsys):
    session, export = tmp_path / "healed.toml", tmp_path / "out"
    assert main(["heal", "--model", str(tiny_model_dir), *TINY, "--sparsity", "0.5", *HEAL, "--form", "adapter",
                 "--save-session", str(session), "--export", str(export), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["heal"]["spec"]["form"] == "adapter" and not out["heal"]["dense_plan"]
    row = out["probes"][0]
    assert row["name"] == "perplexity" and row["interval"]["low"] <= row["change"] <= row["interval"]["high"]
    record = load_session(session).sections["heal"]
    assert record.file == "healed.heal.safetensors" and record.before[0].score == row["before"]
    assert (export / "adapter" / "adapter_config.json").is_file()
    assert main(["replay", str(session), "--check", "--json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["healed"] == "restored" and replay["ok"] and replay["weights_sha256"] == out["weights_sha256"]
    heal_file = tmp_path / record.file
    heal_file.write_bytes(heal_file.read_bytes()[:-8] + b"\0" * 8)
    assert main(["replay", str(session)]) == 2
    assert "heal.file" in capsys.readouterr().err


def test_exported_adapter_loads_with_peft_and_gives_the_healed_logits(tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.engine.facade import Engine
    from workbench.domain.plan import CalibrationSpec

    engine = Engine.load(str(tiny_model_dir), "cpu", "float32", CalibrationSpec(samples=4, seqlen=32))
    engine.prune(Plan(method="wanda", sparsity=0.5))
    engine.heal(spec(form="adapter"))
    ids = torch.arange(1, 33).view(1, 32)
    healed_logits = engine.loaded.model(ids).logits
    engine.export(tmp_path / "out")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert all(((p == 0).sum() > 0) for n, p in base.named_parameters() if n.endswith("mlp.down_proj.weight"))
    loaded = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
    assert torch.allclose(loaded(ids).logits, healed_logits, atol=1e-4)


def test_gradient_checkpointing_trains_the_same_run():
    """Checkpointing recomputes each block's forward pass in the backward pass: the same arithmetic, so the
    same losses (to float rounding of the recomputation) and the model is left as it was, not in training."""
    runs = []
    for checkpointing in ("off", "on"):
        engine = make_engine()
        engine.prune(Plan(method="wanda", sparsity=0.5))
        runs.append(engine.heal(spec(steps=4, checkpointing=checkpointing)).curve.loss)
        assert not engine.loaded.model.training and not getattr(engine.loaded.model, "is_activation_checkpointing", False)
    assert runs[1] == pytest.approx(runs[0], rel=1e-5)


def test_cli_compare_heals_each_variant_saves_and_replays_it(tiny_model_dir, tmp_path, capsys):
    args = ["compare", "--model", str(tiny_model_dir), *TINY, "--allocators", "uniform", "--sparsity", "0.6",
            "--probes", "perplexity", "--heal", "6"]
    assert main([*args, "--save", str(tmp_path / "cmp"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [v["name"] for v in data["variants"]] == ["uniform", "uniform+heal"]
    pair = data["intervals"]["rows"]["perplexity"]["pairwise"][0]
    assert (pair["a"], pair["b"]) == ("uniform", "uniform+heal") and pair["low"] <= pair["delta"] <= pair["high"]
    healed = load_session(tmp_path / "cmp" / "uniform-heal.toml").sections["heal"]
    assert healed.spec.steps == 6 and (tmp_path / "cmp" / healed.file).is_file()
    assert main(["replay", str(tmp_path / "cmp" / "comparison.toml"), "--check"]) == 0
    assert "DIFFERS" not in capsys.readouterr().out
    assert main(["replay", str(tmp_path / "cmp" / "uniform-heal.toml"), "--check", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["healed"] == "restored" and report["ok"]


def test_sparse_form_on_bfloat16_steps_float32_master_copies():
    """On a bfloat16 model, AdamW's small steps accumulate in float32 copies of the kept weights (a step of
    1e-6 is far below bfloat16's spacing at these weights and would round away); the weights are those
    copies rounded, with the cut kept."""
    from tests.tiny import tiny_llama
    from workbench.domain.plan import CalibrationSpec
    from workbench.engine.facade import Engine

    model, tokenizer = tiny_llama(seed=0)
    engine = Engine.from_model(model.to(torch.bfloat16), tokenizer, CalibrationSpec(samples=4, seqlen=32), spec="tiny")
    engine.prune(Plan(method="wanda", sparsity=0.5))
    before, pruned = weights(engine), zeros(engine)
    healed = engine.heal(spec(form="sparse", lr=1e-6, steps=6, heldout_every=6))
    for name, master in healed.trained.items():
        weight = engine.refs[name].module.weight
        assert master.dtype == torch.float32 and weight.dtype == torch.bfloat16
        assert torch.equal(weight, master.to(weight.device, torch.bfloat16))  # the weight is its copy, rounded
        assert torch.equal(weight == 0, pruned[name] | (weight == 0)) and (weight[pruned[name]] == 0).all()
        kept = ~pruned[name]
        moved = (master[kept] != before[name][kept].float()).float().mean().item()
        assert moved > 0.9, f"{name}: only {moved:.0%} of the kept weights moved in float32"


def test_a_failed_session_write_keeps_the_previous_heal_file(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """The heal file a session write replaced is put back when the session itself cannot be written."""
    import workbench.domain.session as sessions

    session, heal_file = tmp_path / "s.toml", tmp_path / "s.heal.safetensors"
    session.write_text("previous = true\n")
    heal_file.write_bytes(b"previous tensors")

    def full_disk(session_, path):
        raise WorkbenchError(str(path), "cannot write: no space left on device; the previous file is unchanged")

    monkeypatch.setattr(sessions, "save_session", full_disk)
    code = main(["heal", "--model", str(tiny_model_dir), "--sparsity", "0.5", *TINY, *HEAL, "--probes", "",
                 "--save-session", str(session)])
    assert code == 2 and "no space left on device" in capsys.readouterr().err
    assert heal_file.read_bytes() == b"previous tensors" and session.read_text() == "previous = true\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.heal.safetensors", "s.toml"]


@pytest.mark.parametrize("form", ["masked", "sparse"])
def test_mixture_of_experts_heals_its_running_experts_and_exports_them_fused(form, tmp_path):
    """Routed experts (one linear each, unfused) and Qwen2-MoE's shared expert train like any linear; a
    dropped expert does not; the cut is kept; the export fuses the healed experts back."""
    from transformers import AutoModelForCausalLM

    from tests.test_moe import SavedTokenizer, engine_of

    engine = engine_of("qwen2_moe")
    engine.loaded.tokenizer = SavedTokenizer()
    plan = Plan(method="wanda", sparsity=0.5, structure=Structure(drop_experts={0: [1, 2], 1: [0, 3], 2: [4, 5]}))
    engine.prune(plan)  # (an export needs the same number of experts in every block)
    before, pruned = zeros(engine), engine.weights_digest()
    healed = engine.heal(spec(form=form))
    trained = {r.name for r in engine.healing.refs}
    assert not any(n.startswith(("layers.0.mlp.experts.1.", "layers.0.mlp.experts.2.")) for n in trained)
    assert sum(".experts." in n for n in trained) == 3 * 3 * 6 and sum(".shared_expert." in n for n in trained) == 9
    after = zeros(engine)
    assert all(torch.equal(after[n] | ~before[n], torch.ones_like(before[n])) for n in before), "a pruned weight came back"
    assert all(not torch.equal(engine.refs[n].module.weight, engine.healing._before[n]) for n in trained)
    assert healed.curve.heldout[-1] < healed.curve.heldout[0]
    ids = torch.tensor([[5, 17, 99, 3, 250, 7]])
    with torch.no_grad():
        ours = engine.loaded.model(ids).logits
    engine.export(tmp_path / "out")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, ours, rtol=1e-5, atol=1e-5)  # fused vs per-expert sums: test_moe.REL
    engine.apply(plan)
    assert engine.weights_digest() == pruned


def test_mixture_of_experts_refuses_an_adapter_on_its_mlp_linears():
    from tests.test_moe import engine_of

    engine = engine_of("qwen3_moe")
    engine.prune(Plan(method="wanda", sparsity=0.5))
    digest = engine.weights_digest()
    with pytest.raises(WorkbenchError, match=r"heal.form: the adapter form cannot train the MLP linears \(down,gate,up\)"):
        engine.heal(spec(form="adapter"))
    assert engine.weights_digest() == digest
    engine.heal(spec(form="adapter", targets="q,k,v,o", steps=2))
    assert engine.healing is not None


@pytest.mark.parametrize("masked", [True, False])
def test_masked_lora_product_gives_autograds_gradients(masked):
    """The masked layer's own backward pass equals autograd through x (W + (B A) * s * keep)^T + bias, in float64."""
    from workbench.recovery.lora import MaskedLoraProduct

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 12, dtype=torch.float64, generator=g, requires_grad=True)
    A = torch.randn(3, 12, dtype=torch.float64, generator=g, requires_grad=True)
    B = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    weight, bias = torch.randn(7, 12, dtype=torch.float64, generator=g), torch.randn(7, dtype=torch.float64, generator=g)
    keep = torch.rand(7, 12, generator=g) > 0.5 if masked else None
    weight = weight * keep if masked else weight
    out = MaskedLoraProduct.apply(x, A, B, weight, bias, keep, 1.5)
    delta = (B @ A) * 1.5 * (keep if masked else 1)
    reference = torch.nn.functional.linear(x, weight + delta, bias)
    assert torch.allclose(out, reference, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(out.shape, dtype=torch.float64, generator=g)
    ours = torch.autograd.grad(out, (x, A, B), upstream)
    theirs = torch.autograd.grad(reference, (x, A, B), upstream)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda x, A, B: MaskedLoraProduct.apply(x, A, B, weight, bias, keep, 1.5),
                                    (x, A, B))
