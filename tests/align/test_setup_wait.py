"""Set-up waits report an actor's first failed call, the cause, whichever failure Ray hands over first."""

import time

import pytest
import ray

from align.actor_errors import ActorSetupError
from align.cluster import init_ray
from align.setup_wait import Step, _first_failure, deadline_in, wait_setup


@ray.remote(num_cpus=0)
class TwoCalls:
    """A learner's set-up in small: the second call fails because the first did."""

    def load_model(self) -> None:
        raise ValueError("learner.freeze: no parameter name has a match for layers.9.mixer")

    def build_engine(self) -> None:
        raise RuntimeError("Learner.build_engine needs a model: load_model did not finish")

    def load_other(self) -> None:
        raise OSError("disk full")  # no recipe key fixes it


@pytest.fixture(scope="module")
def steps() -> list[Step]:
    init_ray()
    actor = TwoCalls.remote()
    out = [Step("learner 0 (rank 0)", "Learner.load_model", actor.load_model.remote()),
           Step("learner 0 (rank 0)", "Learner.build_engine", actor.build_engine.remote())]  # fmt: skip
    ray.wait([s.ref for s in out], num_returns=2)
    return out


def test_the_first_failed_call_of_the_actor_is_the_one_reported(steps: list[Step]) -> None:
    step, error = _first_failure(steps, steps[1], RuntimeError("later"))
    assert step is steps[0] and "learner.freeze" in str(error)
    assert _first_failure(steps, steps[0], ValueError("first"))[0] is steps[0]


def test_wait_setup_words_the_cause_and_returns_at_once(steps: list[Step]) -> None:
    t0 = time.monotonic()
    with pytest.raises(ActorSetupError, match=r"(?s)learner 0 \(rank 0\) failed in Learner.load_model: .*To fix it: correct learner.freeze"):
        wait_setup(steps, deadline_in(30), 30)
    assert time.monotonic() - t0 < 5


def test_a_failure_no_key_fixes_is_raised_as_it_is_the_first_one() -> None:
    init_ray()
    actor = TwoCalls.remote()
    steps = [Step("learner 0 (rank 0)", "Learner.load_model", actor.load_other.remote()),
             Step("learner 0 (rank 0)", "Learner.build_engine", actor.build_engine.remote())]  # fmt: skip
    ray.wait([s.ref for s in steps], num_returns=2)
    with pytest.raises(OSError, match="disk full"):
        wait_setup(steps, deadline_in(30), 30)


def test_build_engine_after_a_failed_load_model_names_it() -> None:
    from align.learner.engine import Learner

    with pytest.raises(RuntimeError, match="load_model did not finish"):
        Learner(rank=0, world_size=1).build_engine(total_steps=1)
