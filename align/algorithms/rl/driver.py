"""Multi-environment GRPO: vLLM rollout engines serve the policy, DeepSpeed learners update it.

One step, top to bottom:
1. take ``prompts_per_step`` tasks mixed over the environments, each with its reasoning mode;
2. the RolloutGroup plays G episodes per task (multi-turn where the environment is);
3. every trajectory is scored by its own environment plus the recipe's reward functions;
4. group advantages; dynamic sampling drops all-equal groups and refills; overlong filtering;
5. learners compute old log-probs (the train/inference mismatch is measured here), then take
   one clipped policy-gradient step per epoch with truncated importance sampling;
6. new weights go learner -> rollout engines in place; metrics, sample trajectories and, every
   K steps, an atomic checkpoint (learner state + task-stream positions) are written.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from align.algorithms.common import JobError, console, start_checkpoint
from align.algorithms.rl.batch import Scored, fill, finalize, micro_batches, select_groups, to_sequences
from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs
from align.algorithms.rl.tasks import TaskMixer, assign_mode, load_tasks
from align.cluster import LearnerGroup, RolloutGroup, init_ray
from align.config import LoadedRecipe
from align.config.schema import RLRecipe
from align.evaluate import play, standard_modes, summarize
from align.models import inference_dtype, load_tokenizer
from align.runlog import Checkpoints, MetricsLog, plot_curves
from envs.registry import make_env
from rewards.combine import combine
from rewards.registry import make_reward
from rollout.collect import collect


def check_machine(loaded: LoadedRecipe) -> None:
    """Fail before starting anything if the recipe needs GPUs or a checkpoint this machine lacks."""
    r: RLRecipe = loaded.recipe  # type: ignore[assignment]
    missing = []
    need = r.cluster.gpus_needed(with_rollout=True)
    if need > 0:
        import torch

        have = torch.cuda.device_count()
        if r.cluster.ray_address is None and have < need:
            missing.append(f"{need:g} GPUs (cluster.num_learners x gpus_per_learner + num_rollout_engines x gpus_per_rollout_engine); this machine has {have}")
    if r.init_from is None and r.model.path is not None and not Path(r.model.path).is_dir():
        try:
            from huggingface_hub import snapshot_download

            snapshot_download(r.model.path, local_files_only=True)
        except Exception:  # noqa: BLE001 - any failure means: not available offline
            missing.append(f"the checkpoint '{r.model.path}' (not a local folder, and not in the Hugging Face cache)")
    if missing:
        tiny = "nano3-multienv-tiny" if loaded.name.startswith("nano3-multienv") else "a *-tiny recipe"
        raise JobError(
            f"recipe '{loaded.name}' needs " + " and ".join(missing) + ". "
            f"To run the same algorithm and environments on this machine, use: align rl --recipe {tiny}"
        )


def run(loaded: LoadedRecipe, resume: bool = False, in_process: bool = False) -> int:
    """Run the recipe. ``in_process`` uses the same workers without Ray (one learner, one engine)."""
    r: RLRecipe = loaded.recipe  # type: ignore[assignment]
    check_machine(loaded)
    run_dir = Path(r.output_dir)
    model_path = start_checkpoint(loaded)
    tokenizer = load_tokenizer(model_path)
    envs = {spec.name: make_env(spec.name, spec.params) for spec in r.envs}
    rewards = [(make_reward(spec.name, spec.params), spec.weight) for spec in r.rewards]
    train_tasks = {s.name: load_tasks(s, envs[s.name], s.num_train, r.seed, "train") for s in r.envs}
    eval_tasks = [t for s in r.envs for t in load_tasks(s, envs[s.name], s.num_eval, r.seed, "eval")]
    mixer = TaskMixer(train_tasks, {s.name: s.weight for s in r.envs}, r.seed)
    g = r.grpo

    if in_process and r.cluster.num_learners != 1:
        raise JobError("in-process RL runs one learner: set cluster.num_learners=1")
    if not in_process:
        init_ray(r.cluster.ray_address, num_cpus=int(r.cluster.num_learners * r.cluster.cpus_per_learner) + r.cluster.num_rollout_engines)
    learner_cfg = r.learner.model_copy(update={"gradient_accumulation_steps": r.accumulation_steps})
    learners = LearnerGroup(r.cluster, in_process=in_process)
    learners.setup(str(model_path), learner_cfg, g.max_steps * g.epochs_per_step, r.seed)
    rollout = RolloutGroup(r.cluster, r.rollout, str(model_path), r.seed, in_process=in_process, dtype=inference_dtype(r.learner.precision))
    objective = GRPOObjective(g.clip_low, g.clip_high, g.loss_aggregation, g.tis_cap, g.kl_coef, r.rollout.sampling.temperature)
    logprob_fn = TokenLogprobs(r.rollout.sampling.temperature)

    ckpts = Checkpoints(run_dir, r.checkpoint.keep_last)
    start = 0
    latest = ckpts.latest() if resume else None
    if latest is not None:
        state = json.loads((latest / "state.json").read_text())
        learners.load_state(str(latest))
        mixer.load_state_dict(state["tasks"])
        start = int(state["step"])
        rollout.update_weights(learners.state_dict())
        console.print(f"resumed from {latest} at step {start}")
    log = MetricsLog(run_dir, resume_from_step=start if latest is not None else None)
    samples_file = open(run_dir / "trajectories.jsonl", "a" if latest is not None else "w")

    def evaluate(step: int) -> dict[str, Any]:
        modes = standard_modes(r.reasoning.eval_budgets)
        results = asyncio.run(play(envs, eval_tasks, modes, tokenizer, rollout.generate, r.rollout.sampling, r.rollout.max_turns, r.seed))
        summary = summarize(results)
        flat = {f"{env}/{mode}/{k}": v for env, ms in summary.items() for mode, c in ms.items() for k, v in c.items() if v is not None}
        log.log(step, "eval", flat)
        return summary

    history: dict[str, Any] = {"eval": {}}
    if start == 0:
        history["eval"][0] = evaluate(0)
        _print_eval(0, history["eval"][0])

    for step in range(start, g.max_steps):
        t_step = time.perf_counter()
        rng_seed = r.seed * 1_000_003 + step
        needed = g.prompts_per_step
        kept: list[Scored] = []
        dropped: list[Scored] = []
        t_rollout = t_score = 0.0
        rollout_tokens = 0
        all_groups: list[Scored] = []
        for round_ in range(g.max_refill_rounds + 1 if g.dynamic_sampling else 1):
            tasks = mixer.next(needed - len(kept) if round_ else needed)
            pairs = [(t, assign_mode(t, r.reasoning, r.seed)) for t in tasks]
            t0 = time.perf_counter()
            groups = asyncio.run(collect(envs, pairs, g.generations_per_prompt, tokenizer=tokenizer, generate=rollout.generate,
                                         sampling=r.rollout.sampling, max_turns=r.rollout.max_turns, seed=rng_seed + 7 * round_))  # fmt: skip
            t_rollout += time.perf_counter() - t0
            rollout_tokens += sum(t.num_policy_tokens for grp in groups for t in grp)
            t0 = time.perf_counter()
            scored = [score_group(grp, rewards, r.rollout.sampling.max_new_tokens, g) for grp in groups]
            t_score += time.perf_counter() - t0
            all_groups += scored
            new_kept, new_dropped = select_groups(scored, needed - len(kept), g.dynamic_sampling)
            kept += new_kept
            dropped += new_dropped
            if len(kept) >= needed:
                break
        train_groups = fill(kept, dropped, needed)

        # Learners: old log-probs (and the train/inference mismatch), then the update.
        t0 = time.perf_counter()
        per_rank = micro_batches(to_sequences(train_groups), learners.size, r.accumulation_steps, tokenizer.pad_token_id, g.loss_aggregation)
        old = learners.compute(per_rank, logprob_fn)
        for rank_mbs, rank_old in zip(per_rank, old, strict=True):
            for mb, lp in zip(rank_mbs, rank_old, strict=True):
                mb["old_logprobs"] = lp
        mismatch = _mismatch(per_rank)
        train_metrics: dict[str, float] = {}
        for _ in range(g.epochs_per_step):
            train_metrics = learners.train_step(per_rank, objective)
        t_learn = time.perf_counter() - t0

        t0 = time.perf_counter()
        rollout.update_weights(learners.state_dict())
        t_sync = time.perf_counter() - t0

        done = step + 1
        metrics = _step_metrics(all_groups, kept, train_metrics)
        metrics.update(mismatch)
        metrics.update(time_rollout_s=t_rollout, time_score_s=t_score, time_learner_s=t_learn, time_sync_s=t_sync,
                       time_step_s=time.perf_counter() - t_step, rollout_tokens_per_s=rollout_tokens / max(t_rollout, 1e-9),
                       groups_kept=float(len(kept)), groups_dropped=float(len(dropped)))  # fmt: skip
        log.log(done, "train", metrics)
        _write_samples(samples_file, done, all_groups, per_group=1)
        console.print(
            f"step {done}/{g.max_steps}  reward {metrics['reward']:.3f}  acc {metrics['accuracy']:.3f}  kept {len(kept)}/{needed}  "
            f"rollout {t_rollout:.1f}s ({metrics['rollout_tokens_per_s']:.0f} tok/s)  score {t_score:.2f}s  learner {t_learn:.1f}s  "
            f"sync {t_sync:.2f}s  mismatch_kl {mismatch['mismatch_kl']:.2e}"
        )
        if done % g.eval_every_steps == 0 or done == g.max_steps:
            history["eval"][done] = evaluate(done)
            _print_eval(done, history["eval"][done])
        if done % r.checkpoint.every_steps == 0 and done < g.max_steps:
            ckpts.save(done, lambda tmp: learners.save_state(str(tmp)), {"tasks": mixer.state_dict()})

    log.close()
    samples_file.close()
    final = run_dir / "final"
    tmp = run_dir / ".final.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    learners.save_hf(str(tmp), tokenizer_path=str(model_path))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    _plots(run_dir, [s.name for s in r.envs])
    (run_dir / "summary.json").write_text(json.dumps({"final_checkpoint": str(final), "eval": history["eval"]}, indent=2, default=str))
    learners.shutdown()
    rollout.shutdown()
    return 0


def score_group(trajectories: list[Any], rewards: list[tuple[Any, float]], max_new_tokens: int, cfg: Any) -> Scored:
    """Environment reward + weighted reward functions, then advantages and overlong filtering.

    A reward function that raises is a bug for the batch, not a sample: its component is
    skipped for this group with the error logged, and the run goes on.
    """
    env_rewards = [float(t.reward) for t in trajectories]
    totals = list(env_rewards)
    components: dict[str, list[float | None]] = {}
    if rewards:
        inputs = [t.to_reward_input(max_new_tokens) for t in trajectories]
        try:
            extra, components = combine(rewards, inputs)
            totals = [a + b for a, b in zip(totals, extra)]
        except Exception as e:  # noqa: BLE001
            console.print(f"[red]reward functions failed for task {trajectories[0].task.id}: {e}[/]")
    return finalize(Scored(trajectories, totals, components), cfg)


def _mismatch(per_rank: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Train/inference mismatch over policy tokens: k3 KL(rollout || learner) and mean |delta log p|."""
    import torch

    kl = absdiff = n = 0.0
    for mbs in per_rank:
        for mb in mbs:
            m = mb["loss_mask"]
            d = (mb["rollout_logprobs"] - mb["old_logprobs"]) * m
            kl += float(((torch.exp(d) - d - 1) * m).sum())
            absdiff += float(d.abs().sum())
            n += float(m.sum())
    return {"mismatch_kl": kl / max(n, 1), "mismatch_abs_logp": absdiff / max(n, 1)}


