"""Scale (issue #13): random models of published shapes, cost-curve sweeps, offload under a device memory
limit, accelerate's device map, and the CUDA / bfloat16 / 2:4 paths (the GPU tests skip without one)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench.cli.sweep import table
from workbench.domain.plan import CalibrationSpec, Plan
from workbench.engine.capture import dense_forward
from workbench.engine.facade import Engine
from workbench.infra.errors import WorkbenchError
from workbench.model.layout import blocks_of, find_linears
from workbench.model.loader import load_model, resolve_source, spread_blocks
from workbench.model.shapes import VocabFit, _meta_model, parse, random_weights_of
from workbench.probes import timing_only
from workbench.probes.efficiency import is_2to4

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
TINY = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True,
        "max_position_embeddings": 512}
CALIBRATION = CalibrationSpec(samples=4, seqlen=32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path


def write_config(directory, **changes) -> str:
    """A tiny config file under `directory`; its random spec."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    path.write_text(json.dumps({**TINY, **changes}))
    return f"random:{path}"


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, values, params", [
    ("llama-1b", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True), 1_235_814_400),
    ("llama-3b", dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True), 3_212_749_824),
    ("llama-8b", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False), 8_030_261_248),
    ("qwen3-8b", dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=False), 8_190_735_360),
    ("smollm2-360m", dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                          num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True), 361_821_120),
])
def test_shipped_shapes_are_the_published_configs(name, values, params):
    model = _meta_model(f"random:{name}", parse(f"random:{name}").config)  # meta device: no memory
    for key, value in values.items():
        assert getattr(model.config, key) == value, key
    assert _params(model) == params
    rope = model.config.rope_parameters
    if name.startswith("llama"):
        assert rope["rope_type"] == "llama3" and rope["rope_theta"] == 500000.0
        assert rope["factor"] == (32.0 if name != "llama-8b" else 8.0)
    elif name == "qwen3-8b":
        assert type(model).__name__ == "Qwen3ForCausalLM" and rope["rope_theta"] == 1000000


@pytest.mark.parametrize("name, cls, billions, blocks, experts", [
    ("qwen3-30b-a3b", "Qwen3MoeForCausalLM", 30.5, 48, 128),  # Qwen3-30B-A3B's card: 30.5B in total
    ("granitemoe-1b-a400m", "GraniteMoeForCausalLM", 1.3, 24, 32),  # Granite-3.0-1B-A400M's card: 1.3B
])
def test_shipped_mixture_of_experts_shapes_are_the_published_models(name, cls, billions, blocks, experts):
    """On the meta device (no memory): the class, the published total, and the layout the engine prunes:
    every block's attention linears and each routed expert's gate, up and down."""
    from workbench.model.experts import unfuse

    model = _meta_model(f"random:{name}", parse(f"random:{name}").config)
    assert type(model).__name__ == cls
    assert round(_params(model) / 1e9, 1) == billions
    unfuse(model)
    linears = find_linears(model)
    assert len(linears) == blocks and all(len(block) == 4 + 3 * experts for block in linears)


def test_random_weights_are_seeded_and_marked(cache):
    spec = write_config(cache / "tiny")
    first = load_model(spec, "cpu", "float32")
    again = load_model(spec, "cpu", "float32")
    other = load_model(spec + "@1", "cpu", "float32")
    half = load_model(spec, "cpu", "bfloat16")
    weight = lambda loaded: blocks_of(loaded.model)[1].mlp.up_proj.weight  # noqa: E731
    assert torch.equal(weight(first), weight(again))
    assert not torch.equal(weight(first), weight(other))
    assert torch.equal(weight(half), weight(first).to(torch.bfloat16))  # the float32 values, rounded
    assert weight(first).std().item() == pytest.approx(0.02, rel=0.05)  # the config's initializer_range
    assert random_weights_of(first.model) == f"{spec} (seed 0)"
    assert random_weights_of(other.model) == f"{spec} (seed 1)"
    # the embedded tokenizer (49152 ids) folded into the 512-id vocabulary
    assert isinstance(first.tokenizer, VocabFit)
    ids = first.tokenizer("Calibration text from the embedded tokenizer", add_special_tokens=False)["input_ids"]
    assert ids and max(ids) < 512
    assert first.tokenizer.eos_token_id < 512


def _drop_weight(directory, name: str) -> None:
    """Take one tensor out of a checkpoint's model.safetensors and re-write the cache manifest, as a
    checkpoint built under another transformers version looks: whole files, one name short."""
    from safetensors.torch import load_file, save_file

    from workbench.model.cache import MANIFEST, write_manifest

    tensors = load_file(directory / "model.safetensors")
    del tensors[name]
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    if (directory / MANIFEST).exists():
        write_manifest(directory)


