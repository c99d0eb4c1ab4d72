"""The smallest verifier plugin: the four contract members, plus self-checks for `align envs test`."""

from typing import ClassVar

from envs.base import Message, NoParams, SelfCheck, StepResult, Task, split_thinking


class ReverseWordVerifier:
    name: ClassVar[str] = "reverse_word_verifier"
    Params: ClassVar[type[NoParams]] = NoParams

    def __init__(self, params: NoParams) -> None:
        self.params = params

    def reset(self, task: Task) -> list[Message]:
        return list(task.prompt)

    async def step(self, task: Task, history: list[Message], action: str) -> StepResult:
        correct = split_thinking(action)[1].strip().lower() == task.answer
        return StepResult(reward=float(correct), done=True, correct=correct)

    def self_checks(self) -> list[SelfCheck]:
        task = Task("reverse-star", self.name, [{"role": "user", "content": "Reverse the word: star"}], "rats")
        return [SelfCheck(task, ["<think>s-t-a-r</think>rats"], True), SelfCheck(task, ["<think></think>star"], False)]
