"""A dropped engine is freed, and leaves vLLM's process groups to the engines around it.

vLLM keeps its distributed groups in module globals (``vllm.distributed.parallel_state``): an
engine's build reuses the world group it finds there. vLLM's in-process client tears them down
from a finalizer when the garbage collector reaches a dropped engine, at any allocation on any
thread. CI once failed when that ran in the middle of the next test's engine build:
``'GroupCoordinator' object has no attribute 'device_group'`` (rollout.engine._build_llm).
"""

from __future__ import annotations

import gc

from vllm.distributed import parallel_state

from rollout.types import GenRequest

REQUEST = [GenRequest([5, 6, 7], 4, temperature=1.0, seed=0)]


def test_a_dropped_engine_ends_its_thread_and_leaves_the_process_groups(tiny_checkpoint, make_engine) -> None:
    # The first engine of a process keeps itself alive through the tracebacks its first imports
    # leave in some libraries; the one dropped here is the second.
    kept = make_engine(tiny_checkpoint)
    engine = make_engine(tiny_checkpoint)
    assert len(engine.generate(REQUEST)[0].token_ids) == 4
    world, thread = parallel_state.get_world_group(), engine._loop._thread
    del engine  # its __del__ closes it: its thread drops the vLLM engine and ends
    thread.join(timeout=30)
    assert not thread.is_alive(), "the dropped engine's thread did not end within 30 s"
    gc.unfreeze()  # vLLM froze the heap at the build: only now can the collector reach the dropped engine
    gc.collect()
    assert parallel_state._WORLD is world and hasattr(world, "device_group"), "collecting the dropped engine destroyed vLLM's world group"
    assert len(kept.generate(REQUEST)[0].token_ids) == 4
    again = make_engine(tiny_checkpoint)  # builds on the same world group
    assert len(again.generate(REQUEST)[0].token_ids) == 4
