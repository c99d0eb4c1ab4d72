"""Rollout overhead: generated tokens/s of our rollout layers against bare ``vllm.LLM.generate``.

    .venv/bin/python bench/bench_rollout.py [--repeats 5] [--prompts 32] [--generations 8]
                                            [--checkpoint runs/tiny-sft/final] [--profile]
                                            [--envs math,code] [--variants episodes_ray,episodes_replay]
                                            [--out bench/results/rollout.json]

Every variant generates the same requests: the same prompts (RL prompts of the
``nano3-multienv-tiny`` recipe's four environments, rendered with their reasoning mode), the
same sampling parameters (the recipe's temperature and ``max_new_tokens``, the eos token as
stop, one seed per request) and, for the bare engines, the same ``vllm.LLM`` settings as
``rollout/engine.py`` passes on CPU (float32, eager, prefix caching and chunked prefill off,
``max_num_batched_tokens=max(4096, max_model_len)``, the recipe's KV cache). The script checks
that the settings match by reading both engines' vLLM configs.

Variants (each timed once per repeat, the order rotating between repeats; medians reported):

- ``bare``: a ``vllm.LLM`` of its own in this process, ``LLM.generate`` with the same
  ``SamplingParams`` as ours (``logprobs=0``, ``detokenize=False``);
- ``bare_nologprobs``: the same without log-probabilities (what they cost, for reference);
- ``engine``: ``rollout.engine.VLLMEngine.generate`` in this process (the per-request engine
  loop, all requests added to one step: against ``bare``, what the loop costs over the batch
  ``LLM.generate`` the engine called before);
- ``episodes_batched``: ``rollout.collect.collect`` over the in-process engine through a
  ``Batcher`` (each round of turns waits for the whole batch: the old path), and
  ``episodes_per_request``: the same episodes, each request sent on its own with
  ``VLLMEngine.generate_one`` (an episode's next turn starts as soon as its own request ends);
- ``bare_ray``: a bare ``vllm.LLM`` inside a Ray actor placed like a rollout engine (1 CPU);
- ``group_ray``: ``RolloutGroup.generate`` through Ray, what the RL driver calls;
- ``episodes_ray``: ``rollout.collect.collect`` over ``RolloutGroup.generate`` (episodes,
  budget phases, multi-turn tool and code environments with their verifiers), and
  ``episodes_replay``: the exact request batches that run sent, replayed with bare
  ``LLM.generate`` in the ``bare_ray`` actor. Their ratio is what the episode layer adds on
  top of the engine for the same generated tokens.

The checkpoint is copied to a temporary folder first (other jobs may rewrite ``runs/``).
Besides wall time, each variant's CPU time (this process, the two Ray actors and waited-for
children) is recorded as tokens per CPU-second; on the shared 2-core machine it turned out no
steadier than wall time. The episode path also records the time spent inside and outside
engine calls and the environments' step time (``--envs`` restricts the environments, to
separate their cost from the rollout code's).

Writes ``bench/results/rollout.json``. ``--profile`` also writes a cProfile listing of the
``engine`` and ``episodes`` paths (in-process) to ``bench/results/rollout_profile.txt``.

Limits: wall-clock timings on a shared 2-core machine. Variants run one at a time (a Ray
actor idles while the driver process generates and vice versa), but other jobs' load lands
on whichever variant is running; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from align.learner.ds_build import use_align_cache  # noqa: E402

use_align_cache()  # where `make install` built DeepSpeed's CPU comm op

RESULTS = Path(__file__).resolve().parent / "results" / "rollout.json"
PROFILE = Path(__file__).resolve().parent / "results" / "rollout_profile.txt"
RECIPE = "nano3-multienv-tiny"


def bare_llm_kwargs(model_path: str, seed: int, rollout: Any, dtype: str) -> dict[str, Any]:
    """The ``vllm.LLM`` arguments ``VLLMEngine`` passes on CPU for this recipe, written out."""
    kwargs: dict[str, Any] = dict(
        model=model_path,
        seed=seed,
        dtype=dtype,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        max_model_len=rollout.max_model_len,
        enforce_eager=rollout.enforce_eager,
        logprobs_mode="processed_logprobs",
        enable_chunked_prefill=False,
        max_num_batched_tokens=max(4096, rollout.max_model_len),
        enable_prefix_caching=False,
    )
    if rollout.kv_cache_memory_mb:
        kwargs["kv_cache_memory_bytes"] = rollout.kv_cache_memory_mb * 2**20
    return kwargs


def engine_settings(llm: Any) -> dict[str, Any]:
    """The vLLM settings that change generation speed, read back from a built engine."""
    c = llm.llm_engine.vllm_config
    return {
        "dtype": str(c.model_config.dtype),
        "max_model_len": c.model_config.max_model_len,
        "enforce_eager": c.model_config.enforce_eager,
        "logprobs_mode": str(c.model_config.logprobs_mode),
        "enable_prefix_caching": c.cache_config.enable_prefix_caching,
        "enable_chunked_prefill": c.scheduler_config.enable_chunked_prefill,
        "max_num_batched_tokens": c.scheduler_config.max_num_batched_tokens,
        "max_num_seqs": c.scheduler_config.max_num_seqs,
        "kv_cache_memory_bytes": c.cache_config.kv_cache_memory_bytes,
    }


# A request as plain data, so the Ray actor needs nothing of ours to replay it:
# (prompt_token_ids, max_tokens, temperature, top_p, top_k, seed, stop_token_ids).
Plain = tuple[list[int], int, float, float, int, int | None, list[int]]


def plain(req: Any) -> Plain:
    return (list(req.prompt_token_ids), req.max_tokens, req.temperature, req.top_p, req.top_k, req.seed, list(req.stop_token_ids))


class BareVLLM:
    """A ``vllm.LLM`` driven with plain ``LLM.generate`` calls: the baseline.

    Used in this process and, through ``ray.remote``, as an actor placed like a rollout engine.
    """

    def __init__(self, llm_kwargs: dict[str, Any]) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        import vllm

        self.vllm = vllm
        self.llm = vllm.LLM(**llm_kwargs)

    def settings(self) -> dict[str, Any]:
        return engine_settings(self.llm)

    def generate(self, requests: Sequence[Plain], logprobs: bool = True) -> int:
        """Generate ``requests`` in one ``LLM.generate`` call; returns the number of generated tokens."""
        sp = self.vllm.SamplingParams
        params = [
            sp(max_tokens=m, temperature=t, top_p=p, top_k=k if k > 0 else -1, seed=s, stop_token_ids=stop,
               logprobs=0 if logprobs else None, detokenize=False)
            for _, m, t, p, k, s, stop in requests
        ]  # fmt: skip
        prompts = [{"prompt_token_ids": ids} for ids, *_ in requests]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return sum(len(r.outputs[0].token_ids) for r in results)

    def replay(self, batches: Sequence[Sequence[Plain]]) -> tuple[int, float]:
        """Generate each batch in turn; returns (tokens, seconds spent inside ``LLM.generate``)."""
        start = time.perf_counter()
        tokens = sum(self.generate(batch) for batch in batches)
        return tokens, time.perf_counter() - start


class TimedEnv:
    """An environment as the episode runner sees it, plus the wall time spent in its ``step``.

    Steps of different episodes overlap, so ``step_s`` sums overlapping intervals: it measures
    the environments' work, not their share of the wall clock.
    """

    def __init__(self, env: Any) -> None:
        self._env = env
        self.step_s = 0.0
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)

    async def step(self, task: Any, history: Any, action: str) -> Any:
        t = time.perf_counter()
        try:
            return await self._env.step(task, history, action)
        finally:
            self.step_s += time.perf_counter() - t
            self.steps += 1


def children_cpu_seconds() -> float:
    """CPU time of this process's waited-for children (the code sandbox's ``bwrap`` runs)."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.children_user + t.children_system


