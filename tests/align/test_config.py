"""Recipes: every shipped recipe validates; errors name the file, the key and the closest key."""

from pathlib import Path

import pytest

from align.cli import main
from align.config import RecipeError, list_recipes, load_recipe


@pytest.mark.parametrize("name", sorted(list_recipes()))
def test_every_shipped_recipe_validates(name: str) -> None:
    loaded = load_recipe(name)
    assert loaded.recipe.job in {"sft", "dpo", "rm", "rl", "pipeline"}
    assert loaded.recipe.output_dir == f"runs/{name}"


def test_pipeline_stages_name_shipped_recipes() -> None:
    jobs = [load_recipe(stage.recipe).recipe.job for stage in load_recipe("tiny").recipe.stages]
    assert jobs == ["sft", "rm", "dpo", "rl"]


def test_extends_merges_base_then_child() -> None:
    loaded = load_recipe("nano3-multienv-tiny")
    tiny, full = loaded.recipe, load_recipe("nano3-multienv").recipe
    assert [p.name for p in loaded.files] == ["nano3-multienv.yaml", "nano3-multienv-tiny.yaml"]
    assert tiny.grpo.baseline == full.grpo.baseline == "leave_one_out"  # inherited
    assert (tiny.grpo.clip_low, tiny.grpo.clip_high, tiny.grpo.kl_coef) == (0.2, 0.28, 0.0)
    assert tiny.grpo.prompts_per_step == 16 and full.grpo.prompts_per_step == 128  # overridden
    assert tiny.rollout.sampling.temperature == 1.0 and tiny.rollout.sampling.max_new_tokens == 160  # deep merge
    assert [e.name for e in tiny.envs] == ["math", "code", "tool_use", "instruction_following"]


def test_full_scale_recipe_settings() -> None:
    r = load_recipe("nano3-multienv").recipe
    assert (r.grpo.prompts_per_step, r.grpo.generations_per_prompt) == (128, 16)
    assert r.grpo.overlong_filtering and r.cluster.gpus_needed(with_rollout=True) >= 8
    # Nemotron 3 Nano's published RL settings for its MoE hybrid.
    assert r.learner.freeze_router is True and r.grpo.max_seq_logprob_error == 2.0
    assert (r.grpo.baseline, r.grpo.clip_low, r.grpo.clip_high, r.grpo.loss_aggregation) == ("leave_one_out", 0.2, 0.28, "token")


def test_routing_replay_off_survives_yaml_booleans() -> None:
    """A bare `off` is YAML's false: the recipe file and the command line both mean replay off."""
    assert load_recipe("nano3-multienv").recipe.grpo.routing_replay == "off"
    assert load_recipe("nano3-multienv-tiny", ["grpo.routing_replay=off"]).recipe.grpo.routing_replay == "off"
    replay = ["grpo.routing_replay=rollout", "rollout.return_routed_experts=true"]
    assert load_recipe("nano3-multienv-tiny", replay).recipe.grpo.routing_replay == "rollout"
    with pytest.raises(RecipeError, match="set rollout.return_routed_experts=true"):
        load_recipe("nano3-multienv-tiny", replay[:1])
    with pytest.raises(RecipeError, match="routing_replay"):
        load_recipe("nano3-multienv-tiny", ["grpo.routing_replay=on"])


def test_override_is_revalidated() -> None:
    r = load_recipe("tiny-sft", ["learner.lr=0.5", "sft.max_steps=7", "data.generated.envs={math: 1.0}"]).recipe
    assert r.learner.lr == 0.5 and r.sft.max_steps == 7 and r.data.generated.envs == {"math": 1.0}
    with pytest.raises(RecipeError, match=r"learner.lr.*greater than 0"):
        load_recipe("tiny-sft", ["learner.lr=-1"])


def test_override_of_a_numeric_dict_key_replaces_it() -> None:
    """grade_weights' keys are YAML ints; `...grade_weights.1=8` edits grade 1, not a new key '1' beside it."""
    params = load_recipe("tiny-sft", ["data.generated.params.math.grade_weights.1=8"]).recipe.data.generated.params
    assert params["math"]["grade_weights"] == {1: 8, 2: 4, 3: 3, 4: 3}
    added = load_recipe("tiny-sft", ["data.generated.params.math.grade_weights.7=1"]).recipe.data.generated.params
    assert added["math"]["grade_weights"] == {1: 2, 2: 4, 3: 3, 4: 3, "7": 1}


def test_streaming_weight_sync_with_overlap_is_refused() -> None:
    ok = load_recipe("nano3-multienv-tiny", ["grpo.off_policy_overlap=true"]).recipe
    assert ok.rollout.weight_sync == "auto"
    with pytest.raises(RecipeError, match=r"rollout.weight_sync=cuda_ipc.*grpo.off_policy_overlap.*snapshot"):
        load_recipe("nano3-multienv-tiny", ["grpo.off_policy_overlap=true", "rollout.weight_sync=cuda_ipc"])
    with pytest.raises(RecipeError, match=r"weight_sync"):
        load_recipe("nano3-multienv-tiny", ["rollout.weight_sync=nccl"])


