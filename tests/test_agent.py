"""Agent-guided allocation on the tiny model: the loop with the built-in policy, rollbacks, exact replay
from recorded decisions (allocator, session, compare, CLI), and the LLM policy against a fake
OpenAI-compatible server on 127.0.0.1 (valid replies, invalid JSON, timeouts, HTTP errors)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import math
from types import SimpleNamespace

import pytest

from tests.conftest import make_engine
from workbench.agent.loop import AgentRun, AgentSettings
from workbench.agent.policies import make_policy
from workbench.agent.policies.llm import LLMSettings, ReplyError, parse_reply
from workbench.agent.record import ACCEPTED, NO_ACTION, ROLLED_BACK, AgentLog, BlockObservation, Observation, change
from workbench.allocators import ALLOCATORS, AllocationContext
from workbench.cli.main import main
from workbench.domain.plan import Plan, weighted_mean
from workbench.domain.session import load_session, save_session, session_from_engine
from workbench.infra.errors import WorkbenchError
from workbench.studies.compare import Variant, run_comparison

TINY = ["--samples", "4", "--seqlen", "32"]
QUICK = dict(span=0.05, gradient_samples=2)  # 8 steps of one block on the tiny model's four blocks


def _run(engine, sparsity=0.55, policy="builtin", **settings) -> AgentRun:
    s = AgentSettings(**{**QUICK, **settings})
    return AgentRun(engine, Plan(sparsity=sparsity), make_policy(policy, s), s)


@pytest.fixture(scope="module")
def finished():
    """One built-in run to the target, shared by the tests that only read it."""
    engine = make_engine()
    run = _run(engine)
    run.run()
    return engine, run


def _measured_by(monkeypatch, engine, values) -> None:
    """The engine's quick probe answers the next of `values` (the dense reference is measured for real)."""
    monkeypatch.setattr(engine, "probe", lambda names, size="quick", cancel=None: [SimpleNamespace(score=next(values))])


def test_builtin_loop_makes_monotone_progress_to_the_target(finished):
    engine, run = finished
    accepted = [r for r in run.records if r.outcome == ACCEPTED]
    assert run.stop_reason == "target reached" and accepted
    levels = [run.start] + [r.sparsity for r in accepted]
    assert all(b > a for a, b in zip(levels, levels[1:]))
    assert levels[-1] == pytest.approx(0.55, abs=1e-9)
    assert all(0 < by <= 0.025 for r in run.records for by in r.by)
    assert engine.plan == run.final_plan() and engine.plan.allocator == "agent"
    assert weighted_mean(engine.block_targets(engine.plan), engine.block_numels()) == pytest.approx(0.55, abs=1e-9)
    assert run.step() is None  # a finished run stays finished


def test_max_steps_stops_short_and_the_allocator_rebalances_to_the_target():
    engine = make_engine()
    run = _run(engine, max_steps=3)
    run.run()
    assert len(run.records) == 3 and "max steps" in run.stop_reason
    assert run.sparsity() < 0.55
    targets = engine.block_targets(run.final_plan())
    assert weighted_mean(targets, engine.block_numels()) == pytest.approx(0.55, abs=1e-9)
    assert run.final_score is not None


def test_a_harmful_step_is_rolled_back_to_the_checkpoint_and_avoided(monkeypatch):
    engine = make_engine()
    run = _run(engine, measure="perplexity")
    measured = iter([100.0, 150.0] + [100.0 + n for n in range(1, 50)])  # start, a +50% step, then mild steps
    _measured_by(monkeypatch, engine, measured)
    first = run.step()
    assert first.outcome == ROLLED_BACK and first.change == pytest.approx(0.5)
    assert first.sparsity == run.start and run.steps == []
    reference = make_engine()
    reference.prune(run.start_plan())
    assert engine.weights_digest() == reference.weights_digest()  # back at the checkpoint
    second = run.step()
    assert second.outcome == ACCEPTED and not set(second.blocks) & set(first.blocks)
    assert "avoiding" in second.reason


def test_no_accepted_step_in_a_row_stops_after_patience(monkeypatch):
    engine = make_engine()
    run = _run(engine, patience=2, measure="perplexity")
    measured = iter([100.0] + [1000.0] * 10)
    _measured_by(monkeypatch, engine, measured)
    run.run()
    assert [r.outcome for r in run.records] == [ROLLED_BACK] * 2
    assert "no accepted step" in run.stop_reason and run.allocator_params()["steps"] == []