def test_a_cached_checkpoint_that_lacks_a_weight_is_rebuilt_not_filled_at_random(cache, capsys):
    spec = write_config(cache / "tiny")
    first = load_model(spec, "cpu", "float32")
    directory = resolve_source(spec, None, torch.float32)
    _drop_weight(Path(directory), "model.layers.1.mlp.up_proj.weight")
    capsys.readouterr()
    again = load_model(spec, "cpu", "float32")
    assert "lacks 1 weights of LlamaForCausalLM (model.layers.1.mlp.up_proj.weight); rebuilding" in capsys.readouterr().err
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_a_checkpoint_that_lacks_a_weight_is_refused_in_one_line(tmp_path, tiny_model_dir):
    import shutil

    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir, directory)
    _drop_weight(directory, "model.layers.2.self_attn.k_proj.weight")
    with pytest.raises(WorkbenchError) as info:
        load_model(str(directory), "cpu", "float32")
    assert str(info.value) == (f"model {str(directory)!r}: the checkpoint lacks or misshapes 1 weights "
                               "(model.layers.2.self_attn.k_proj.weight), which would start at random")


def test_a_config_beside_a_tokenizer_uses_it(cache, tiny_model_dir):
    spec = f"random:{tiny_model_dir}/config.json"
    loaded = load_model(spec, "cpu", "float32")
    assert loaded.tokenizer.vocab_size == 512 and not isinstance(loaded.tokenizer, VocabFit)
    assert random_weights_of(loaded.model)


def test_quality_probes_refuse_random_weights(cache):
    spec = write_config(cache / "tiny")
    engine = Engine(load_model(spec, "cpu", "float32"), CALIBRATION)
    with pytest.raises(WorkbenchError, match="random weights, so quality scores mean nothing"):
        engine.probe(["perplexity", "efficiency"])
    assert engine.probe(["efficiency"])[0].score > 0
    with timing_only():  # what `workbench bench` does: every probe runs for its time
        assert engine.probe(["perplexity"])[0].score > 0
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "prune", "--model", spec, "--samples", "2",
                           "--seqlen", "32"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "has random weights" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("workbench: error: --probes: perplexity on random:")


def test_sweep_prints_a_table_json_exponents_and_a_picture(cache):
    small, large = write_config(cache / "small"), write_config(cache / "large", hidden_size=256, intermediate_size=512)
    picture = cache / "curves.svg"
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "--sizes", f"{small},{large}",
                           "--sweep-samples", "2,4", "--seqlen", "32", "--only", "forward,wanda", "--plot", str(picture),
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    result = json.loads(done.stdout)
    assert [(r["meta"]["params"] > 0, r["meta"]["calibration_tokens"]) for r in result["runs"]] == [(True, 64), (True, 128)] * 2
    for stage in ("forward", "wanda"):
        fit = result["exponents"][stage]
        assert set(fit) == {"time_vs_params", "time_vs_tokens", "peak_vs_params"}, stage
    text = table(result["runs"], result["exponents"])
    assert "t~params" in text and re.search(r"small [\d.]+M 64t", text) and re.search(r"large [\d.]+M 128t", text)
    assert picture.read_text().lstrip().startswith("<?xml")