def test_recipe_is_frozen() -> None:
    r = load_recipe("tiny-sft").recipe
    with pytest.raises(Exception):
        r.learner.lr = 1.0  # type: ignore[misc]


def test_typo_in_file_names_file_key_and_closest(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny-sft\nlearner:\n  micro_bach_size_per_device: 4\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(bad))
    msg = str(e.value)
    assert str(bad) in msg
    assert "unknown key 'learner.micro_bach_size_per_device'" in msg
    assert "Did you mean 'learner.micro_batch_size_per_device'?" in msg


def test_typo_in_list_item(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("job: rl\nenvs:\n  - {name: math, wieght: 2}\n")
    with pytest.raises(RecipeError, match=r"unknown key 'envs.0.wieght'. Did you mean 'envs.0.weight'"):
        load_recipe(str(bad))


def test_reward_limited_to_an_unknown_env_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The genrm reward's params.envs must name the recipe's environments: exit 2, naming the field."""
    with pytest.raises(RecipeError, match=r"rewards.0 \(genrm\)(.|\n)*envs: .*\['chta'\].*envs \['chat'\]"):
        load_recipe("tiny-rlhf", ["rewards.0.params.envs=[chta]"])
    assert load_recipe("tiny-rlhf", ["rewards.0.params.envs=[chat]"]).recipe.rewards[0].params["envs"] == ["chat"]
    monkeypatch.chdir(tmp_path)
    assert main(["rl", "--recipe", "tiny-rlhf", "rewards.0.params.envs=[chta]"]) == 2
    err = capsys.readouterr()
    assert "rewards.0 (genrm)" in err.out + err.err and "envs: names ['chta']" in err.out + err.err
    assert not (tmp_path / "runs").exists()


def test_envs_param_of_another_reward_is_its_own_business(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the genrm reward checks params.envs against the recipe; another reward's `envs` means what it says."""
    from pydantic import BaseModel

    from rewards.registry import REWARDS

    class EnvelopeParams(BaseModel):
        envs: list[str] = []  # envelope sizes, not environments

    class Envelope:
        name = "envelope"
        description = "a reward whose params have a key `envs` of its own"
        Params = EnvelopeParams

        def __init__(self, params: EnvelopeParams) -> None:
            self.params = params

        def score(self, batch: list) -> list[float | None]:  # pragma: no cover - never run, only validated
            return [0.0 for _ in batch]

    monkeypatch.setattr(REWARDS, "_explicit", {})
    REWARDS.register(Envelope)
    loaded = load_recipe("tiny-rlhf", ["rewards=[{name: envelope, params: {envs: [C5, DL]}}]"])
    assert loaded.recipe.rewards[0].params == {"envs": ["C5", "DL"]}


def test_cli_typo_exits_2_and_creates_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "runs"
    code = main(["sft", "--recipe", "tiny-sft", "learner.lrr=1", f"output_dir={out_dir}"])
    assert code == 2
    assert "Did you mean 'learner.lr'" in capsys.readouterr().err
    assert not out_dir.exists()


def test_cli_unknown_recipe_lists_shipped(capsys) -> None:
    assert main(["recipes", "show", "tiny-sfft"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean: tiny-sft" in err and "nano3-multienv" in err


def test_cli_wrong_job_for_recipe(capsys) -> None:
    assert main(["dpo", "--recipe", "tiny-sft"]) == 2
    assert "for 'align sft', not 'align dpo'" in capsys.readouterr().err


def test_recipes_show_prints_defaults(capsys) -> None:
    assert main(["recipes", "show", "nano3-multienv"]) == 0
    out = capsys.readouterr().out
    assert "prompts_per_step: 128" in out and "min_lr_ratio: 0.1" in out  # a default never written in the file


def test_data_lives_only_on_jobs_that_read_rows(capsys) -> None:
    assert main(["recipes", "show", "nano3-multienv-tiny"]) == 0
    assert "\ndata:" not in capsys.readouterr().out
    assert main(["recipes", "show", "tiny-dpo"]) == 0
    assert "\ndata:" in capsys.readouterr().out
    with pytest.raises(RecipeError, match="unknown key 'data'"):
        load_recipe("nano3-multienv-tiny", ["data.path=rows.jsonl"])


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b.yaml\njob: sft\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\njob: sft\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_env_params_are_validated_by_the_plugin(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: nano3-multienv-tiny\nenvs:\n  - {name: math, params: {dificulty: 2}}\n")
    with pytest.raises(RecipeError, match=r"(?s)envs.0 \(math\).*dificulty.*did you mean .difficulty"):
        load_recipe(str(bad))
    bad.write_text("extends: nano3-multienv-tiny\nenvs:\n  - {name: maths}\n")
    with pytest.raises(RecipeError, match=r"(?s)envs.0 \(maths\).*math"):
        load_recipe(str(bad))
