"""Episodes against a real in-process vLLM engine: budgets, the toggle, multi-turn, failures, batching.

One engine for the module. It starts with the tiny checkpoint's random weights; tests that need
a policy that ends its turns (multi-turn, a ``</think>`` the model closes itself) switch it to
weights trained for a few seconds on ChatML conversations, through ``update_weights``.
"""

from __future__ import annotations

import asyncio
import random
from typing import ClassVar

import pytest
import torch

from align.config.schema import SamplingConfig
from align.models import load_model
from align.reasoning import THINK_CLOSE, THINK_OPEN, ReasoningMode
from envs.base import Message, NoParams, StepResult, Task
from rollout.collect import collect
from rollout.batcher import engine_generate_fn
from rollout.chat import ChatTokens, chat_template_kwargs, count_thinking, observation_ids
from rollout.episode import derive_seed
from rollout.types import GenOutput, GenRequest, Trajectory

# ---------------------------------------------------------------- test environments


class _TestEnv:
    description: ClassVar[str] = "test environment"
    Params: ClassVar[type] = NoParams

    def __init__(self, params: NoParams | None = None) -> None:
        self.actions: list[tuple[int, str]] = []  # (len(history), action) per step

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    def generate(self, n: int, seed: int) -> list[Task]:
        return make_tasks(self.name, n, seed)

    def demonstrate(self, task: Task) -> list[Message]:
        return [{"role": "assistant", "content": f"<think>{task.meta['q']} = {task.answer}</think>{task.answer}"}]

    def corrupt(self, task: Task, rng: random.Random) -> list[Message]:
        return [{"role": "assistant", "content": f"<think>{task.meta['q']}</think>{task.answer + 1}"}]

    def self_checks(self) -> list:
        return []


class OneShotEnv(_TestEnv):
    """A single-turn verifier: correct when the answer appears after the think block."""

    name: ClassVar[str] = "oneshot"

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        self.actions.append((len(history), action))
        answer = action.split(THINK_CLOSE)[-1]
        correct = str(task.answer) in answer
        return StepResult(reward=float(correct), done=True, correct=correct)


class EchoEnv(_TestEnv):
    """Answers the first two assistant turns with a tool observation ``echo k``, then ends."""

    name: ClassVar[str] = "echo"

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        self.actions.append((len(history), action))
        turn = sum(m["role"] == "assistant" for m in history) + 1
        await asyncio.sleep(0)  # a real environment awaits something
        if turn < 3:
            return StepResult(reward=0.0, done=False, observation=[{"role": "tool", "content": f"echo {turn}"}])
        return StepResult(reward=1.0, done=True, correct=True, info={"turns": turn})


class CrashEnv(_TestEnv):
    name: ClassVar[str] = "crash"

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        raise RuntimeError("boom")


class StuckEnv(_TestEnv):
    name: ClassVar[str] = "stuck"

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        await asyncio.sleep(3600)
        raise AssertionError("never reached")


class ResetCrashEnv(_TestEnv):
    name: ClassVar[str] = "reset_crash"

    def reset(self, task: Task) -> list[Message]:
        raise ValueError("no such task")

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        raise AssertionError("never reached")


def make_tasks(env: str, n: int, seed: int = 0) -> list[Task]:
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        prompt = [{"role": "user", "content": f"{a} + {b} = ?"}]
        tasks.append(Task(id=f"{env}-{i}", env=env, prompt=prompt, answer=a + b, meta={"q": f"{a} + {b}"}))
    return tasks


# ---------------------------------------------------------------- fixtures


