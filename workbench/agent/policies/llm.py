"""The LLM policy: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, a hosted API)
decides each step. HTTP with the standard library only.

- Endpoint: `settings.llm.url` is the API base (e.g. http://127.0.0.1:8080/v1; default: the environment
  variable WORKBENCH_AGENT_URL, the model WORKBENCH_AGENT_MODEL); `/chat/completions` is appended unless
  the URL already ends with it. The key, when the endpoint needs one, comes from the
  environment variable `settings.llm.key_env` (default WORKBENCH_AGENT_KEY) and is never recorded.
- Prompt: `SYSTEM_PROMPT` (the rules and the reply schema), then one user message per step: the
  observation as a compact table (`observation_table`) and the last `HISTORY` steps.
- Reply: one JSON object, checked by `parse_reply` against `REPLY_SCHEMA`:
  {"raise": [{"block": 3, "by": 0.025}, ...], "reason": "..."}; an empty "raise" stops the run.
- Failures (HTTP errors, timeouts, invalid JSON, a reply breaking the schema) are retried
  `settings.llm.retries` times, an invalid reply with the error told back to the model; then the step is
  "no action" with every error logged. Temperature 0.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from workbench.agent.policies import POLICIES
from workbench.agent.record import Action, Observation, StepRecord
from workbench.infra.errors import WorkbenchError

HISTORY = 20  # past steps shown in each prompt
MEASURE_NAMES = {"perplexity": "perplexity", "kl": "KL divergence from the dense model (nats)"}
RISES = {"perplexity": "perplexity", "kl": "exp(KL)"}  # what the rollback bound applies to
REPLY_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["raise"],
    "properties": {
        "raise": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["block", "by"],
            "properties": {"block": {"type": "integer", "minimum": 0}, "by": {"type": "number", "exclusiveMinimum": 0}}}},
        "reason": {"type": "string"},
    },
}

SYSTEM_PROMPT = """You are the allocation agent of a language-model pruning run. Each step you choose \
which transformer blocks to prune further, and by how much, until the parameter-weighted mean sparsity reaches the target.

Each turn shows one row per block:
- sparsity: the block's current target sparsity (%)
- wanda_z: z-score across blocks of the 10th percentile of the block's non-zero Wanda scores |W|*||X||; \
high means even its weakest remaining weights matter
- grad_z: z-score of the block's mean |gradient| of the language-model loss; high means important
- outlier%: share of outlier weights (Wanda score above 5x the block mean); more outliers, prune less
- sens: {measure} change when only this block was pruned more (a sensitivity scan; "-" if not scanned)
and the history of your past steps with the measured {measure}. A step that raises {rise} more than \
{rollback:.0%} over the last accepted state is rolled back: learn from those.

Answer with one JSON object and nothing else:
{{"raise": [{{"block": <block index>, "by": <raise, greater than 0 and at most {step}>}}, ...], \
"reason": "<one short sentence>"}}
Each block at most once. An empty "raise" list stops the run."""


@dataclass
class LLMSettings:
    """Where the LLM policy's endpoint is and how long it may take."""

    url: str = field(default_factory=lambda: os.environ.get("WORKBENCH_AGENT_URL", ""))
    model: str = field(default_factory=lambda: os.environ.get("WORKBENCH_AGENT_MODEL", ""))
    key_env: str = "WORKBENCH_AGENT_KEY"
    timeout: float = 60.0  # seconds, per request
    retries: int = 2  # further attempts after a failed or invalid reply
    retry_wait: float = 1.0  # seconds between attempts


class ReplyError(ValueError):
    """A reply that is not the JSON the schema asks for."""


def observation_table(observation: Observation, history: list[StepRecord]) -> str:
    """The user message of one step: status, one row per block, the last `HISTORY` steps."""
    o = observation
    lines = [f"target {o.target:.1%}, now {o.sparsity:.2%}, steps left {o.steps_left}, largest raise {o.step}",
             f"{MEASURE_NAMES[o.measure]}: dense {o.dense_score:.4g}, last accepted {o.checkpoint_score:.4g}",
             "block params sparsity wanda_z grad_z outlier% sens"]
    for b in o.blocks:
        sens = "-" if b.sensitivity is None else f"{b.sensitivity:+.3g}"
        lines.append(f"{b.index} {b.numel / 1e6:.2f}M {100 * b.sparsity:.1f} {b.wanda_z:+.2f} {b.gradient_z:+.2f} "
                     f"{100 * b.outlier_ratio:.2f} {sens}")
    shown = history[-HISTORY:]
    lines.append("history:" if shown else "history: none yet")
    lines += [r.line(o.measure) for r in shown]
    return "\n".join(lines)


