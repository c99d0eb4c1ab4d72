"""Plugin discovery: built-ins, a real pip-installed plugin, precedence, duplicates, broken plugins, safe_step."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from align.plugins import DuplicatePluginError, PluginLoadError, PluginParamsError, UnknownPluginError
from envs.base import Environment, NoParams, StepResult, safe_step
from envs.cli import play
from envs.math import MathEnv, MathParams
from envs.registry import ENVS, available_envs, get_env_class, make_env, register_env
from rewards.registry import REWARDS, available_rewards, get_reward_class, make_reward

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "align-env-example"


def write_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str] | None = None) -> Path:
    """A minimal installed distribution (dist-info + modules) under ``root``, as pip would leave it."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[align.envs]\n{lines}\n")
    for name, source in (modules or {}).items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


@pytest.fixture
def plugin_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Put folders on sys.path for one test; discovery is refreshed before and after."""
    before = set(sys.modules)

    def add(path: Path) -> None:
        monkeypatch.syspath_prepend(str(path))
        ENVS.refresh()

    yield add
    monkeypatch.undo()
    for name in set(sys.modules) - before:
        if name.startswith(("align_env_example", "fake_plugin")):
            del sys.modules[name]
    ENVS.refresh()


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/align-env-example installed by pip into a temp dir (copied first: the build writes in-tree)."""
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "--target", str(target), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    assert (target / "align_env_example").is_dir()
    return target


# ------------------------------------------------------------------ built-ins


def test_builtins_are_listed_with_their_source() -> None:
    envs = available_envs()
    for name in ("math", "instruction_following"):
        info = envs[name]
        assert info.ok, info.error
        assert info.source == "built-in"
        assert info.package.startswith("align ")
        assert info.description
    assert envs["math"].cls is MathEnv
    for name in ("math", "instruction_following"):
        assert isinstance(make_env(name), Environment)
    assert {"code", "tool_use"} <= set(envs)  # listed even while unimplemented: with an error, not a crash


def test_builtin_rewards_are_listed() -> None:
    rewards = available_rewards()
    for name, module in (("format", "rewards.format"), ("reasoning_budget", "rewards.budget"), ("length", "rewards.length")):
        assert rewards[name].ok, rewards[name].error
        assert rewards[name].source == "built-in"
        assert get_reward_class(name).__module__ == module
    assert make_reward("length", {"buffer_tokens": 8}).params.buffer_tokens == 8


def test_make_env_validates_params() -> None:
    env = make_env("math", {"difficulty": [1]})
    assert isinstance(env, MathEnv) and env.params == MathParams(difficulty=(1,))
    assert make_env("math", MathParams(difficulty=(2,))).params.difficulty == (2,)
    with pytest.raises(PluginParamsError) as e:
        make_env("math", {"difficulty": [1], "dificulty": [2]})
    assert "environment 'math'" in str(e.value) and "dificulty: unknown field (did you mean 'difficulty'?)" in str(e.value)


def test_validate_params_for_the_recipe_loader() -> None:
    assert ENVS.validate_params("math", {"difficulty": [3]}) == MathParams(difficulty=(3,))
    assert REWARDS.validate_params("length", None).buffer_tokens == 32
    with pytest.raises(PluginParamsError, match=r"reward function 'length'[\s\S]*buffer_tokens"):
        REWARDS.validate_params("length", {"buffer_tokens": 0})
    with pytest.raises(UnknownPluginError, match="Did you mean 'length'"):
        REWARDS.validate_params("lenght", {})


def test_unknown_name_lists_candidates_and_a_close_match() -> None:
    with pytest.raises(UnknownPluginError) as e:
        get_env_class("maths")
    msg = str(e.value)
    assert "unknown environment 'maths'" in msg and "Did you mean 'math'?" in msg
    assert "instruction_following" in msg and "math" in msg
    with pytest.raises(UnknownPluginError) as e:
        get_env_class("zzzz")
    assert "Did you mean" not in str(e.value) and "Available:" in str(e.value)


# ------------------------------------------------------------------ a real plugin package