def _step_metrics(groups: list[Scored], kept: list[Scored], train: dict[str, float]) -> dict[str, float]:
    trajs = [t for g in groups for t in g.trajectories]
    totals = [x for g in groups for x in g.rewards]
    out = {
        "reward": sum(totals) / len(totals),
        "accuracy": sum(1.0 for t in trajs if t.correct) / len(trajs),
        "loss": train.get("loss", 0.0),
        "grad_norm": train.get("grad_norm", 0.0),
        "lr": train.get("lr", 0.0),
        "clip_frac": train.get("clip_frac_sum", 0.0) / max(train.get("tokens", 1.0), 1.0),
        "errors": float(sum(1 for t in trajs if t.info.get("error"))),
    }
    per_env: dict[str, list[Any]] = defaultdict(list)
    for t in trajs:
        per_env[t.env].append(t)
    for env, ts in per_env.items():
        out[f"{env}/reward"] = sum(t.reward for t in ts) / len(ts)
        out[f"{env}/accuracy"] = sum(1.0 for t in ts if t.correct) / len(ts)
        out[f"{env}/length"] = sum(t.num_policy_tokens for t in ts) / len(ts)
        out[f"{env}/thinking_tokens"] = sum(t.thinking_tokens for t in ts) / len(ts)
        out[f"{env}/forced_close_rate"] = sum(1.0 for t in ts if t.forced_close) / len(ts)
    return out


