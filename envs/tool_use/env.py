"""The multi-turn ``tool_use`` environment: call tools, read their results, then answer.

An episode: ``reset`` opens with one user message (a one-line tool description, then the
question). Each policy turn either calls tools (``<tool_call>{...}</tool_call>``; ``step``
returns one ``role="tool"`` message per call and ``done=False``) or gives a final answer with
``\\boxed{...}`` and no call (``done=True``). A tool-calling turn at the turn limit also ends the
episode, unanswered. The env is stateless: everything it needs is in ``history``.

Score, when done: ``correct`` is the final answer matching the gold (numbers compared as
numbers, text case-insensitively); ``well_formed`` is the share of the episode's calls that
parsed and named an available tool with the right arguments (0 when a tool-requiring task got
no call at all). ``reward = correct_weight * correct + format_weight * well_formed``.

Public function-calling data (``envs/tool_use/dataset.py``: OpenAI tool schemas and a
ground-truth call or answer) is scored in one turn by :mod:`envs.tool_use.function_calling`.

The chat template wraps tool messages in ``<tool_response>``; this env returns plain content.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable
from typing import Any, ClassVar

from pydantic import BaseModel, Field, model_validator

from align.reasoning import split_thinking
from envs.base import Message, SelfCheck, StepResult, Task
from envs.grades import GRADE_WEIGHTS_FIELD, check_grade_weights
from envs.tool_use import function_calling, generate
from envs.tool_use.tools import (
    TOOL_ARGS,
    ToolCall,
    answers_match,
    extract_boxed,
    format_call,
    has_tool_call,
    parse_tool_calls,
    run_calculator,
    run_lookup,
)


class ToolUseParams(BaseModel):
    model_config = {"extra": "forbid", "frozen": True}

    max_turns: int = Field(default=4, ge=1, description="assistant turns per episode, the answering turn included")
    max_calls_per_turn: int = Field(default=4, ge=1, description="calls beyond this in one turn are not run (and count as malformed)")
    correct_weight: float = Field(default=0.8, ge=0)
    format_weight: float = Field(default=0.2, ge=0)
    max_observation_chars: int = Field(default=500, ge=16)
    kinds: tuple[str, ...] = Field(
        default=("calculator", "lookup", "lookup_calc", "lookup2_calc"),
        description="task kinds generate() draws from: calculator, lookup, python (grade 1), lookup_calc (2), lookup2_calc (3)",
    )
    grade_weights: dict[int, float] = GRADE_WEIGHTS_FIELD
    python_timeout_s: float = Field(default=5.0, gt=0)
    python_memory_mb: int = Field(default=256, ge=64)
    max_concurrency: int | None = Field(default=None, ge=1, description="python-tool sandboxes at once (default: CPU cores)")
    allow_rlimits_only: bool = False

    @model_validator(mode="after")
    def _grades(self) -> "ToolUseParams":
        offered = [generate.GRADE_OF_KIND[k] for k in self.kinds if k in generate.GRADE_OF_KIND]
        check_grade_weights("tool_use", self.grade_weights, offered)
        return self


class ToolUseEnv:
    name: ClassVar[str] = "tool_use"
    description: ClassVar[str] = "multi-turn tool calling (calculator, key-value lookup, sandboxed python), scored on the answer and well-formed calls"
    Params: ClassVar[type[BaseModel]] = ToolUseParams

    def __init__(self, params: ToolUseParams | None = None) -> None:
        self.params = params or ToolUseParams()
        unknown = set(self.params.kinds) - set(generate.KINDS)
        if unknown:
            raise ValueError(f"tool_use: unknown task kinds {sorted(unknown)}; choose from {list(generate.KINDS)}")

    def _run_python(self, code: str) -> Awaitable[Any]:
        """Run the python tool in the process-wide sandbox pool (envs.sandbox imported only here)."""
        from envs.sandbox import SandboxConfig, shared_pool

        config = SandboxConfig(
            timeout_s=self.params.python_timeout_s,
            memory_mb=self.params.python_memory_mb,
            allow_rlimits_only=self.params.allow_rlimits_only,
        )
        return shared_pool(self.params.max_concurrency).arun(code, config=config)

    # -- the episode ---------------------------------------------------------------------

    def reset(self, task: Task) -> list[Message]:
        messages = [dict(m) for m in task.prompt]
        if "functions" in task.meta:  # public function-calling data: the prompt already lists the tools
            return messages
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first_user]["content"] = tools_line(_tools(task)) + "\n" + messages[first_user]["content"]
        return messages

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        if "functions" in task.meta:
            return function_calling.score_turn(task, action)
        tools = _tools(task)
        turn = 1 + sum(1 for m in history if m["role"] == "assistant")
        earlier = [c for m in history if m["role"] == "assistant" for c in self._calls(m["content"], tools)]
        if has_tool_call(action):
            calls = self._calls(action, tools)
            if turn >= self.params.max_turns:
                return self._final(task, earlier + calls, answer=None, reason="turn_limit", turn=turn)
            observation = [{"role": "tool", "content": await self._run(task, c)} for c in calls]
            return StepResult(reward=0.0, done=False, observation=observation, info={"turn": turn, "calls": len(calls)})
        return self._final(task, earlier, answer=extract_boxed(split_thinking(action)[1]), reason="answer", turn=turn)

    def _calls(self, text: str, tools: tuple[str, ...]) -> list[ToolCall]:
        calls = parse_tool_calls(text, tools)
        limit = self.params.max_calls_per_turn
        extra = [ToolCall(c.name, error=f"too many calls in one turn ({limit} at most)") for c in calls[limit:]]
        return calls[:limit] + extra

    def _final(self, task: Task, calls: list[ToolCall], answer: str | None, reason: str, turn: int) -> StepResult:
        n_ok = sum(1 for c in calls if c.error is None)
        if calls:
            well_formed = n_ok / len(calls)
        else:
            well_formed = 0.0 if task.meta.get("tool_required", True) else 1.0
        correct = answer is not None and answers_match(answer, str(task.answer))
        p = self.params
        reward = (p.correct_weight * float(correct) + p.format_weight * well_formed) / max(p.correct_weight + p.format_weight, 1e-9)
        info = {"reason": reason, "turns": turn, "answer": answer, "tool_calls": len(calls), "malformed": len(calls) - n_ok, "well_formed": well_formed}
        return StepResult(reward=reward, done=True, correct=correct, info=info)

    async def _run(self, task: Task, call: ToolCall) -> str:
        if call.error is not None:
            return f"error: {call.error}"
        if call.name == "python":
            result = await self._run_python(call.arguments["code"])
            if result.status == "ok":
                text = result.stdout.strip() or "(no output)"
            else:
                last = (result.stderr.strip().splitlines() or [""])[-1]
                text = f"error ({result.status}): {last}".rstrip(": ")
            return _clip(text, self.params.max_observation_chars)
        return _clip(run_tool(task, call), self.params.max_observation_chars)

    # -- tiny-world data -----------------------------------------------------------------

    def generate(self, n: int, seed: int) -> list[Task]:
        return generate.tiny_tasks(n, seed, self.params.kinds, self.params.grade_weights)

    def demonstrate(self, task: Task) -> list[Message]:
        if "functions" in task.meta:
            return function_calling.reference_turn(task)
        if "keys" in task.meta:  # a lookup chain (grades 2 and 3)
            return _chain_episode(task, generate.chain_turns(task.meta, task.meta["keys"]))
        name, args = task.meta["call"]["name"], task.meta["call"]["arguments"]
        result = str(task.answer) if name == "python" else run_tool(task, ToolCall(name, args))
        return _episode(task.meta.get("think", "use the tool"), format_call(name, args), result, str(task.answer))

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        """A wrong episode of the same shape: a wrong final answer after a right call, a call
        with wrong arguments answered from its (wrong) result, or a malformed call and a guess."""
        if "keys" in task.meta:  # a chain: a wrong first lookup followed through, or a wrong final answer
            if rng.random() < 0.5:
                return _chain_episode(task, generate.chain_turns(task.meta, generate.wrong_keys(task, rng)))
            return _chain_episode(task, (task.meta["turns"], generate.wrong_answer(task, rng)))
        name, args = task.meta["call"]["name"], task.meta["call"]["arguments"]
        think = task.meta.get("think", "use the tool")
        wrong = generate.wrong_answer(task, rng)
        variant = rng.choice(["wrong_answer", "malformed"] if name == "python" else ["wrong_answer", "wrong_args", "malformed"])
        if variant == "wrong_args":
            bad_args = generate.wrong_arguments(task, rng)
            result = run_tool(task, ToolCall(name, bad_args))
            answer = result if not result.startswith(("error", "not found")) and not answers_match(result, str(task.answer)) else wrong
            return _episode(think, format_call(name, bad_args), result, answer)
        if variant == "malformed":
            call_text = format_call(name, args)[:-len("}</tool_call>")] + "</tool_call>"  # drop the closing brace
            error = f"error: {parse_tool_calls(call_text, _tools(task))[0].error}"
            return _episode(think, call_text, error, wrong)
        right = str(task.answer) if name == "python" else run_tool(task, ToolCall(name, args))
        return _episode(think, format_call(name, args), right, wrong)

    def self_checks(self) -> list[SelfCheck]:
        checks: list[SelfCheck] = []
        rng = random.Random(0)
        for task in generate.tiny_tasks(4, seed=77, kinds=("calculator", "lookup")):
            good = [m["content"] for m in self.demonstrate(task) if m["role"] == "assistant"]
            bad = [m["content"] for m in self.corrupt(task, rng) if m["role"] == "assistant"]
            checks.append(SelfCheck(task, good, True, f"{task.meta['kind']}: demonstration"))
            checks.append(SelfCheck(task, bad, False, f"{task.meta['kind']}: corrupted"))
        task = generate.tiny_tasks(1, seed=5, kinds=("calculator",))[0]
        call = format_call("calculator", task.meta["call"]["arguments"])
        final = f"<think></think>\\boxed{{{task.answer}}}"
        checks.append(SelfCheck(task, ["<tool_call>{not json</tool_call>", call, final], True, "recovers from a malformed call"))
        checks.append(SelfCheck(task, [call] * self.params.max_turns, False, "turn limit ends the episode"))
        py = generate.tiny_tasks(1, seed=3, kinds=("python",))[0]
        checks.append(SelfCheck(py, [m["content"] for m in self.demonstrate(py) if m["role"] == "assistant"], True, "python tool"))
        return checks


# ---------------------------------------------------------------------------------------------


def tools_line(tools: tuple[str, ...]) -> str:
    """The one-line tool description that opens every episode (short: a tiny model reads it)."""
    sigs = ", ".join(f"{t}({', '.join(TOOL_ARGS[t])})" for t in tools)
    return f'Tools: {sigs}. Call: <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>. Answer: \\boxed{{}}.'


def run_tool(task: Task, call: ToolCall) -> str:
    """Run a calculator or lookup call (the python tool needs the sandbox: see ``ToolUseEnv._run``)."""
    if call.error is not None:
        return f"error: {call.error}"
    if call.name == "calculator":
        return run_calculator(call.arguments["expression"])
    if call.name == "lookup":
        return run_lookup(task.meta.get("table", {}), call.arguments["key"])
    raise ValueError(f"run_tool cannot run {call.name!r}")


def _tools(task: Task) -> tuple[str, ...]:
    return tuple(task.meta.get("tools") or TOOL_ARGS)


def _episode(think: str, call_text: str, result: str, answer: str) -> list[Message]:
    return [
        {"role": "assistant", "content": f"<think>{think}</think>{call_text}"},
        {"role": "tool", "content": result},
        {"role": "assistant", "content": f"<think></think>\\boxed{{{answer}}}"},
    ]


def _chain_episode(task: Task, chain: tuple[list[list[dict[str, Any]]], str]) -> list[Message]:
    """Assistant turns of calls (the think block in the first), each followed by its tool
    results, then the boxed answer."""
    turns, answer = chain
    messages: list[Message] = []
    for i, calls in enumerate(turns):
        think = task.meta.get("think", "use the tools") if i == 0 else ""
        messages.append({"role": "assistant", "content": f"<think>{think}</think>" + "".join(format_call(c["name"], c["arguments"]) for c in calls)})
        messages += [{"role": "tool", "content": run_tool(task, ToolCall(c["name"], c["arguments"]))} for c in calls]
    messages.append({"role": "assistant", "content": f"<think></think>\\boxed{{{answer}}}"})
    return messages


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