def test_pip_installed_example_is_discovered(installed_example: Path, plugin_path) -> None:
    assert "reverse_word" not in available_envs()
    plugin_path(installed_example)
    info = available_envs()["reverse_word"]
    assert info.ok, info.error
    assert info.source == "entry point (align-env-example)"
    assert info.package == "align-env-example 0.1.0"
    assert info.target == "align_env_example:ReverseWordEnv"
    env = make_env("reverse_word", {"max_letters": 3})
    tasks = env.generate(5, seed=0)
    assert all(len(t.meta["word"]) <= 3 for t in tasks)
    results = [asyncio.run(play(env, c)) for c in env.self_checks()]
    assert [r.correct for r in results] == [c.expect_correct for c in env.self_checks()]
    with pytest.raises(PluginParamsError, match="reverse_word"):
        make_env("reverse_word", {"max_letters": 1})


def test_minimal_verifier_plugin_passes_envs_test(installed_example: Path, plugin_path, capsys, monkeypatch) -> None:
    """The example's minimal form: 25 lines or fewer, one import source, the four contract members
    plus self-checks; `align envs test` passes it, and what needs a TaskSource says what is missing."""
    from align.cli import main
    from envs.base import SelfChecking, TaskSource

    source = (EXAMPLE / "align_env_example" / "minimal.py").read_text()
    assert len(source.splitlines()) <= 25
    assert [line for line in source.splitlines() if line.startswith(("from ", "import "))] == [
        "from typing import ClassVar",
        "from envs.base import Message, NoParams, SelfCheck, StepResult, Task, split_thinking",
    ]
    plugin_path(installed_example)
    import envs.cli

    monkeypatch.setattr(envs.cli.out, "_width", 250)
    monkeypatch.setattr(envs.cli.err, "_width", 250)
    info = available_envs()["reverse_word_verifier"]
    assert info.ok, info.error
    env = make_env("reverse_word_verifier")
    assert isinstance(env, Environment) and isinstance(env, SelfChecking) and not isinstance(env, TaskSource)
    assert main(["envs", "test", "reverse_word_verifier"]) == 0
    assert "2/2 self-checks passed" in capsys.readouterr().out
    assert main(["envs", "sample", "reverse_word_verifier"]) == 2
    assert "generates no tasks (it lacks generate, demonstrate, corrupt of envs.base.TaskSource)" in capsys.readouterr().err


def test_envs_test_without_self_checks_says_what_to_add(capsys, monkeypatch) -> None:
    from align.cli import main

    class Bare:
        name: ClassVar[str] = "bare_verifier"
        Params: ClassVar[type] = NoParams

        def __init__(self, params: NoParams) -> None: ...

        def reset(self, task):  # noqa: ANN001, ANN201
            return task.prompt

        async def step(self, task, history, action):  # noqa: ANN001, ANN201
            return StepResult(reward=0.0, done=True)

    register_env(Bare)
    try:
        assert isinstance(make_env("bare_verifier"), Environment)
        assert main(["envs", "test", "bare_verifier"]) == 1
        assert "bare_verifier has no self_checks()" in capsys.readouterr().err
    finally:
        ENVS.unregister("bare_verifier")


def test_two_entry_points_of_one_name_are_an_error_naming_both(installed_example: Path, plugin_path, tmp_path: Path) -> None:
    plugin_path(installed_example)
    plugin_path(write_dist(tmp_path / "dupe", "align-env-dupe", {"reverse_word": "align_env_example:ReverseWordEnv"}))
    with pytest.raises(DuplicatePluginError) as e:
        get_env_class("reverse_word")
    msg = str(e.value)
    assert "align-env-example" in msg and "align-env-dupe" in msg and "same precedence" in msg
    listed = available_envs()
    assert listed["reverse_word"].error and "align-env-dupe" in listed["reverse_word"].error
    assert listed["math"].ok  # one ambiguous name does not break the others


def test_explicit_beats_builtin_beats_entry_point(installed_example: Path, plugin_path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ENVS, "_explicit", {})
    plugin_path(installed_example)
    # A third-party package cannot silently take over a built-in name...
    plugin_path(write_dist(tmp_path / "hijack", "align-env-hijack", {"math": "align_env_example:ReverseWordEnv"}))
    assert get_env_class("math") is MathEnv
    assert available_envs()["math"].source == "built-in"

    class MyMath(MathEnv):
        description: ClassVar[str] = "my own math"

    # ...but explicit registration overrides both a built-in and an entry point.
    register_env(MyMath)
    assert get_env_class("math") is MyMath
    assert available_envs()["math"].source == "explicit"
    rw = get_env_class("reverse_word")

    class MyReverse(rw):  # type: ignore[misc, valid-type]
        pass

    register_env(MyReverse)
    assert get_env_class("reverse_word") is MyReverse
    register_env(MyReverse)  # the same class again is fine
    with pytest.raises(DuplicatePluginError, match="registered twice explicitly"):
        register_env(MyMath, name="reverse_word")
    ENVS.unregister("math")
    assert get_env_class("math") is MathEnv


