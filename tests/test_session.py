"""Session TOML: round trip, atomic writes, and every kind of invalid file refused with one line."""

import os
from pathlib import Path

import pytest

from tests.conftest import make_engine
from workbench.domain.plan import CalibrationSpec, Plan
from workbench.domain.session import Session, check_against_model, load_session, save_session, session_to_dict
from workbench.infra.errors import WorkbenchError
from workbench.probes import ProbeResult, Units

GOOD = """\
version = 1
[model]
spec = "embedded"
[plan]
method = "wanda"
allocator = "owl"
sparsity = 0.7
[plan.allocator_params]
M = 5.0
lambda = 0.1
[plan.overrides.blocks]
"2" = 0.5
"""


def _session() -> Session:
    plan = Plan(method="sparsegpt", allocator="owl", allocator_params={"M": 4.0, "lambda": 0.05}, sparsity=0.6,
                block_overrides={1: 0.3}, linear_overrides={"layers.0.mlp.down_proj": 0.8})
    probe = ProbeResult("perplexity", 21.5, "ppl", False, 8, 1.2, "quick", 0.05, 0.0, {"tokens": 2040})
    return Session(model="embedded", device="cpu", dtype="float32",
                   calibration=CalibrationSpec(samples=16, seqlen=128, seed=3, mode="one-pass", hessian=True),
                   plan=plan, calibrated_with=Plan(sparsity=0.5), history=[{"op": "block", "block": 1, "sparsity": 0.3}],
                   probes=[probe], dense_probes=[probe], evaluations={"ifeval": {"acc": 0.25}}, theme="light",
                   versions={"workbench": "0.1.0"})


def test_round_trip(tmp_path):
    path = tmp_path / "s.toml"
    original = _session()
    save_session(original, path)
    loaded = load_session(path)
    assert loaded == original
    save_session(loaded, tmp_path / "again.toml")
    assert (tmp_path / "again.toml").read_text() == path.read_text()


