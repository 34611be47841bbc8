"""Self-generated calibration (`--calibration self[:N][:reasoning]`): the source's parsing and errors,
seeded batched generation against one window at a time, the disk cache, no evaluation item in the
prompts or the windows, and a session that keeps its ids beside it and replays from them."""

import json

import pytest
import torch

from tests.tiny import tiny_llama
from workbench.cli.main import main
from workbench.domain.plan import CalibrationSpec, SelfSource
from workbench.engine import selfgen
from workbench.engine.selfgen import generate, ids_digest, prompts, self_generated
from workbench.infra.errors import WorkbenchError
from workbench.model.loader import Loaded
from workbench.probes.reasoning.problems import PER_LEVEL, evaluation_problems

CPU = torch.device("cpu")
TINY = ["--samples", "4", "--seqlen", "32"]


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(seed=0)


def test_sources():
    assert SelfSource.parse("embedded", 32) is None and CalibrationSpec().generated is None
    assert SelfSource.parse("self", 32) == SelfSource(32, False)
    assert SelfSource.parse("self:64:reasoning", 32) == SelfSource(64, True)
    assert SelfSource.parse("self:reasoning", 8) == SelfSource(8, True)
    assert CalibrationSpec(source="self:40").text == "embedded" and CalibrationSpec(source="x.txt").text == "x.txt"
    for source, message in [("self:0", "self:0: at least one window"), ("self:8", "self:8 generates 8 windows, fewer than the 32"),
                            ("self:x", "expected self, self:N"), ("self:4:4", "expected self, self:N")]:
        with pytest.raises(WorkbenchError, match=message):
            SelfSource.parse(source, 32)


def test_generation_is_seeded_and_batched_like_one_at_a_time(tiny, monkeypatch):
    model, tokenizer = tiny
    batched = generate(model, tokenizer, CPU, 3, 96, seed=0, reasoning=False)
    assert batched.shape == (3, 96)
    assert torch.equal(batched, generate(model, tokenizer, CPU, 3, 96, seed=0, reasoning=False))
    assert not torch.equal(batched, generate(model, tokenizer, CPU, 3, 96, seed=1, reasoning=False))
    monkeypatch.setattr(selfgen, "BATCH", 1)
    assert torch.equal(batched, generate(model, tokenizer, CPU, 3, 96, seed=0, reasoning=False))


def test_next_prompt_follows_the_end_of_a_turn(tiny):
    """A window holds several turns: after the model's end of turn the next seeded prompt is written."""
    model, tokenizer = tiny

    class Ends(torch.nn.Module):  # the tiny model, whose every reply ends at once
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *args, cache=None, **kwargs):
            out = self.inner(*args, cache=cache, **kwargs)
            out.logits[..., tokenizer.eos_token_id] = 1e9
            return out

    ids = generate(Ends(), tokenizer, CPU, 1, 200, seed=0, reasoning=False)[0].tolist()
    stream = prompts(0, 0, False, tokenizer)
    first, second = tokenizer.encode(next(stream)), tokenizer.encode(next(stream))
    assert ids[: len(first) + 1] == first + [tokenizer.eos_token_id]
    assert ids[len(first) + 1 : len(first) + 1 + len(second)] == second[: 200 - len(first) - 1]


def test_no_evaluation_item_reaches_calibration(tiny):
    model, tokenizer = tiny
    held = {p.question for size in PER_LEVEL for p in evaluation_problems("standard", size, 0)}
    for window in range(8):
        stream = prompts(window, 0, True, tokenizer)
        asked = [next(stream) for _ in range(50)]
        assert not any(q in text for q in held for text in asked)
        assert any("How many" in text or "What is" in text for text in asked)  # training-side problems are there
    text = tokenizer.decode(generate(model, tokenizer, CPU, 4, 256, seed=0, reasoning=True).reshape(-1).tolist())
    assert not any(q in text for q in held)


def test_cached_once(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    model, tokenizer = tiny
    loaded = Loaded(model=model, tokenizer=tokenizer, spec="tiny", device=CPU, dtype=torch.float32, offload=False)
    spec = CalibrationSpec(source="self:3", samples=2, seqlen=16)
    first = self_generated(loaded, spec)
    again = self_generated(loaded, spec)
    assert not first.cached and again.cached and torch.equal(first.ids, again.ids) and again.sha256 == ids_digest(first.ids)
    assert first.ids.shape == (3, 16)


def test_session_keeps_its_ids_and_replays_from_them(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    session = tmp_path / "s.toml"
    assert main(["prune", "--model", str(tiny_model_dir), "--sparsity", "0.5", *TINY, "--calibration", "self:6",
                 "--save-session", str(session), "--json"]) == 0
    pruned = json.loads(capsys.readouterr().out)
    ids_file = tmp_path / "s.calib.safetensors"
    assert ids_file.is_file() and "[calibration_ids]" in session.read_text()
    assert main(["replay", str(session), "--json"]) == 0
    replayed = json.loads(capsys.readouterr().out)
    assert replayed["calibration_ids"] == "restored" and replayed["weights_sha256"] == pruned["weights_sha256"]
    assert main(["replay", str(session), "--recompute", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration_ids"] == "regenerated, identical"
    data = ids_file.read_bytes()
    ids_file.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert main(["replay", str(session)]) != 0
    assert "calibration_ids.file" in capsys.readouterr().err