def train_format(model, tokenizer, steps: int = 24, batch_size: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A few seconds of next-token training on rendered conversations, so the policy ends its turns.

    Conversations have 1-3 assistant turns with ``echo k`` tool turns between, in /think,
    /think-with-budget and /no_think modes.
    """
    rng = random.Random(seed)
    torch.manual_seed(seed)
    texts = []
    for _ in range(256):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        turns = rng.randint(1, 3)
        messages: list[Message] = [{"role": "user", "content": f"{a} + {b} = ?"}]
        for t in range(turns):
            messages.append({"role": "assistant", "content": f"<think>add {a} and {b}</think>{a + b}"})
            if t < turns - 1:
                messages.append({"role": "tool", "content": f"echo {t + 1}"})
        mode = rng.choice([ReasoningMode(True), ReasoningMode(True, 16), ReasoningMode(True, 64), ReasoningMode(False)])
        if not mode.thinking:
            messages = [m if m["role"] != "assistant" else {**m, "content": str(a + b)} for m in messages]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, **chat_template_kwargs(mode)))
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for step in range(steps):
        batch = [encoded[(step * batch_size + i) % len(encoded)] for i in range(batch_size)]
        width = max(map(len, batch))
        ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Policy:
    """The module's engine, with named weight sets swapped in through ``update_weights``."""

    def __init__(self, engine, states: dict[str, dict[str, torch.Tensor]]) -> None:
        self.engine, self.states, self.current = engine, states, "random"

    def use(self, name: str):
        if name != self.current:
            self.engine.update_weights(self.states[name])
            self.current = name
        return self.engine


@pytest.fixture(scope="module")
def policy(tiny_checkpoint, tokenizer, make_engine) -> Policy:
    model = load_model(tiny_checkpoint, "float32")
    random_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trained_state = train_format(model, tokenizer)  # before vLLM pins torch to fewer threads
    return Policy(make_engine(tiny_checkpoint), {"random": random_state, "trained": trained_state})


@pytest.fixture(scope="module")
def chat(tokenizer) -> ChatTokens:
    return ChatTokens.from_tokenizer(tokenizer)


def play(engine, tokenizer, envs, tasks_modes, g=1, max_turns=1, seed=0, generate=None, step_timeout_s=None, greedy=False, **sampling):
    return asyncio.run(
        collect(
            {env.name: env for env in envs},
            tasks_modes,
            g,
            tokenizer=tokenizer,
            generate=generate,  # a batch function a test wraps around the engine (through a Batcher)
            generate_one=None if generate else engine.generate_one,  # or per request, as the RL driver does
            sampling=SamplingConfig(**sampling),
            max_turns=max_turns,
            seed=seed,
            step_timeout_s=step_timeout_s,
            greedy=greedy,
        )
    )


def check_stream(t: Trajectory) -> None:
    """Invariants every trajectory keeps: aligned arrays, logprobs only on policy tokens."""
    assert len(t.completion_ids) == len(t.loss_mask) == len(t.rollout_logprobs)
    if t.weight_versions is not None:  # the engine's (scripted outputs carry none): one per token, one in all (no update runs here)
        assert len(t.weight_versions) == len(t.completion_ids) and len(set(t.weight_versions)) <= 1
    assert set(t.loss_mask) <= {0, 1}
    for m, lp in zip(t.loss_mask, t.rollout_logprobs):
        assert (lp == 0.0) if m == 0 else (lp <= 0.0)


def runs(mask: list[int], value: int) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of ``value`` in ``mask``."""
    out, start = [], None
    for i, m in enumerate(mask + [1 - value]):
        if m == value and start is None:
            start = i
        elif m != value and start is not None:
            out.append((start, i))
            start = None
    return out


# ---------------------------------------------------------------- pure helpers


def test_count_thinking_cases(chat):
    o, c, e, x = chat.think_open_id, chat.think_close_id, chat.eos_id, 5
    assert count_thinking([o, x, x, c, x, e], [1] * 6, chat, thinking=True) == 2
    assert count_thinking([x, x, x, c, x, e], [1, 1, 1, 0, 1, 1], chat, thinking=True) == 3  # forced close, no <think>
    assert count_thinking([o, x, x, x, e], [1] * 5, chat, thinking=True) == 3  # never closed
    assert count_thinking([x, x, e], [1] * 3, chat, thinking=True) == 0  # answered without thinking
    assert count_thinking([x, x, e], [1] * 3, chat, thinking=False) == 0
    assert count_thinking([x, o, x, x, c, x, e], [1] * 7, chat, thinking=False) == 2  # thought in /no_think
    assert count_thinking([o, x, x, x], [1] * 4, chat, thinking=False) == 3


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, "t", 0) == derive_seed(0, "t", 0)
    assert len({derive_seed(0, "t", i) for i in range(100)}) == 100
    assert 0 <= derive_seed("anything") < 2**63


def test_observation_tokens_are_the_templates(tokenizer):
    history: list[Message] = [{"role": "user", "content": "1 + 1 = ?"}, {"role": "assistant", "content": "<think>x</think>2"}]
    obs = [{"role": "tool", "content": "echo 1"}]
    for mode, tail in [(ReasoningMode(True), ""), (ReasoningMode(False), "<think></think>")]:
        expected = f"\n<|im_start|>tool\n<tool_response>echo 1</tool_response><|im_end|>\n<|im_start|>assistant\n{tail}"
        assert observation_ids(tokenizer, history, obs, mode) == tokenizer(expected, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- with the engine


def test_budget_is_enforced_with_random_weights(policy, tokenizer, chat):
    engine = policy.use("random")
    calls = []

    async def counting(requests: list[GenRequest]) -> list[GenOutput]:
        calls.append(len(requests))
        return await engine_generate_fn(engine)(requests)

    tasks = make_tasks("oneshot", 4)
    modes = [ReasoningMode(True, 16), ReasoningMode(True, 10)]  # 10 rounds up to the ladder's 16
    groups = play(engine, tokenizer, [OneShotEnv()], [(t, modes[i % 2]) for i, t in enumerate(tasks)], g=4,
                  generate=counting, temperature=1.0, max_new_tokens=48, max_answer_tokens=8)
    trajectories = [t for group in groups for t in group]
    assert len(trajectories) == 16 and all(len(g) == 4 for g in groups)
    assert len(calls) <= 2 and calls[0] == 16, "each phase of all 16 episodes should go out as one engine call"
    forced = 0
    for t in trajectories:
        check_stream(t)
        assert t.budget == 16 and t.thinking_tokens <= 16 and t.num_turns == 1
        assert tokenizer.decode(t.prompt_ids).endswith("<|im_start|>assistant\n")
        assert "/think <|budget_16|>" in tokenizer.decode(t.prompt_ids)
        assert len(t.completion_ids) <= 48 + 1 + 8
        forced_at = [i for i, m in enumerate(t.loss_mask) if m == 0]
        if t.forced_close:
            forced += 1
            assert len(forced_at) == 1, "the forced </think> is the only token the policy did not sample"
            (i,) = forced_at
            assert t.completion_ids[i] == chat.think_close_id and t.rollout_logprobs[i] == 0.0
            ids = t.completion_ids
            assert chat.think_close_id not in ids[:i]
            start = ids.index(chat.think_open_id) + 1 if chat.think_open_id in ids[:i] else 0
            assert i - start == t.thinking_tokens <= 16 and len(ids) - i - 1 <= 8  # thinking within budget, answer within its cap
        else:
            assert forced_at == []
    assert forced > 0, "random weights should run out of a 16-token budget"


def test_model_that_closes_its_thinking_is_not_forced(policy, tokenizer, chat):
    engine = policy.use("trained")
    groups = play(engine, tokenizer, [OneShotEnv()], [(t, ReasoningMode(True, 16)) for t in make_tasks("oneshot", 4)],
                  temperature=0.0, max_new_tokens=48, max_answer_tokens=8)
    natural = 0
    for (t,) in groups:
        check_stream(t)
        ids = t.completion_ids
        if not t.forced_close and THINK_CLOSE in t.completion:
            natural += 1
            assert all(m == 1 for m in t.loss_mask)
            start = ids.index(chat.think_open_id) + 1 if chat.think_open_id in ids else 0
            assert t.thinking_tokens == ids.index(chat.think_close_id) - start <= 16
            assert ids[-1] == chat.eos_id and t.finish_reason == "stop" and not t.truncated
    assert natural > 0, [t.completion for (t,) in groups]


def test_ignore_eos_runs_every_turn_to_its_cap(policy, tokenizer, chat):
    """``sampling.ignore_eos`` (benchmarks): the policy that ends its turns generates to the cap."""
    engine = policy.use("trained")
    tasks = [(t, ReasoningMode(True)) for t in make_tasks("oneshot", 4)]
    natural = play(engine, tokenizer, [OneShotEnv()], tasks, temperature=0.0, max_new_tokens=40)
    assert any(t.finish_reason == "stop" and len(t.completion_ids) < 40 for (t,) in natural), "the test needs turns that end early"
    for (t,) in play(engine, tokenizer, [OneShotEnv()], tasks, temperature=0.0, max_new_tokens=40, ignore_eos=True):
        check_stream(t)
        assert len(t.completion_ids) == 40 and t.finish_reason == "length" and t.truncated


@pytest.mark.parametrize("weights", ["random", "trained"])
def test_no_think_prompt_ends_with_empty_think_block(policy, tokenizer, chat, weights):
    engine = policy.use(weights)
    groups = play(engine, tokenizer, [OneShotEnv()], [(t, ReasoningMode(False)) for t in make_tasks("oneshot", 3)],
                  g=2, temperature=1.0, max_new_tokens=24)
    for group in groups:
        for t in group:
            check_stream(t)
            assert tokenizer.decode(t.prompt_ids).endswith("<|im_start|>assistant\n<think></think>")
            assert t.prompt_ids[-2:] == [chat.think_open_id, chat.think_close_id]
            assert t.budget is None and not t.forced_close and all(m == 1 for m in t.loss_mask)
            assert t.thinking_tokens == count_thinking(t.completion_ids, t.loss_mask, chat, thinking=False)
            assert (t.thinking_tokens > 0) <= (THINK_OPEN in t.completion)


@pytest.mark.parametrize("mode", [ReasoningMode(True), ReasoningMode(False)], ids=["think", "no_think"])
def test_multi_turn_observations_are_template_tokens_with_mask_zero(policy, tokenizer, chat, mode):
    engine = policy.use("trained")
    env = EchoEnv()
    groups = play(engine, tokenizer, [env], [(t, mode) for t in make_tasks("echo", 3)], g=2, max_turns=4,
                  temperature=0.7, max_new_tokens=160)
    complete = 0
    for group in groups:
        for t in group:
            check_stream(t)
            if t.truncated:
                continue
            complete += 1
            assert t.num_turns == 3 and t.correct is True and t.reward == 1.0
            assert [m["role"] for m in t.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
            observations = runs(t.loss_mask, 0)
            policy_runs = runs(t.loss_mask, 1)
            assert len(observations) == 2 and len(policy_runs) == 3
            tail = "" if mode.thinking else "<think></think>"
            for k, (s, e) in enumerate(observations, start=1):
                text = f"\n<|im_start|>tool\n<tool_response>echo {k}</tool_response><|im_end|>\n<|im_start|>assistant\n{tail}"
                assert t.completion_ids[s:e] == tokenizer(text, add_special_tokens=False)["input_ids"]
            for s, e in policy_runs:  # each policy turn is exactly what the sampler returned, ending the turn
                assert t.completion_ids[e - 1] == chat.eos_id
            # The whole token stream is the chat template's rendering of the conversation.
            stream = tokenizer.decode(t.prompt_ids + t.completion_ids, skip_special_tokens=False)
            assert stream + "\n" == tokenizer.apply_chat_template(t.messages, tokenize=False, **chat_template_kwargs(mode))
            assert t.completion == "\n".join(m["content"] for m in t.messages if m["role"] == "assistant")
    assert complete > 0
    assert {n for n, _ in env.actions} >= {1, 3, 5}  # the env saw the history before each action


def test_crashing_environment_fails_only_its_samples(policy, tokenizer):
    engine = policy.use("random")
    tasks = make_tasks("crash", 2) + make_tasks("reset_crash", 1) + make_tasks("stuck", 1) + make_tasks("oneshot", 2)
    envs = [CrashEnv(), ResetCrashEnv(), StuckEnv(), OneShotEnv()]
    groups = play(engine, tokenizer, envs, [(t, ReasoningMode(True)) for t in tasks], g=2, step_timeout_s=0.5,
                  temperature=1.0, max_new_tokens=8)
    by_env: dict[str, list[Trajectory]] = {}
    for group in groups:
        for t in group:
            check_stream(t)
            by_env.setdefault(t.env, []).append(t)
    for t in by_env["crash"]:
        assert t.correct is False and t.reward == 0.0 and "RuntimeError: boom" in t.error
        assert len(t.completion_ids) > 0 and "traceback" in t.info
    for t in by_env["reset_crash"]:
        assert t.correct is False and "reset failed: ValueError: no such task" in t.error
        assert t.completion_ids == [] and len(t.prompt_ids) > 0
    for t in by_env["stuck"]:
        assert t.correct is False and "TimeoutError" in t.error
    for t in by_env["oneshot"]:
        assert t.error is None and len(t.completion_ids) > 0


def test_batcher_sends_concurrent_episodes_in_one_engine_call(policy, tokenizer):
    engine = policy.use("random")
    calls: list[int] = []

    async def counting(requests: list[GenRequest]) -> list[GenOutput]:
        calls.append(len(requests))
        return await engine_generate_fn(engine)(requests)

    groups = play(engine, tokenizer, [OneShotEnv()], [(t, ReasoningMode(True)) for t in make_tasks("oneshot", 3)],
                  g=3, generate=counting, temperature=1.0, max_new_tokens=8)
    assert calls == [9]
    assert sum(len(g) for g in groups) == 9


def test_a_failed_engine_call_fails_the_collection_without_hanging(policy, tokenizer):
    engine = policy.use("trained")
    calls: list[int] = []

    async def dies_on_second_call(requests: list[GenRequest]) -> list[GenOutput]:
        calls.append(len(requests))
        if len(calls) == 2:
            raise RuntimeError("engine died")
        return await engine_generate_fn(engine)(requests)

    tasks_modes = [(t, ReasoningMode(True)) for t in make_tasks("echo", 3)]
    with pytest.raises(RuntimeError, match="engine died"):
        play(engine, tokenizer, [EchoEnv()], tasks_modes, g=2, max_turns=4, generate=dies_on_second_call,
             temperature=0.7, max_new_tokens=160)
    assert len(calls) == 2, "no engine call may follow a failed one"


def test_collect_is_reproducible_and_groups_differ(policy, tokenizer):
    engine = policy.use("random")
    tasks_modes = [(t, ReasoningMode(True, 16)) for t in make_tasks("oneshot", 2)]
    kwargs = dict(g=3, temperature=1.0, max_new_tokens=12, max_answer_tokens=4)
    a = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=11, **kwargs)
    b = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=11, **kwargs)
    c = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=12, **kwargs)
    ids = lambda groups: [[t.completion_ids for t in g] for g in groups]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)
    for group in a:
        assert len({tuple(x) for x in ids([group])[0]}) == 3, "the G samples of a group should differ"
        assert len({t.seed for t in group}) == 3


def test_greedy_episode_ends_each_group_and_ignores_the_seed(policy, tokenizer):
    """grpo.baseline=greedy: G sampled episodes, then one at temperature 0, the same whatever the seed."""
    engine = policy.use("random")
    tasks_modes = [(t, ReasoningMode(True, 16)) for t in make_tasks("oneshot", 2)]
    kwargs = dict(g=3, temperature=1.0, max_new_tokens=12, max_answer_tokens=4)
    a = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=11, greedy=True, **kwargs)
    c = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=12, greedy=True, **kwargs)
    alone = play(engine, tokenizer, [OneShotEnv()], tasks_modes, seed=13, **{**kwargs, "g": 1, "temperature": 0.0})
    assert [len(g) for g in a] == [4, 4]
    for ga, gc, g1 in zip(a, c, alone, strict=True):
        assert ga[-1].completion_ids == gc[-1].completion_ids == g1[0].completion_ids
        assert [bool(t.info.get("greedy")) for t in ga] == [False, False, False, True] and not g1[0].info.get("greedy")
        assert [t.completion_ids for t in ga[:-1]] != [t.completion_ids for t in gc[:-1]]


@pytest.mark.slow
def test_many_concurrent_multi_turn_episodes(policy, tokenizer, chat):
    """96 episodes in three modes through one Batcher: invariants hold at scale; prints tokens/s."""
    import time

    engine = policy.use("trained")
    calls: list[int] = []

    async def counting(requests: list[GenRequest]) -> list[GenOutput]:
        calls.append(len(requests))
        return await engine_generate_fn(engine)(requests)

    modes = [ReasoningMode(True), ReasoningMode(False), ReasoningMode(True, 16)]
    tasks_modes = [(t, modes[i % 3]) for i, t in enumerate(make_tasks("echo", 24))]
    start = time.perf_counter()
    groups = play(engine, tokenizer, [EchoEnv()], tasks_modes, g=4, max_turns=4, generate=counting,
                  temperature=1.0, max_new_tokens=160, max_answer_tokens=16)
    elapsed = time.perf_counter() - start
    trajectories = [t for g in groups for t in g]
    for t in trajectories:
        check_stream(t)
        if t.budget is not None:
            assert t.thinking_tokens <= t.budget
    policy_tokens = sum(t.num_policy_tokens for t in trajectories)
    print(f"\n{len(trajectories)} episodes, {policy_tokens} policy tokens in {elapsed:.1f}s = {policy_tokens / elapsed:.0f} tokens/s; "
          f"{len(calls)} engine calls, batch sizes {calls}; complete: {sum(not t.truncated for t in trajectories)}")
    assert max(calls) == len(trajectories)


def test_trajectories_span_an_in_flight_weight_update(policy, tokenizer):
    """Multi-turn episodes per request while the weights are pushed again mid-collection (as
    version v + 1, from another thread): each trajectory's versions never go back, forced and
    observation tokens carry the version of the token before them, and some episodes span both."""
    engine = policy.use("trained")
    v = engine.weights_version()
    env, calls, pushes = EchoEnv(), [0], []

    async def generate_one(request: GenRequest) -> GenOutput:
        calls[0] += 1
        if calls[0] == 7:  # the first request of the second round of turns
            pushes.append(asyncio.get_running_loop().run_in_executor(None, lambda: engine.update_weights(policy.states["trained"], version=v + 1)))
        return await engine.generate_one(request)

    groups = asyncio.run(collect({env.name: env}, [(t, ReasoningMode(False)) for t in make_tasks("echo", 3)], 2, tokenizer=tokenizer,
                                 generate_one=generate_one, sampling=SamplingConfig(temperature=0.7, max_new_tokens=160), max_turns=4, seed=5))  # fmt: skip
    assert len(pushes) == 1 and engine.weights_version() == v + 1
    spans = 0
    for t in (t for group in groups for t in group):
        versions = t.weight_versions
        assert versions is not None and len(versions) == len(t.completion_ids)
        assert versions == sorted(versions) and set(versions) <= {v, v + 1}
        assert all(versions[i] == versions[i - 1] for i in range(1, len(versions)) if t.loss_mask[i] == 0)
        spans += set(versions) == {v, v + 1}
    assert spans > 0, "no episode ran across the update"
