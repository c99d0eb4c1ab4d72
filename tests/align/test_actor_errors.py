"""Errors raised inside actors name the actor and the recipe key; what can be checked early is."""

import json

import pytest

from align.actor_errors import ActorSetupError, check_max_model_len, explain


def _config(tmp_path, **extra) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512, **extra}))
    return str(tmp_path)


def test_max_model_len_above_the_models_positions_is_refused_before_an_engine_starts(tmp_path) -> None:
    from align.cluster import RolloutGroup
    from align.config.schema import ClusterConfig, RolloutConfig

    path = _config(tmp_path)
    with pytest.raises(ActorSetupError, match=r"rollout.max_model_len=1024 is more than the model's 512 positions .*set rollout.max_model_len=512"):
        RolloutGroup(ClusterConfig(), RolloutConfig(max_model_len=1024), path, seed=0, in_process=True)
    check_max_model_len(path, 512)  # fits
    check_max_model_len(_config(tmp_path, rope_scaling={"factor": 4.0}), 1024)  # vLLM may allow more: it decides


def test_vllms_own_max_model_len_error_names_the_actor_and_the_key(tmp_path) -> None:
    """The real error vLLM raises (its config check, no engine started), as an actor's set-up would."""
    from vllm.config import ModelConfig

    from align.config.schema import ModelConfig as AlignModel, TokenizerConfig
    from align.init_checkpoint import prepare_initial_checkpoint

    path = prepare_initial_checkpoint(AlignModel(), TokenizerConfig(vocab_size=300), tmp_path / "init", texts=["a b c"] * 50)
    positions = json.loads((path / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(ValueError) as info:
        ModelConfig(model=str(path), max_model_len=positions * 4)
    err = explain("rollout engine 0", "VLLMEngine.__init__: starting vLLM", RuntimeError(f"ray traceback...\n{type(info.value).__name__}: {info.value}"))
    assert isinstance(err, ActorSetupError)
    msg = str(err)
    assert msg.startswith("rollout engine 0 failed in VLLMEngine.__init__: starting vLLM: ")
    assert f"User-specified max_model_len ({positions * 4})" in msg and "lower rollout.max_model_len" in msg
    assert explain("learner 0", "setup", RuntimeError("some bug")) is None  # not a user error: keeps its traceback