def _write_samples(f: Any, step: int, groups: list[Scored], per_group: int) -> None:
    for g in groups:
        for t, reward, adv in list(zip(g.trajectories, g.rewards, g.advantages))[:per_group]:
            f.write(json.dumps({"step": step, "env": t.env, "task": t.task.id, "mode": {"thinking": t.mode.thinking, "budget": t.budget},
                                "reward": reward, "advantage": adv, "correct": t.correct, "thinking_tokens": t.thinking_tokens,
                                "forced_close": t.forced_close, "completion": t.completion, "error": t.info.get("error")}) + "\n")  # fmt: skip
    f.flush()


def _print_eval(step: int, summary: dict[str, Any]) -> None:
    parts = [f"{env} {c['think']['accuracy']:.2f}" for env, c in summary.items() if "think" in c and env != "all"]
    console.print(f"eval step {step}: held-out accuracy (/think) " + ", ".join(parts))


def _plots(run_dir: Path, env_names: list[str]) -> None:
    plot_curves(run_dir, {f"{e} (train)": ("train", f"{e}/reward") for e in env_names}, "reward_per_env.png", "train reward per environment")
    plot_curves(run_dir, {f"{e} (held-out)": ("eval", f"{e}/think/accuracy") for e in env_names}, "eval_accuracy_per_env.png", "held-out accuracy (/think)")