def strip_fences(text: str) -> str:
    """The JSON inside a ```json ... ``` block, or the text itself."""
    text = text.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()


def parse_reply(text: str, blocks: int, step: float) -> tuple[dict[int, float], str]:
    """The raises and the reason of a reply, checked against `REPLY_SCHEMA` (blocks in range, each once,
    0 < by <= step); a ReplyError says what is wrong."""
    try:
        data = json.loads(strip_fences(text))
    except json.JSONDecodeError as exc:
        raise ReplyError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ReplyError("expected a JSON object")
    extra = set(data) - set(REPLY_SCHEMA["properties"])
    if extra:
        raise ReplyError(f"unknown key(s) {', '.join(sorted(extra))}")
    if not isinstance(data.get("raise"), list):
        raise ReplyError('"raise" must be a list')
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise ReplyError('"reason" must be a string')
    raises: dict[int, float] = {}
    for n, item in enumerate(data["raise"]):
        at = f'"raise"[{n}]'
        if not isinstance(item, dict) or set(item) != {"block", "by"}:
            raise ReplyError(f'{at} must be an object with exactly "block" and "by"')
        block, by = item["block"], item["by"]
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < blocks:
            raise ReplyError(f"{at}.block must be a block index 0..{blocks - 1}, got {block!r}")
        if block in raises:
            raise ReplyError(f"{at}: block {block} appears twice")
        if isinstance(by, bool) or not isinstance(by, (int, float)) or not 0 < by <= step + 1e-12:
            raise ReplyError(f"{at}.by must be in (0, {step}], got {by!r}")
        raises[block] = float(by)
    return raises, reason


def endpoint(url: str) -> str:
    """The chat-completions URL of an API base."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


@POLICIES.register("llm")
class LLMPolicy:
    """An OpenAI-compatible chat endpoint decides (see the module docstring)."""

    name = "llm"

    def __init__(self, settings):
        self.llm: LLMSettings = settings.llm
        if not self.llm.url:
            raise WorkbenchError("--agent-url", "the llm policy needs the URL of an OpenAI-compatible endpoint")
        self.system_prompt = SYSTEM_PROMPT.format(rollback=settings.rollback, step=settings.step,
                                                  measure=MEASURE_NAMES[settings.measure], rise=RISES[settings.measure])

    def propose(self, observation: Observation, history: list[StepRecord]) -> Action:
        prompt = observation_table(observation, history)
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}]
        replies, errors = [], []
        for attempt in range(1 + self.llm.retries):
            if attempt and self.llm.retry_wait:
                time.sleep(self.llm.retry_wait)
            try:
                reply = self.chat(messages)
            except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, HTTPError, timeouts are OSErrors
                errors.append(f"attempt {attempt + 1}: {describe(exc)}")
                continue
            replies.append(reply)
            try:
                raises, reason = parse_reply(reply, len(observation.blocks), observation.step)
            except ReplyError as exc:
                errors.append(f"attempt {attempt + 1}: invalid reply: {exc}")
                messages += [{"role": "assistant", "content": reply},
                             {"role": "user", "content": f"Your reply was invalid: {exc}. Answer with the JSON object only."}]
                continue
            return Action(raises, reason=reason or "(no reason given)", stop=not raises, prompt=prompt,
                          replies=replies, errors=errors)
        return Action({}, reason=f"no valid reply after {1 + self.llm.retries} attempts ({errors[-1]})",
                      prompt=prompt, replies=replies, errors=errors)

    def chat(self, messages: list[dict]) -> str:
        """One chat completion: the reply's text."""
        body = json.dumps({"model": self.llm.model, "messages": messages, "temperature": 0}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.llm.key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(endpoint(self.llm.url), data=body, headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.llm.timeout) as response:
            data = json.loads(response.read().decode("utf-8"))
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"no choices[0].message.content in the response: {json.dumps(data)[:200]}") from None
        if not isinstance(content, str):
            raise ValueError("choices[0].message.content is not text")
        return content


def describe(error: BaseException) -> str:
    """One line for a failed request."""
    if isinstance(error, urllib.error.HTTPError):
        body = error.read().decode("utf-8", "replace")[:200] if error.fp else ""
        return f"HTTP {error.code} {error.reason}{': ' + body if body else ''}"
    if isinstance(error, urllib.error.URLError):
        return f"cannot reach the endpoint: {error.reason}"
    if isinstance(error, TimeoutError):
        return "timed out"
    return f"{type(error).__name__}: {error}"
