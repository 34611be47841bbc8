"""Agent-guided allocation (arXiv 2601.09694): a loop that observes every block, lets a policy raise some
of them, re-prunes from cached statistics, measures quick perplexity (or kl), and accepts the step or rolls back
to the last checkpoint. Never imports textual; importing this package loads no torch.

- `workbench.agent.loop`: `AgentRun`, `AgentSettings` (the loop, its defaults and their reasons).
- `workbench.agent.observation`: the per-block observation (Wanda low quantile, gradients, ...).
- `workbench.agent.policies`: the policy registry; `builtin` (deterministic, offline, the default) and
  `llm` (any OpenAI-compatible chat endpoint).
- `workbench.agent.record`: plain data: `Observation`, `Action`, `StepRecord`, `AgentLog` (the session's
  [agent] table).
- `workbench.allocators.agent`: the `agent` allocator, which replays recorded decisions.

API for a worker (the app's Agent screen), one step at a time so it can post each step, pause (stop
calling `step`) and stop:

    from workbench.agent.loop import AgentRun, AgentSettings
    from workbench.agent.policies import make_policy

    settings = AgentSettings(step=0.025)                  # settings.llm: url, model, timeout, retries
    run = AgentRun(engine, Plan(method="wanda", sparsity=0.6), make_policy("builtin", settings), settings)
    while (record := run.step(cancel=is_cancelled)) is not None:   # None once stopped
        post(record)                  # StepRecord: outcome, blocks, by, score, change, sparsity, prompt...
    run.stop()                        # from any thread: the next `step` finishes the run
    run.final_plan()                  # "use this allocation": the agent allocator with the accepted steps
    run.checkpoint_plan()             # the last accepted state (block overrides on the start plan)
    run.records, run.stop_reason, run.final_score
    session.sections["agent"] = run.log()  # the full step log for the session

While a run is going it owns the engine (prune, apply and probe on it). `step` runs on the caller's
thread and blocks for one re-prune and one quick perplexity (an LLM policy also waits for its endpoint).
On Ctrl-C or cancel inside a step, the engine goes back to the checkpoint before the exception leaves.
"""