def test_minimal_file_gets_defaults(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD)
    s = load_session(path)
    assert s.plan.allocator_params == {"M": 5.0, "lambda": 0.1} and s.plan.block_overrides == {2: 0.5}
    assert s.calibration == CalibrationSpec() and s.calibrated_with is None and s.theme == "dark"


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.toml"
    save_session(_session(), path)
    before = path.read_text()

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(WorkbenchError, match="s.toml: cannot write: disk full; the previous file is unchanged"):
        save_session(Session(), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.toml"]


PROBE = '[[probes]]\nname = "arithmetic"\nscore = 0.5\ntolerance = 0.1\n[probes.units.score]\n'

BAD = [
    ("version = 1\n[model\nspec = 1", "invalid TOML"),
    (GOOD.replace("version = 1", 'version = "1"'), "version: expected int"),
    (GOOD.replace("version = 1", "version = 7"), "version: session version 7 was written by a newer workbench"),
    (GOOD.replace("version = 1", 'version = 4\n[versions]\nworkbench = "0.9.0"'),
     "version: session version 4 was written by a newer workbench (0.9.0); this workbench"),
    (GOOD.replace("version = 1", "version = 0"), "version: unsupported session version 0 (this workbench reads 1, 2, 3)"),
    (GOOD.replace("version = 1", "version = 2") + '[masks.linears]\n"layers.0.mlp.up_proj" = "12 abc"\n',
     'masks.linears.layers.0.mlp.up_proj: expected "KEPT HASH SAMPLE"'),
    (GOOD.replace("version = 1", "version = 2") + '[masks]\nfile = "x.masks.safetensors"\n[masks.linears]\n',
     "masks.sha256: missing (needed with masks.file)"),
    (GOOD.replace('method = "wanda"', 'method = "obc"'), "plan.method: unknown method 'obc'"),
    (GOOD.replace('allocator = "owl"', 'allocator = "layerwise"'), "plan.allocator: unknown allocator 'layerwise'"),
    (GOOD.replace("sparsity = 0.7", "sparsity = 1.2"), "plan.sparsity: sparsity must be in [0, 1), got 1.2"),
    (GOOD.replace("sparsity = 0.7", "sparsity = -0.1"), "plan.sparsity: sparsity must be in [0, 1)"),
    (GOOD.replace("sparsity = 0.7", 'sparsity = "half"'), "plan.sparsity: expected int/float, got str"),
    (GOOD.replace("sparsity = 0.7", "sparsity = true"), "plan.sparsity: expected int/float, got bool"),
    (GOOD.replace('"2" = 0.5', '"2" = 1.5'), "plan.overrides.blocks.2: sparsity must be in [0, 1)"),
    (GOOD.replace('"2" = 0.5', '"two" = 0.5'), "plan.overrides.blocks.two: block keys are block indices"),
    (GOOD.replace("lambda = 0.1", "lambada = 0.1"), "plan.allocator_params: unknown parameter(s) lambada"),
    (GOOD + "pattern = 0.5\n", "plan.overrides.blocks.pattern: block keys are block indices"),
    (GOOD.replace("[plan]\n", '[plan]\npattern = "2-4"\n'), "plan.pattern: '2-4' is not N:M"),
    (GOOD.replace("[model]\n", "[model]\ncolour = 1\n"), "model.colour: unknown key"),
    (GOOD.replace('spec = "embedded"\n', ""), "model.spec: missing"),
    ("version = 1\n[model]\nspec = \"embedded\"\n", "plan: missing"),
    (GOOD + '[calibration]\nmode = "twice"\n', "calibration.mode: unknown mode 'twice'"),
    (GOOD + '[calibration]\nhessian = "yes"\n', "calibration.hessian: expected auto, true or false"),
    (GOOD + "[[probes]]\nname = \"perplexity\"\n", "probes[0].score: missing"),
    (GOOD + PROBE + 'bits = "01x1"\n', "probes[0].units.score.bits: expected a string of 0 and 1"),
    (GOOD + PROBE + 'bits = "0101"\nvalues = "1 2"\n', "probes[0].units.score: expected bits or values"),
    (GOOD + PROBE + 'values = "3.5 oops"\n', "probes[0].units.score.values: expected numbers separated by spaces"),
    (GOOD + PROBE + 'values = "3.5 2.5"\nweights = "32.0"\n', "probes[0].units.score.weights: 1 weights for 2 values"),
    (GOOD + PROBE + 'values = "3.5"\nlink = "log"\n', "probes[0].units.score.link: expected mean or exp, got 'log'"),
    (GOOD + PROBE + 'bits = "01"\nsize = 2\n', "probes[0].units.score.size: unknown key"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_invalid_files_are_refused_with_file_key_and_reason(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(WorkbenchError) as err:
        load_session(path)
    line = str(err.value)
    assert "\n" not in line and line.startswith(str(path)) and message in line


def test_missing_file(tmp_path):
    with pytest.raises(WorkbenchError, match="session file not found"):
        load_session(tmp_path / "nope.toml")


@pytest.mark.parametrize("edit, key", [
    (('"2" = 0.5', '"9" = 0.5'), "plan.overrides.blocks.9: no such block"),
    (("[plan.overrides.blocks]", '[plan.overrides.linears]\n"layers.0.mlp.fc1" = 0.5\n[plan.overrides.blocks]'),
     "plan.overrides.linears.layers.0.mlp.fc1: no such linear"),
])
def test_layers_the_model_lacks_are_refused(tmp_path, edit, key):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace(*edit))
    session = load_session(path)
    with pytest.raises(WorkbenchError, match=key.replace(".", r"\.")):
        check_against_model(session, make_engine(), path)


def test_session_dict_has_no_none(tmp_path):
    def walk(value):
        assert value is not None
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        if isinstance(value, list):
            for v in value:
                walk(v)

    walk(session_to_dict(Session()))
    walk(session_to_dict(_session()))


def test_example_sessions_are_valid():
    sessions = sorted(Path(__file__).parent.parent.joinpath("sessions").glob("*.toml"))
    assert len(sessions) >= 2
    for path in sessions:
        assert load_session(path).probes, f"{path} records no probes to check"


def test_a_version_3_session_keeps_units_compactly_and_round_trips(tmp_path):
    session = _session()
    nll = Units([101.25, 98.5, 0.1 + 0.2], [32.0, 32.0, 31.0], "exp")
    session.probes = [ProbeResult("perplexity", nll.score(), "ppl", False, 2, 1.0, "quick", 0.05, 0.0, relative=True,
                                  units={"score": nll}),
                      ProbeResult("facts", 0.5, "exact match", True, 4, 1.0, "quick", 0.75, 0.0,
                                  units={"score": Units([1.0, 0.0, 0.0, 1.0])})]
    session.dense_probes = [ProbeResult("facts", 0.75, "exact match", True, 4, 1.0, "quick", 0.75, 0.0,
                                        units={"score": Units([1.0, 1.0, 0.0, 1.0])})]
    path = tmp_path / "s.toml"
    save_session(session, path)
    text = path.read_text()
    assert text.startswith("version = 3\n") and 'bits = "1001"' in text and 'weights = "32.0 32.0 31.0"' in text
    loaded = load_session(path)
    assert loaded == session and loaded.probes[0].units["score"].values[2] == 0.1 + 0.2  # exact repr round trip
    save_session(loaded, tmp_path / "again.toml")
    assert (tmp_path / "again.toml").read_text() == text


def test_version_2_sessions_still_load_with_or_without_units(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD.replace("version = 1", "version = 2") + """
[[probes]]
name = "perplexity"
score = 30.0
tolerance = 0.05

[[probes]]
name = "arithmetic"
score = 0.5
tolerance = 0.1
[probes.units.score]  # the list form that version 2 files got once probes kept units
values = [1.0, 0.0, 1.0]
link = "mean"
""")
    probes = load_session(path).probes
    assert [p.units for p in probes] == [{}, {"score": Units([1.0, 0.0, 1.0])}]