def load_load() -> float:
    return round(os.getloadavg()[0], 2)


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user + system, own and waited-for children) of ``pids`` so far.

    Less sensitive than wall time to other jobs on a loaded machine: a process waiting for a
    core accrues none. Idle processes of the set accrue a little (Ray's background threads).
    """
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system + t.children_user + t.children_system
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/tiny-sft/final")
    p.add_argument("--prompts", type=int, default=32, help="distinct prompts per batch")
    p.add_argument("--generations", type=int, default=8, help="samples per prompt (one request each, own seed)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--skip-ray", action="store_true", help="in-process variants only")
    p.add_argument("--envs", default="", help="comma-separated subset of the recipe's environments (default: all)")
    p.add_argument("--out", default=str(RESULTS), help="where the JSON goes")
    p.add_argument("--variants", default="", help="comma-separated subset of the variants to time (default: all)")
    args = p.parse_args()

    from rich.console import Console
    from rich.table import Table

    from align.algorithms.rl.tasks import TaskMixer, assign_mode, load_tasks
    from align.cluster import RolloutGroup, init_ray
    from align.config import load_recipe
    from align.models import inference_dtype, load_tokenizer
    from envs.registry import make_env
    from rollout.batcher import engine_generate_fn
    from rollout.collect import collect
    from rollout.engine import VLLMEngine
    from rollout.chat import render_prompt_ids
    from rollout.episode import derive_seed
    from rollout.types import GenRequest

    r = load_recipe(RECIPE, job="rl").recipe
    sampling, ro = r.rollout.sampling, r.rollout
    dtype = inference_dtype(r.learner.precision)
    tmp = Path(tempfile.mkdtemp(prefix="bench_rollout_"))
    model_path = str(tmp / "policy")
    shutil.copytree(args.checkpoint, model_path)
    tokenizer = load_tokenizer(model_path)

    # The RL driver's prompts: the recipe's environments mixed by weight, each with its mode.
    specs = [s for s in r.envs if not args.envs or s.name in args.envs.split(",")]
    envs = {s.name: TimedEnv(make_env(s.name, s.params)) for s in specs}
    mixer = TaskMixer({s.name: load_tasks(s, envs[s.name], s.num_train, r.seed, "train") for s in specs}, {s.name: s.weight for s in specs}, r.seed)
    pairs = [(t, assign_mode(t, r.reasoning, r.seed)) for t in mixer.next(args.prompts)]
    g = args.generations
    requests = [
        GenRequest(render_prompt_ids(tokenizer, list(envs[t.env].reset(t)), mode), sampling.max_new_tokens, sampling.temperature,
                   sampling.top_p, sampling.top_k, [tokenizer.eos_token_id], derive_seed(0, t.id, i), f"{t.id}:{i}")
        for t, mode in pairs for i in range(g)
    ]  # fmt: skip
    plain_requests = [plain(q) for q in requests]
    llm_kwargs = bare_llm_kwargs(model_path, r.seed, ro, dtype)

    bare = BareVLLM(llm_kwargs)
    engine = VLLMEngine(model_path, seed=r.seed, gpu_memory_utilization=ro.gpu_memory_utilization, max_model_len=ro.max_model_len,
                        enforce_eager=ro.enforce_eager, dtype=dtype,
                        kv_cache_memory_bytes=ro.kv_cache_memory_mb * 2**20 if ro.kv_cache_memory_mb else None)  # fmt: skip
    settings = {"bare": bare.settings(), "engine": engine_settings(engine.llm)}
    if settings["bare"] != settings["engine"]:
        raise SystemExit(f"engine settings differ: {settings}")

    engine_call_s: list[float] = []  # time inside engine calls, per episodes() run

    def episodes(generate_fn: Callable[..., Any] | None, record: list[list[Plain]] | None, generate_one: Callable[..., Any] | None = None) -> int:
        """``generate_fn`` batch (through a Batcher, timed), or ``generate_one`` per request (calls overlap: not timed)."""
        engine_call_s.append(0.0)
        if generate_one is not None:
            groups = asyncio.run(collect(envs, pairs, g, tokenizer=tokenizer, generate_one=generate_one, sampling=sampling,
                                         max_turns=ro.max_turns, seed=0))  # fmt: skip
            return sum(t.num_policy_tokens for grp in groups for t in grp)

        async def recording(reqs: list[GenRequest]) -> list[Any]:
            if record is not None:
                record.append([plain(q) for q in reqs])
            t = time.perf_counter()
            out = await generate_fn(reqs)
            engine_call_s[-1] += time.perf_counter() - t
            return out

        groups = asyncio.run(collect(envs, pairs, g, tokenizer=tokenizer, generate=recording, sampling=sampling,
                                     max_turns=ro.max_turns, seed=0))  # fmt: skip
        return sum(t.num_policy_tokens for grp in groups for t in grp)

    variants: dict[str, Callable[[], int]] = {
        "bare": lambda: bare.generate(plain_requests),
        "bare_nologprobs": lambda: bare.generate(plain_requests, logprobs=False),
        "engine": lambda: sum(len(o.token_ids) for o in engine.generate(requests)),
        "episodes_batched": lambda: episodes(engine_generate_fn(engine), None),
        "episodes_per_request": lambda: episodes(None, None, engine.generate_one),
    }
    group = None
    batches: list[list[Plain]] = []
    pids = [os.getpid()]
    if not args.skip_ray:
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        init_ray(num_cpus=2)
        group = RolloutGroup(r.cluster, ro, model_path, r.seed, dtype=dtype)
        # Placed like a rollout engine: a 1-CPU bundle of its own placement group.
        pg = ray.util.placement_group([{"CPU": 1.0}], strategy="PACK")
        ray.get(pg.ready())
        bare_actor = ray.remote(BareVLLM).options(
            num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
        ).remote(llm_kwargs)  # fmt: skip
        settings["bare_ray"] = ray.get(bare_actor.settings.remote())
        settings["group_ray"] = ray.get(group.engines[0].__ray_call__.remote(lambda self: engine_settings(self.llm)))
        if not (settings["bare_ray"] == settings["group_ray"] == settings["bare"]):
            raise SystemExit(f"engine settings differ: {settings}")
        pids += ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in (bare_actor, group.engines[0])])
        variants["bare_ray"] = lambda: ray.get(bare_actor.generate.remote(plain_requests))
        variants["group_ray"] = lambda: sum(len(o.token_ids) for o in asyncio.run(group.generate(requests)))
        episodes(group.generate, batches)  # warm-up, and the batches the replay uses
        variants["episodes_ray"] = lambda: episodes(group.generate, None)
        variants["episodes_replay"] = lambda: ray.get(bare_actor.replay.remote(batches))[0]

    names = [n for n in variants if not args.variants or n in args.variants.split(",")]
    for name in names:  # warm-up: first calls pay for lazy initialisation
        variants[name]()
    load_before = load_load()
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, list[int]] = {n: [] for n in names}
    episode_engine_s: list[float] = []
    episode_env_step_s: list[float] = []
    episode_children_cpu_s: list[float] = []
    env_steps: dict[str, int] = {}
    for rep in range(args.repeats):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            step_s0, kids0 = sum(e.step_s for e in envs.values()), children_cpu_seconds()
            steps0 = {k: e.steps for k, e in envs.items()}
            c0, t0 = cpu_seconds(pids), time.perf_counter()
            n = variants[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(cpu_seconds(pids) - c0)
            tokens[name].append(n)
            if name == "episodes_ray":
                episode_engine_s.append(engine_call_s[-1])
                episode_env_step_s.append(sum(e.step_s for e in envs.values()) - step_s0)
                episode_children_cpu_s.append(children_cpu_seconds() - kids0)
                env_steps = {k: e.steps - steps0[k] for k, e in envs.items()}
        print(f"repeat {rep + 1}/{args.repeats}: " + "  ".join(f"{n} {tokens[n][-1] / times[n][-1]:.0f}" for n in names) + f"  (load {load_load()})", flush=True)
    load_after = load_load()

    rows: dict[str, dict[str, Any]] = {}
    names = [n for n in names if times[n]]
    for name in names:
        rates = [n / t for n, t in zip(tokens[name], times[name])]
        cpu_rates = [n / c for n, c in zip(tokens[name], cpu[name])]
        rows[name] = {
            "tokens": tokens[name][0],
            "tokens_identical_across_repeats": len(set(tokens[name])) == 1,
            "median_s": statistics.median(times[name]),
            "median_tokens_per_s": statistics.median(rates),
            "tokens_per_s": rates,
            "median_cpu_s": statistics.median(cpu[name]),
            "median_tokens_per_cpu_s": statistics.median(cpu_rates),
            "tokens_per_cpu_s": cpu_rates,
        }
    # Each variant against the bare engine in the same place (process or Ray actor), for the same tokens.
    baseline = {"bare_nologprobs": "bare", "engine": "bare", "episodes_per_request": "episodes_batched", "bare_ray": "bare", "group_ray": "bare_ray", "episodes_ray": "episodes_replay",
                "episodes_replay": "bare_ray"}  # fmt: skip
    for name, row in rows.items():
        base = baseline.get(name)
        if base in rows:
            row["vs"] = base
            # Per-repeat ratios of throughput (variant / baseline), then their median.
            ratios = [a / b for a, b in zip(row["tokens_per_s"], rows[base]["tokens_per_s"])]
            row["throughput_ratio_median"] = statistics.median(ratios)
            row["cpu_throughput_ratio_median"] = statistics.median(
                [a / b for a, b in zip(row["tokens_per_cpu_s"], rows[base]["tokens_per_cpu_s"])]
            )
        if "bare" in rows:
            row["throughput_ratio_vs_bare_median"] = statistics.median(
                [a / b for a, b in zip(row["tokens_per_s"], rows["bare"]["tokens_per_s"])]
            )

    profile_text = None
    if args.profile:
        profile_text = profile_paths(engine, requests, episodes, engine_generate=True)
        PROFILE.write_text(profile_text)

    if episode_engine_s:
        batch_sizes = [len(b) for b in batches]
        episode_info = {"engine_calls": len(batches), "batch_sizes": batch_sizes, "requests": sum(batch_sizes),
                        "median_s_inside_engine_calls": statistics.median(episode_engine_s),
                        "median_s_outside_engine_calls": statistics.median(
                            [w - e for w, e in zip(times["episodes_ray"], episode_engine_s)]),
                        "median_env_step_s_summed": statistics.median(episode_env_step_s),
                        "median_sandbox_children_cpu_s": statistics.median(episode_children_cpu_s),
                        "env_steps_per_run": env_steps}  # fmt: skip
    else:
        episode_info = {}
    result = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "bench/bench_rollout.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_avg_1m_before": load_before, "load_avg_1m_after": load_after},  # fmt: skip
        "recipe": RECIPE,
        "checkpoint": args.checkpoint,
        "prompts": args.prompts,
        "generations_per_prompt": g,
        "requests": len(requests),
        "sampling": sampling.model_dump(),
        "max_turns": ro.max_turns,
        "engine_settings": settings["bare"],
        "episode_path": episode_info,
        "repeats": args.repeats,
        "variants": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    table = Table(title=f"rollout tokens/s ({os.cpu_count()} cores, load {load_before} -> {load_after}, {args.repeats} repeats, medians)", title_justify="left")
    for col in ("variant", "tokens", "median s", "tokens/s", "ratio vs base", "base", "tokens/CPU-s", "CPU ratio vs base"):
        table.add_column(col, justify="left" if col in ("variant", "base") else "right")
    for name, row in rows.items():
        table.add_row(name, str(row["tokens"]), f"{row['median_s']:.2f}", f"{row['median_tokens_per_s']:.0f}",
                      f"{row['throughput_ratio_median']:.3f}" if "vs" in row else "-", row.get("vs", "-"),
                      f"{row['median_tokens_per_cpu_s']:.0f}", f"{row['cpu_throughput_ratio_median']:.3f}" if "vs" in row else "-")  # fmt: skip
    Console(width=240).print(table)
    if episode_info:
        print(f"episode path: {episode_info['engine_calls']} engine calls, batch sizes {episode_info['batch_sizes']}; median "
              f"{episode_info['median_s_inside_engine_calls']:.2f} s inside engine calls, "
              f"{episode_info['median_s_outside_engine_calls']:.2f} s outside them (environments, tokenizer, scheduling); "
              f"environment steps {env_steps} took {episode_info['median_env_step_s_summed']:.2f} s summed over episodes, "
              f"sandbox children {episode_info['median_sandbox_children_cpu_s']:.2f} CPU-s")  # fmt: skip
    if profile_text:
        print(f"wrote {PROFILE}")
    print(f"wrote {out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def profile_paths(engine: Any, requests: list[Any], episodes: Callable[..., int], engine_generate: bool) -> str:
    """cProfile of ``VLLMEngine.generate`` and of the episode path on the in-process engine."""
    from rollout.batcher import engine_generate_fn

    out = io.StringIO()
    for title, fn in (
        ("VLLMEngine.generate (in-process)", lambda: engine.generate(requests)),
        ("collect() over the in-process engine", lambda: episodes(engine_generate_fn(engine), None)),
    ):
        prof = cProfile.Profile()
        prof.enable()
        fn()
        prof.disable()
        out.write(f"==== {title}\n")
        stats = pstats.Stats(prof, stream=out).sort_stats("cumulative")
        stats.print_stats(45)
        out.write(f"---- {title}: only our code (rollout/) and the vLLM SamplingParams it builds\n")
        stats.print_stats(r"rollout/|sampling_params.py")
    return out.getvalue()


if __name__ == "__main__":
    raise SystemExit(main())