def test_recorded_decisions_replay_exactly(finished, tmp_path):
    engine, run = finished
    plan = run.final_plan()
    fresh = make_engine()
    fresh.prune(engine.calibrated_with)
    assert engine.calibrated_with == run.start_plan()
    fresh.apply(plan)
    assert fresh.block_targets(plan) == engine.block_targets(plan)
    assert fresh.weights_digest() == engine.weights_digest()
    agent = ALLOCATORS.get("agent")
    ctx = AllocationContext(block_numels=engine.block_numels(), outlier_ratios=lambda M: [])
    targets = agent.allocate(ctx, 0.55, **agent.params(plan.allocator_params))
    assert targets == engine.block_targets(plan)

    session = session_from_engine(engine)
    session.sections["agent"] = run.log()
    save_session(session, tmp_path / "agent.toml")
    loaded = load_session(tmp_path / "agent.toml")
    assert loaded.plan == plan and loaded.calibrated_with == run.start_plan()
    assert loaded.sections["agent"] == run.log()


def test_the_allocator_refuses_missing_and_malformed_decisions():
    agent = ALLOCATORS.get("agent")
    with pytest.raises(WorkbenchError, match="start"):
        agent.params({"steps": [{"blocks": [0], "by": [0.02]}]})
    with pytest.raises(WorkbenchError, match=r"steps\[0\].by"):
        agent.params({"start": 0.5, "steps": [{"blocks": [0], "by": [2.0]}]})
    with pytest.raises(WorkbenchError, match="policy"):
        agent.params({"policy": "oracle"})
    engine = make_engine()
    with pytest.raises(WorkbenchError, match="no recorded decisions"):
        engine.block_targets(Plan(allocator="agent"))
    with pytest.raises(WorkbenchError, match="no block 9"):
        engine.block_targets(Plan(allocator="agent", allocator_params={"start": 0.5, "steps": [{"blocks": [9], "by": [0.02]}]}))


def test_compare_runs_the_loop_in_prepare_and_records_the_decisions():
    engine = make_engine()
    variant = Variant("agent", Plan(allocator="agent", sparsity=0.55, allocator_params={"span": 0.05, "max_steps": 4}))
    comparison = run_comparison(engine, [variant], ["perplexity"])
    params = comparison.results[0].plan.allocator_params
    assert params["start"] == pytest.approx(0.5) and 1 <= len(params["steps"]) <= 4
    assert weighted_mean(comparison.results[0].block_targets, engine.block_numels()) == pytest.approx(0.55, abs=1e-9)


