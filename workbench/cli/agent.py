"""Headless agent-guided allocation: `workbench agent`.

Loads the model, runs the agent loop (`workbench.agent.loop`) with the chosen policy and prints one line
per step (action, the measured value, accepted or rolled back, why), then the final allocation and its probes.
`--save-session` writes the final plan (the `agent` allocator with the accepted steps; `workbench replay`
rebuilds it without any policy) and the full step log (the session's [agent] table). Ctrl-C stops
cleanly: the engine goes back to its last checkpoint and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys

from workbench.cli.args import add_method_args, add_model_command, calibration_of, method_params_of
from workbench.cli.console import progress_line
from workbench.domain.plan import Plan, plan_to_dict


def add_agent_parser(subparsers) -> argparse.ArgumentParser:
    """Register `workbench agent`."""
    from workbench.agent.loop import AgentSettings
    from workbench.agent.policies import POLICIES
    from workbench.agent.policies.llm import LLMSettings
    from workbench.agent.record import PARAMS

    s, llm = AgentSettings, LLMSettings
    p = add_model_command(subparsers, "agent", help="agent-guided allocation: raise blocks step by step, roll back harmful steps")
    add_method_args(p)
    declared = {param.name: param for param in PARAMS}
    p.add_argument("--policy", default=declared["policy"].default, choices=POLICIES.names(),
                   help=f"{declared['policy'].help} (default %(default)s)")
    p.add_argument("--agent-url", default=None, help="llm policy: OpenAI-compatible API base, e.g. http://127.0.0.1:8080/v1 "
                                                     "(default $WORKBENCH_AGENT_URL); the key is read from $WORKBENCH_AGENT_KEY")
    p.add_argument("--agent-model", default=None, help="llm policy: the model name sent (default $WORKBENCH_AGENT_MODEL)")
    p.add_argument("--agent-timeout", type=float, default=llm.timeout, help=f"seconds per request (default {llm.timeout:g})")
    p.add_argument("--agent-retries", type=int, default=llm.retries,
                   help=f"further attempts after a failed or invalid reply (default {llm.retries})")
    for flag, key, kind in (("--step", "step", float), ("--span", "span", float), ("--max-steps", "max_steps", int),
                            ("--rollback-threshold", "rollback", float)):
        p.add_argument(flag, type=kind, default=declared[key].default, help=f"{declared[key].hint}, default %(default)s")
    p.add_argument("--measure", default=declared["measure"].default, choices=declared["measure"].choices,
                   help=f"{declared['measure'].help} (default %(default)s)")
    p.add_argument("--patience", type=int, default=s.patience, help=f"stop after this many steps in a row without an "
                                                                    f"accepted one (default {s.patience})")
    p.add_argument("--sensitivity", action="store_true", help="scan sensitivity at the start point and show it to the policy")
    p.add_argument("--probes", default="perplexity", help="comma-separated probes of the final model, dense and pruned")
    p.add_argument("--save-session", metavar="FILE", help="write the final plan and the step log as a session")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_agent)
    return p


def settings_of(args):
    """The agent settings of parsed options."""
    from workbench.agent.loop import AgentSettings
    from workbench.agent.policies.llm import LLMSettings

    llm = LLMSettings(timeout=args.agent_timeout, retries=args.agent_retries)
    llm.url = args.agent_url or llm.url
    llm.model = args.agent_model or llm.model
    return AgentSettings(step=args.step, span=args.span, max_steps=args.max_steps, rollback=args.rollback_threshold,
                         measure=args.measure, patience=args.patience, scan=args.sensitivity, llm=llm)


def cmd_agent(args) -> int:
    from workbench.agent.loop import AgentRun
    from workbench.agent.policies import make_policy
    from workbench.engine.facade import Engine

    plan = Plan(method=args.method, method_params=method_params_of(args), sparsity=args.sparsity)
    settings = settings_of(args)
    run_policy = make_policy(args.policy, settings)
    progress = progress_line(args.json)
    engine = Engine.load(args.model, args.device, args.dtype, calibration_of(args), progress=progress)
    engine.check_plan(plan)
    run = AgentRun(engine, plan, run_policy, settings)
    names = [n for n in args.probes.split(",") if n]
    dense = engine.dense_reference(names) if names else []  # a probe that cannot run fails before the loop

    def show(record) -> None:
        if not args.json:
            if sys.stderr.isatty():
                sys.stderr.write("\r\033[K")
            print(f"{record.line(settings.measure)}  | {record.reason}", flush=True)

    log = run.run(progress, on_step=show)
    pruned = engine.probe(names) if names else []
    if args.save_session:
        from workbench.domain.session import save_session, session_from_engine

        session = session_from_engine(engine, probes=pruned, device=args.device, dtype=args.dtype)
        session.sections["agent"] = log
        save_session(session, args.save_session)
    state = engine.state()
    final = run.final_plan()
    summary = {
        "model": state.model, "plan": plan_to_dict(final), "policy": log.policy, "start": log.start, "target": log.target,
        "achieved": state.achieved, "block_targets": [b.target for b in state.blocks], "stop_reason": log.stop_reason,
        "accepted": log.accepted(), "rollbacks": log.rollbacks(),
        "measure": log.measure, log.measure: {"dense": log.dense_score, "start": log.start_score, "final": log.final_score},
        "probes": [{"name": d.name, "metric": d.metric, "dense": d.score, "pruned": p.score} for d, p in zip(dense, pruned)],
        "steps": [r.to_dict() for r in log.records], "seconds": log.seconds, "session": args.save_session,
        "weights_sha256": engine.weights_digest(),
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    print(f"{state.model}: {plan.method}, agent ({log.policy}) from {log.start:.1%} to {log.target:.1%}: "
          f"{len(log.records)} steps, {log.accepted()} accepted, {log.rollbacks()} rolled back; {log.stop_reason} "
          f"({log.seconds:.1f} s)")
    print(f"  {log.measure}: dense {log.dense_score:.4g}, start {log.start_score:.4g}, final {log.final_score:.4g}; "
          f"achieved {state.achieved:.2%}")
    print("  block targets: " + " ".join(f"{b.index}:{100 * b.target:.1f}" for b in state.blocks))
    for d, p in zip(dense, pruned):
        print(f"  {d.name:<12} dense {d.score:>10.3f}   pruned {p.score:>10.3f}  ({d.metric})")
    if args.save_session:
        print(f"  session saved to {args.save_session}")
    return 0