def test_offload_keeps_a_model_over_the_device_limit_to_one_block(cache):
    spec = write_config(cache / "tiny")
    model = load_model(spec, "cpu", "float32").model
    total = sum(p.numel() * 4 for p in model.parameters())
    block = sum(p.numel() * 4 for p in blocks_of(model)[0].parameters())
    resident = total - len(blocks_of(model)) * block
    limit = resident + int(1.5 * block)  # the weights are 1.9x this limit
    assert total > 1.8 * limit
    with pytest.raises(WorkbenchError, match="over the limit .*use --offload"):
        load_model(spec, "cpu", "float32", device_limit=limit)
    loaded = load_model(spec, "cpu", "float32", offload=True, device_limit=limit)
    checkpoint = resolve_source(spec)
    with open("/proc/self/maps") as maps:
        assert f"{checkpoint}/model.safetensors" in maps.read()  # the weights stay memory-mapped from disk
    engine = Engine(loaded, CALIBRATION)
    engine.prune(Plan(method="wanda", sparsity=0.5))
    dense_forward(loaded.model, engine.calibration_ids(), loaded.device)
    engine.probe(["efficiency"])
    meter = loaded.device_weights
    assert meter.peak == resident + block and not meter.visiting  # one block at a time, all gone after
    tight = load_model(spec, "cpu", "float32", offload=True, device_limit=resident + block // 2)
    with pytest.raises(WorkbenchError, match="block 0's visit would hold"):
        dense_forward(tight.model, engine.calibration_ids(), tight.device)


def test_accelerate_device_map_places_whole_blocks_and_prunes_alike(cache):
    spec = write_config(cache / "tiny")
    meta = _meta_model(spec, parse(spec).config)
    block = sum(p.numel() * 4 for p in blocks_of(meta)[0].parameters())
    from accelerate import infer_auto_device_map

    two_gpus = infer_auto_device_map(meta, max_memory={0: 3 * block, 1: 3 * block}, no_split_module_classes=meta._no_split_modules)
    assert {two_gpus[f"model.layers.{i}"] for i in range(4)} == {0, 1}  # whole blocks, both devices
    plain, spread = load_model(spec, "cpu", "float32"), load_model(spec, "cpu", "float32")
    assert spread_blocks(spread.model, {"cpu": 1 << 34}) == {"": "cpu"}
    assert hasattr(spread.model, "_hf_hook")  # accelerate's hooks move each block's inputs
    digests = []
    for loaded in (plain, spread):
        engine = Engine(loaded, CALIBRATION)
        engine.prune(Plan(method="wanda", sparsity=0.5))
        digests.append(engine.weights_digest())
    assert digests[0] == digests[1]
    with pytest.raises(WorkbenchError, match="do not fit the GPUs"):
        spread_blocks(_meta_model(spec, parse(spec).config), {0: block})


def test_bfloat16_on_the_cpu_prunes_2to4_and_says_why_no_sparse_kernels(cache):
    spec = write_config(cache / "tiny")
    engine = Engine(load_model(spec, "cpu", "bfloat16"), CALIBRATION)
    engine.prune(Plan(method="wanda", sparsity=0.5, pattern="2:4"))
    weights = [ref.module.weight for ref in engine.refs.values()]
    assert {w.dtype for w in weights} == {torch.bfloat16} and all(is_2to4(w) for w in weights)
    details = engine.probe(["efficiency"])[0].details
    assert details["sparse_2to4"].startswith("not measured: 2:4 sparse kernels need a CUDA GPU")


@CUDA
def test_bench_runs_on_cuda_in_bfloat16(cache):
    spec = write_config(cache / "tiny")
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "bench", "--model", spec, "--device", "cuda",
                           "--dtype", "bfloat16", "--samples", "4", "--seqlen", "32", "--only", "wanda,efficiency",
                           "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    assert report["meta"]["device"] == "cuda:0" and report["meta"]["dtype"] == "bfloat16" and report["meta"]["gpu"]
    assert {row["stage"] for row in report["stages"]} == {"load-cached", "forward", "wanda", "efficiency"}


@CUDA
def test_offload_on_cuda_holds_one_block_on_the_gpu(cache):
    spec = write_config(cache / "tiny", hidden_size=256, intermediate_size=512)
    loaded = load_model(spec, "cuda", "bfloat16", offload=True)
    engine = Engine(loaded, CALIBRATION)
    torch.cuda.reset_peak_memory_stats()
    engine.prune(Plan(method="wanda", sparsity=0.5))
    meter = loaded.device_weights
    block = meter.peak - meter.resident
    ids = engine.calibration_ids()
    activations = 2 * ids.numel() * loaded.model.config.hidden_size * 2
    assert torch.cuda.max_memory_allocated() <= meter.resident + 2 * block + 4 * activations + (64 << 20)
    assert all(p.device.type == "cpu" for p in blocks_of(loaded.model).parameters())


@CUDA
def test_2to4_sparse_kernels_report_dense_and_sparse_speed(cache):
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("2:4 sparse kernels need compute capability 8.0+")
    spec = write_config(cache / "wide", hidden_size=512, intermediate_size=1024, num_attention_heads=8, num_key_value_heads=4)
    engine = Engine(load_model(spec, "cuda", "bfloat16"), CALIBRATION)
    engine.prune(Plan(method="wanda", sparsity=0.5, pattern="2:4"))
    sparse = engine.probe(["efficiency"])[0].details["sparse_2to4"]
    assert isinstance(sparse, dict), sparse
    assert sparse["sparse_tokens_per_second"] > 0 and sparse["dense_tokens_per_second"] > 0


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more CUDA GPUs")
def test_multi_gpu_device_map_prunes_block_by_block(cache):
    spec = write_config(cache / "tiny")
    loaded = load_model(spec, "multi", "bfloat16")
    assert loaded.device_map and all(isinstance(d, int) for d in loaded.device_map.values())
    engine = Engine(loaded, CALIBRATION)
    engine.prune(Plan(method="wanda", sparsity=0.5))
    assert engine.probe(["efficiency"])[0].score > 0


def test_2to4_swap_feeds_the_sparse_weights_a_matrix_and_puts_everything_back(cache, monkeypatch):
    """The sparse kernels take a matrix product only (a 3-D input made an H200 refuse with expand.default):
    inside the swap every block linear runs `linear_2d`, with the model's outputs unchanged; after it, the
    very weights and the class's own forward are back."""
    from workbench.probes import efficiency

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda w: w.clone())
    model, ids = load_model(write_config(cache / "tiny"), "cpu", "float32").model, torch.arange(24).view(2, 12)
    linears = [ref.module for block in find_linears(model) for ref in block]
    weights = [m.weight for m in linears]
    expected = model(ids).logits
    with efficiency.semi_structured_linears(model):
        assert all(vars(m)["forward"].func is efficiency.linear_2d for m in linears)
        inside = model(ids).logits
    assert torch.allclose(inside, expected, atol=1e-5)
    assert all(a is b for a, b in zip((m.weight for m in linears), weights))
    assert all("forward" not in vars(m) for m in linears)
    x = torch.randn(2, 3, linears[0].in_features)
    assert torch.allclose(efficiency.linear_2d(linears[0], x), linears[0](x))