# ----- the LLM policy ------------------------------------------------------------------------------
class FakeChat:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 answering from a script: each entry is a
    reply text, ("status", code) for an HTTP error, or ("sleep", seconds) before a valid reply."""

    def __init__(self, script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(body)
                fake.headers.append(dict(self.headers))
                entry = fake.script.pop(0) if fake.script else '{"raise": []}'
                if isinstance(entry, tuple) and entry[0] == "status":
                    self.send_error(entry[1], "scripted failure")
                    return
                if isinstance(entry, tuple) and entry[0] == "sleep":
                    time.sleep(entry[1])
                    entry = '{"raise": []}'
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": entry}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def chat(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(*script):
        servers.append(FakeChat(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _observation(blocks=4) -> Observation:
    rows = [BlockObservation(i, 1000, 0.5, 1.0, 0.1 * i, 0.01, -0.1 * i, 0.02) for i in range(blocks)]
    return Observation(rows, sparsity=0.5, target=0.6, step=0.025, rollback=0.1, checkpoint_score=20.0,
                       dense_score=15.0, steps_left=10)


def _llm(url, **llm) -> object:
    return make_policy("llm", AgentSettings(llm=LLMSettings(url=url, model="fake", retry_wait=0, **{"timeout": 5, **llm})))


def test_llm_valid_reply_is_the_action_and_the_key_is_sent_not_recorded(chat, monkeypatch):
    monkeypatch.setenv("WORKBENCH_AGENT_KEY", "sk-secret")
    server = chat('```json\n{"raise": [{"block": 2, "by": 0.02}, {"block": 0, "by": 0.025}], "reason": "cheap"}\n```')
    action = _llm(server.url).propose(_observation(), [])
    assert action.raises == {2: 0.02, 0: 0.025} and action.reason == "cheap" and not action.errors
    assert server.headers[0]["Authorization"] == "Bearer sk-secret"
    sent = server.requests[0]
    assert sent["model"] == "fake" and sent["temperature"] == 0
    assert "wanda_z" in sent["messages"][1]["content"] and action.prompt == sent["messages"][1]["content"]


def test_llm_invalid_json_is_retried_with_the_error_then_accepted(chat):
    server = chat("I would prune block 3.", '{"raise": [{"block": 3, "by": 0.01}]}')
    action = _llm(server.url).propose(_observation(), [])
    assert action.raises == {3: 0.01} and len(action.errors) == 1 and "not JSON" in action.errors[0]
    retry = server.requests[1]["messages"]
    assert retry[-2]["content"] == "I would prune block 3." and "invalid" in retry[-1]["content"]


@pytest.mark.parametrize("script, error", [
    ([("status", 500)] * 3, "HTTP 500"),
    ([("sleep", 1.0)] * 3, "timed out"),
    (['{"raise": [{"block": 7, "by": 0.01}]}', '{"raise": [{"block": 1, "by": 0.5}]}', '{"raise": "all"}'], "invalid reply"),
])
def test_llm_failures_are_retried_a_bounded_number_of_times_then_no_action(chat, script, error):
    server = chat(*script)
    action = _llm(server.url, timeout=0.3, retries=2).propose(_observation(), [])
    assert action.raises == {} and not action.stop
    assert len(action.errors) == 3 and error in action.errors[-1] and error in action.reason
    assert len(server.requests) == 3


def test_llm_unreachable_endpoint_is_no_action(chat):
    server = chat()
    url = server.url
    server.close()
    action = _llm(url, retries=1).propose(_observation(), [])
    assert action.raises == {} and len(action.errors) == 2 and "cannot reach" in action.errors[0]


def test_parse_reply_checks_the_schema():
    assert parse_reply('{"raise": []}', 4, 0.025) == ({}, "")
    for text, message in [('[1]', "object"), ('{"raise": [], "why": 1}', "unknown key"),
                          ('{"raise": [{"block": 1, "by": 0.01}, {"block": 1, "by": 0.01}]}', "twice"),
                          ('{"raise": [{"block": true, "by": 0.01}]}', "block index"),
                          ('{"raise": [{"block": 1}]}', "exactly")]:
        with pytest.raises(ReplyError, match=message):
            parse_reply(text, 4, 0.025)


def test_llm_run_records_prompts_and_replies_and_counts_failures_as_no_action(chat):
    server = chat('{"raise": [{"block": 1, "by": 0.025}], "reason": "r1"}', ("status", 503), ("status", 503),
                  '{"raise": []}')
    engine = make_engine()
    s = AgentSettings(**QUICK, llm=LLMSettings(url=server.url, model="fake", retries=1, retry_wait=0))
    run = AgentRun(engine, Plan(sparsity=0.55), make_policy("llm", s), s)
    log = run.run()
    assert [r.outcome for r in log.records] == [ACCEPTED, NO_ACTION, NO_ACTION]
    assert log.records[0].replies and log.records[0].prompt and "HTTP 503" in log.records[1].reason
    assert log.stop_reason.startswith("the policy stopped") and log.system_prompt and log.agent_model == "fake"
    assert run.final_plan().allocator_params["steps"] == [{"blocks": [1], "by": [0.025]}]


def test_llm_policy_needs_a_url(monkeypatch):
    monkeypatch.delenv("WORKBENCH_AGENT_URL", raising=False)
    with pytest.raises(WorkbenchError, match="--agent-url"):
        make_policy("llm", AgentSettings())


def test_kl_measure_rolls_back_on_the_same_bound_of_mean_log_loss(monkeypatch, tmp_path):
    assert change("kl", 0.5, 0.4) == pytest.approx(math.exp(0.1) - 1)
    assert change("perplexity", 33.0, 30.0) == pytest.approx(0.1)
    engine = make_engine()
    run = _run(engine, measure="kl", max_steps=2)
    rise = math.log(1.1)  # the rollback bound (10%) as nats of KL
    _measured_by(monkeypatch, engine, iter([0.2, 0.2 + rise + 1e-3, 0.2 + rise - 1e-3]))
    first, second = run.step(), run.step()
    assert first.outcome == ROLLED_BACK and second.outcome == ACCEPTED
    assert run.dense_score == 0.0  # KL of the dense model against itself
    log = run.log()
    assert log.measure == "kl" and log.settings["measure"] == "kl" and log.start_score == 0.2
    assert first.line("kl").startswith("step 1:") and "-> KL 0.2963 (+10.1%) rolled back" in first.line("kl")
    assert run.final_plan().allocator_params["measure"] == "kl"


def test_kl_measure_runs_on_the_model_and_the_session_keeps_it(tmp_path):
    engine = make_engine()
    run = _run(engine, measure="kl", max_steps=2)
    run.run()
    assert run.dense_score == 0.0 and run.start_score > 0
    assert all(r.score >= 0 for r in run.records if r.score is not None)
    session = session_from_engine(engine)
    session.sections["agent"] = run.log()
    save_session(session, tmp_path / "kl.toml")
    assert load_session(tmp_path / "kl.toml").sections["agent"] == run.log()


def test_sessions_written_before_the_measure_read_their_perplexities():
    old = {"policy": "builtin", "settings": {}, "target": 0.6, "start": 0.5, "start_ppl": 30.0, "dense_ppl": 15.0,
           "final_ppl": 40.0, "records": [{"index": 1, "outcome": ACCEPTED, "blocks": [2], "by": [0.025],
                                            "sparsity": 0.51, "ppl": 31.0, "change": 0.03}]}
    log = AgentLog.from_dict(old)
    assert (log.measure, log.start_score, log.dense_score, log.final_score) == ("perplexity", 30.0, 15.0, 40.0)
    assert log.records[0].score == 31.0


def test_the_llm_prompt_names_the_measure():
    from workbench.agent.policies.llm import observation_table

    prompt = make_policy("llm", AgentSettings(measure="kl", llm=LLMSettings(url="http://127.0.0.1:9/v1"))).system_prompt
    assert "KL divergence from the dense model" in prompt and "exp(KL)" in prompt
    table = observation_table(Observation([], sparsity=0.5, target=0.6, step=0.025, rollback=0.1, checkpoint_score=0.3,
                                          dense_score=0.0, steps_left=3, measure="kl"), [])
    assert "KL divergence from the dense model (nats): dense 0, last accepted 0.3" in table


# ----- the CLI -------------------------------------------------------------------------------------
def test_cli_agent_json_session_and_replay_check(tiny_model_dir, tmp_path, capsys):
    session = tmp_path / "agent.toml"
    assert main(["agent", "--model", str(tiny_model_dir), *TINY, "--sparsity", "0.55", "--span", "0.05",
                 "--save-session", str(session), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stop_reason"] == "target reached" and out["plan"]["allocator"] == "agent"
    assert out["achieved"] == pytest.approx(0.55, abs=0.01) and out["steps"][0]["observation"]["wanda_z"]
    assert load_session(session).sections["agent"].records
    assert main(["replay", str(session), "--check", "--json"]) == 0
    replay = json.loads(capsys.readouterr().out)
    assert replay["ok"] and replay["weights_sha256"] == out["weights_sha256"]


def test_cli_agent_lines_per_step(tiny_model_dir, capsys):
    assert main(["agent", "--model", str(tiny_model_dir), *TINY, "--sparsity", "0.52", "--span", "0.02",
                 "--max-steps", "2", "--probes", ""]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("step 1: +2.5 on ") and ("accepted" in lines[0] or "rolled back" in lines[0])
    assert any("block targets" in line for line in lines)


def test_the_agent_refuses_a_plan_that_drops_blocks():
    from tests.conftest import make_engine
    from workbench.agent.loop import AgentRun, AgentSettings
    from workbench.agent.policies import make_policy
    from workbench.infra.errors import WorkbenchError
    from workbench.domain.plan import Plan, Structure

    settings = AgentSettings()
    with pytest.raises(WorkbenchError, match="agent: runs on plans that drop no blocks"):
        AgentRun(make_engine(), Plan(sparsity=0.6, structure=Structure(drop_blocks=[1])), make_policy("builtin", settings), settings)