def test_register_refuses_classes_that_are_not_environments(monkeypatch) -> None:
    monkeypatch.setattr(ENVS, "_explicit", {})

    class NotAnEnv:
        name = "nope"

    with pytest.raises(PluginLoadError, match="missing Params"):
        register_env(NotAnEnv)

    class SyncStep(MathEnv):
        name: ClassVar[str] = "sync_step"

        def step(self, task, history, action):  # type: ignore[override]
            return StepResult(0.0, True)

    with pytest.raises(PluginLoadError, match="step must be an async method"):
        register_env(SyncStep)


def test_a_plugin_that_fails_to_import_is_listed_with_its_error(plugin_path, tmp_path: Path) -> None:
    broken = write_dist(
        tmp_path / "broken",
        "align-env-broken",
        {"broken_env": "fake_plugin_broken:Env", "misnamed": "fake_plugin_ok:Env", "not_a_class": "fake_plugin_ok:VALUE"},
        {
            "fake_plugin_broken": "import numpy_does_not_exist_here\n",
            "fake_plugin_ok": "from envs.math import MathEnv as Env\nVALUE = 3\n",
        },
    )
    plugin_path(broken)
    listed = available_envs()
    assert listed["math"].ok and listed["instruction_following"].ok
    assert listed["broken_env"].cls is None
    assert "ModuleNotFoundError" in listed["broken_env"].error and "numpy_does_not_exist_here" in listed["broken_env"].error
    assert listed["broken_env"].source == "entry point (align-env-broken)"
    assert "class's name is 'math'" in listed["misnamed"].error
    assert "not a class" in listed["not_a_class"].error
    with pytest.raises(PluginLoadError, match=r"environment 'broken_env' \(entry point \(align-env-broken\)"):
        make_env("broken_env")


# ------------------------------------------------------------------ a crashing plugin at run time


def test_a_crashing_step_fails_that_sample_and_the_caller_goes_on(monkeypatch, crashing_env_cls: type) -> None:
    monkeypatch.setattr(ENVS, "_explicit", {})
    register_env(crashing_env_cls)
    env = make_env("crashing")
    math_env = make_env("math")
    tasks = env.generate(3, seed=1)
    math_task = math_env.generate(1, seed=0)[0]

    async def batch():
        return await asyncio.gather(
            safe_step(env, tasks[0], [], "fine"),
            safe_step(env, tasks[1], [], "boom"),
            safe_step(env, tasks[2], [], "wrong type"),
            safe_step(math_env, math_task, [], math_env.demonstrate(math_task)[0]["content"]),
        )

    fine, boom, wrong_type, math_result = asyncio.run(batch())
    assert fine.correct is True and fine.reward == 1.0 and "error" not in fine.info
    assert (boom.reward, boom.done, boom.correct) == (0.0, True, False)
    assert boom.info["error"] == "ZeroDivisionError: plugin bug"
    assert boom.info["task_id"] == tasks[1].id and boom.info["env"] == "crashing"
    assert "raise ZeroDivisionError" in boom.info["traceback"]
    assert wrong_type.correct is False and "expected StepResult" in wrong_type.info["error"]
    assert math_result.correct is True
    assert env.calls == 3


def test_rewards_registry_has_the_same_rules(monkeypatch) -> None:
    monkeypatch.setattr(REWARDS, "_explicit", {})
    with pytest.raises(UnknownPluginError, match="Did you mean 'format'"):
        make_reward("formatt")
    base = get_reward_class("format")

    class Strict(base):  # type: ignore[misc, valid-type]
        pass

    REWARDS.register(Strict)
    assert available_rewards()["format"].source == "explicit"
    assert get_reward_class("format") is Strict
