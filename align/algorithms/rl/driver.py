"""Multi-environment GRPO: vLLM rollout engines serve the policy, DeepSpeed learners update it.

One step, top to bottom:
1. take ``prompts_per_step`` tasks mixed over the environments, each with its reasoning mode;
2. the RolloutGroup plays G episodes per task (multi-turn where the environment is);
3. every trajectory is scored by its own environment plus the recipe's reward functions;
4. group advantages; dynamic sampling drops all-equal groups and refills; overlong filtering;
5. learners compute old log-probs (the train/inference mismatch is measured here) and, with
   ``grpo.kl_coef > 0``, the frozen reference computes reference log-probs (KL logged per
   environment); then one clipped policy-gradient step per epoch with truncated importance sampling;
6. new weights go learner -> rollout engines in place; metrics, sample trajectories and, every
   K steps, an atomic checkpoint (learner state + task-stream positions) are written.

With ``grpo.off_policy_overlap`` steps 1-4 of step t+1 run (on a background thread, see
``schedule.py``) while the learners do step 5 of step t; the trajectories are then one update
stale (``staleness`` in the metrics, at most ``grpo.max_staleness``). Checkpoints and metrics
are the same as on-policy. A resumed overlapped run regenerates its first rollouts from the
checkpoint's weights (staleness 0 there), so it is not bitwise the uninterrupted run.
``grpo.mode: async`` replaces steps 1-4 with a continuous producer and a queue (``async_loop.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from align.algorithms.common import FrozenReference, JobError, console, publish_hf, resume_from, start_checkpoint, start_ray
from align.algorithms.rl.async_loop import AsyncProducer
from align.algorithms.rl.batch import (
    Scored, StepRollout, combine_updates, fill, finalize, mask_mismatched, mean_k3, mismatch, select_groups, step_metrics, to_sequences, update_batches,
)
from align.algorithms.rl.objective import GRPOObjective, TokenLogprobs, needs_old_pass
from align.algorithms.rl.prestart import Prestart
from align.algorithms.rl.schedule import EngineQueue, engine_max_num_seqs
from align.algorithms.rl.stream import PromptLedger, PromptStream
from align.algorithms.rl.tasks import TaskMixer, assign_mode, load_tasks
from align.cluster import LearnerGroup, RolloutGroup
from align.config import LoadedRecipe
from align.config.schema import GRPOSettings, RLRecipe
from align.evaluate import EvalSummary, play, standard_modes, summarize
from align.export import write_checkpoint
from align.guards import EnvFailureGuard, NonFiniteGuard
from align.models import inference_dtype, load_tokenizer
from align.runlog import Checkpoints, MetricsLog, cut_jsonl, plot_curves
from align.startup import StartupClock
from align.weight_sync import WeightSync
from envs.registry import make_env
from rewards.base import RewardFn
from rewards.combine import combine
from rewards.genrm.reward import GenRMReward
from rewards.genrm.winrate import win_rate
from rewards.registry import make_reward
from rollout.collect import collect
from rollout.types import Trajectory


def check_machine(loaded: LoadedRecipe) -> None:
    """Fail before starting anything if the recipe needs GPUs or a checkpoint this machine lacks."""
    r: RLRecipe = loaded.recipe  # type: ignore[assignment]
    missing = []
    need = r.cluster.gpus_needed(with_rollout=True)
    if r.grpo.kl_coef > 0 and r.grpo.reference == "separate_group":
        need += r.cluster.num_learners * r.cluster.gpus_per_learner  # the frozen reference's own group
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


def run(loaded: LoadedRecipe, resume: bool = False, in_process: bool = False, prestart: Prestart | None = None) -> int:
    """Run the recipe. ``in_process`` uses the same workers without Ray (one learner, one engine);
    ``prestart``: actors spawned while this module was imported (``prestart.py``), taken where they would be spawned."""
    clock = StartupClock()
    clock.lap("imports")
    r: RLRecipe = loaded.recipe  # type: ignore[assignment]
    check_machine(loaded)
    g = r.grpo
    use_reference = g.kl_coef > 0
    if use_reference:
        FrozenReference.check(g.reference, r.learner, "grpo.reference")
    run_dir = Path(r.output_dir)
    model_path = start_checkpoint(loaded)
    tokenizer = load_tokenizer(model_path)
    envs = {spec.name: make_env(spec.name, spec.params) for spec in r.envs}
    rewards = [(make_reward(spec.name, spec.params), spec.weight) for spec in r.rewards]
    train_tasks = {s.name: load_tasks(s, envs[s.name], s.num_train, r.seed, "train") for s in r.envs}
    eval_tasks = [t for s in r.envs for t in load_tasks(s, envs[s.name], s.num_eval, r.seed, "eval")]
    mixer = TaskMixer(train_tasks, {s.name: s.weight for s in r.envs}, r.seed, g.curriculum)
    stream = PromptStream(mixer, g.prompts_per_step, r.reasoning, r.seed) if g.mode == "async" else None  # align/algorithms/rl/async_loop.py

    if in_process and r.cluster.num_learners != 1:
        raise JobError("in-process RL runs one learner: set cluster.num_learners=1")
    clock.lap("data")
    if not in_process:
        start_ray(r)
    clock.lap("ray")
    # freeze_router null: frozen in RL, as Nemotron 3 Nano (align/learner/moe.py).
    learner_cfg = r.learner.model_copy(update={"gradient_accumulation_steps": r.accumulation_steps, "freeze_router": r.learner.freeze_router is not False})
    early_rollout, early_learners, spawned_at = prestart.take() if prestart is not None else (None, None, None)
    learners = early_learners or LearnerGroup(r.cluster, in_process=in_process)
    # The learners, the reference and the vLLM engines build at the same time (Ray actors build
    # asynchronously): start-up costs the slowest, not the sum. The engines are spawned first,
    # since learners.setup waits for learner 0's process to start. Engines sharing a GPU with a
    # learner (a fraction of a GPU) build after it, since vLLM sizes its cache from free memory;
    # in-process ones too, as before (they build synchronously).
    colocated = 0 < r.cluster.gpus_per_rollout_engine < 1
    dtype = inference_dtype(r.learner.precision)
    engine_cfg = engine_max_num_seqs(r)  # rollout.max_num_seqs resolved for GPU engines
    with clock.part("engines", since=spawned_at):
        rollout = early_rollout
        if rollout is None and not (colocated or in_process):
            rollout = RolloutGroup(r.cluster, engine_cfg, str(model_path), r.seed, in_process, dtype, wait=False)
        with clock.part("learners"):  # to the end of their set-up when colocated, else until their set-up calls are sent
            learners.setup(str(model_path), learner_cfg, g.max_steps * g.epochs_per_step * g.mini_batches, r.seed, wait=colocated)
        clock.watch("learners set-up", learners.pending_refs)
        if rollout is None:
            rollout = RolloutGroup(r.cluster, engine_cfg, str(model_path), r.seed, in_process, dtype, wait=False)
        reference = FrozenReference(g.reference, r.cluster, learner_cfg, model_path, r.seed, "grpo.reference", in_process) if use_reference else None
        rollout.wait_ready()
    learners.wait_ready()
    clock.lap("actors")
    sync = WeightSync(learners, rollout, r.rollout.weight_sync, r.rollout.weight_sync_bucket_mb, snapshot=g.off_policy_overlap)
    console.print(f"weight sync: {sync.describe()}")
    objective = GRPOObjective(g.clip_low, g.clip_high, g.loss_aggregation, g.tis_cap, g.kl_coef, r.rollout.sampling.temperature, g.forking_share)
    logprob_fn = TokenLogprobs(r.rollout.sampling.temperature)
    old_pass = needs_old_pass(g, reference is not None)
    console.print(f"old log-probs: {'a pass of their own before each step' if old_pass else 'from the update forward (one update per step)'}; {g.mini_batches * g.epochs_per_step} update(s) per step")

    ckpts = Checkpoints(run_dir, r.checkpoint.keep_last)
    start, state = resume_from(ckpts, resume, learners, check=lambda s: (stream or mixer).load_state_dict(s["tasks"]))
    if state is not None:
        sync.push(start)
    log = MetricsLog(run_dir, resume_from_step=start if state is not None else None, recipe=r)
    if state is not None:
        cut_jsonl(run_dir / "trajectories.jsonl", start)  # the steps after the checkpoint run again
    samples_file = open(run_dir / "trajectories.jsonl", "a" if state is not None else "w")
    eval_history: dict[int, EvalSummary] = {}
    # Rollouts run `depth` steps ahead of the learners (0: on-policy); see align/algorithms/rl/schedule.py.
    depth = g.max_staleness if g.off_policy_overlap else 0
    queue = EngineQueue(threaded=depth > 0, version=start)
    producer = ledger = None
    if stream is not None:
        producer = AsyncProducer.for_recipe(r, stream, envs, tokenizer, lambda grp: score_group(grp, rewards, r.rollout.sampling.max_new_tokens, g),
                                            rollout, start)  # fmt: skip
        ledger, depth = PromptLedger(run_dir, start if state is not None else None), g.max_staleness
    generate = producer.exclusive_generate if producer is not None else rollout.generate

    played: dict[int, list[Trajectory]] = {}  # /think answers of each eval, for a judge's win rate

    def evaluate(step: int) -> EvalSummary:
        modes = standard_modes(r.reasoning.eval_budgets)
        results = asyncio.run(play(envs, eval_tasks, modes, tokenizer, generate, r.rollout.sampling, r.rollout.max_turns, r.seed,
                                   r.reasoning.budget_grace_fraction))  # fmt: skip
        played[step] = [t for label, t in results if label == "think"]
        return summarize(results)

    def log_eval(step: int, summary: EvalSummary) -> None:
        flat = {f"{env}/{mode}/{k}": v for env, ms in summary.items() for mode, c in ms.items() for k, v in c.items() if v is not None}
        log.log(step, "eval", flat)
        eval_history[step] = summary
        _print_eval(step, summary)

    def produce(step: int) -> StepRollout:
        """Steps 1-4 for one RL step (runs on the engine queue: inline, or ahead of the learners)."""
        out = StepRollout(step=step, weights_version=queue.version)
        rng_seed = r.seed * 1_000_003 + step
        needed = g.prompts_per_step
        kept: list[Scored] = []
        for round_ in range(g.max_refill_rounds + 1 if g.dynamic_sampling else 1):
            tasks = mixer.next(needed - len(kept) if round_ else needed)
            pairs = [(t, assign_mode(t, r.reasoning, r.seed)) for t in tasks]
            t0 = time.perf_counter()
            groups = asyncio.run(collect(envs, pairs, g.generations_per_prompt, tokenizer=tokenizer, generate=rollout.generate,
                                         sampling=r.rollout.sampling, max_turns=r.rollout.max_turns, seed=rng_seed + 7 * round_,
                                         budget_grace_fraction=r.reasoning.budget_grace_fraction, greedy=g.baseline == "greedy"))  # fmt: skip
            out.time_rollout_s += time.perf_counter() - t0
            out.rollout_tokens += sum(t.num_policy_tokens for grp in groups for t in grp)
            t0 = time.perf_counter()
            scored = [score_group(grp, rewards, r.rollout.sampling.max_new_tokens, g) for grp in groups]
            out.time_score_s += time.perf_counter() - t0
            for fn, _ in rewards:  # what reward functions with actors of their own spent (judge calls, tokens), summed over refills
                for k, v in (fn.step_metrics() if hasattr(fn, "step_metrics") else {}).items():
                    out.reward_metrics[k] = out.reward_metrics.get(k, 0.0) + v
            out.all_groups += scored
            out.curriculum = mixer.observe([s.trajectories for s in scored])  # pass rates by task (grpo.curriculum); {} when off
            new_kept, new_dropped = select_groups(scored, needed - len(kept), g.dynamic_sampling, env_signal=bool(rewards) and not g.keep_reward_only_groups)
            kept += new_kept
            out.dropped += new_dropped
            if len(kept) >= needed:
                break
        out.kept = kept
        out.train_groups = fill(kept, out.dropped, needed)
        out.tasks_state = mixer.state_dict()  # what a checkpoint after this step's update resumes from
        return out

    clock.lap("sync and logs")
    if start == 0:
        log_eval(0, evaluate(0))
        clock.lap("eval 0")
    if producer is not None:
        producer.start()

    pending: dict[int, Future[StepRollout]] = {}
    nonfinite = NonFiniteGuard(r.learner.on_nonfinite, r.learner.max_nonfinite_steps, console)
    env_guard = EnvFailureGuard(g.max_env_error_rate, g.max_env_failing_steps, console)
    try:
        for step in range(start, g.max_steps):
            t_step = time.perf_counter()
            for ahead in range(step, min(step + depth, g.max_steps - 1) + 1) if producer is None else ():
                if ahead not in pending:
                    pending[ahead] = queue.submit(produce, ahead)
            ro = pending.pop(step).result() if producer is None else producer.take(step)
            t_wait = time.perf_counter() - t_step
            env_errors = env_guard.after_rollout(step + 1, [t for grp in ro.all_groups for t in grp.trajectories])
            staleness = step - ro.weights_version
            assert 0 <= staleness <= depth, f"step {step} trained on weights {staleness} updates old (max {depth})"

            # Learners: old log-probs (and the train/inference mismatch), reference log-probs, then the update.
            t0 = time.perf_counter()
            seqs = to_sequences(ro.train_groups, routed_experts=g.routing_replay == "rollout", blamed_step=g.credit == "blamed_step")
            updates = update_batches(seqs, g.mini_batches, learners.size, r.accumulation_steps, tokenizer.pad_token_id, g.loss_aggregation, r.seed + step)
            # Every micro-batch of the step per rank, for the passes that run before any update (the same dicts).
            per_rank = [[mb for u in updates for mb in u[rank]] for rank in range(learners.size)]
            extra = {}
            if old_pass:
                _attach(per_rank, "old_logprobs", learners.compute(per_rank, logprob_fn))
                extra = mismatch(per_rank)
            env_of = [t.env for grp in ro.train_groups for t in grp.trajectories]
            if g.max_seq_logprob_error is not None:
                masked = mask_mismatched(updates, g.max_seq_logprob_error, g.loss_aggregation, env_of)
                extra.update({f"{k}/seq_masked_share" if k else "seq_masked_share": v for k, v in masked.items()})
            if reference is not None:
                _attach(per_rank, "ref_logprobs", reference.compute(learners, per_rank, logprob_fn))
                kl = mean_k3(per_rank, "old_logprobs", "ref_logprobs", env_of)
                extra.update({f"{k}/kl" if k else "kl": v for k, v in kl.items()})
            update_metrics: list[dict[str, float]] = []
            for _ in range(g.epochs_per_step):
                update_metrics = []  # the metrics of the last epoch's updates
                for u in updates:
                    update_metrics.append(learners.train_step(u, objective))
                    nonfinite.after_step(step + 1, update_metrics[-1])
            train_metrics = combine_updates(update_metrics)
            if not old_pass:  # pi_old came from the update's forward; the objective summed the mismatch
                n = max(train_metrics["tokens"], 1.0)
                extra.update(mismatch_kl=train_metrics["mismatch_k3_sum"] / n, mismatch_abs_logp=train_metrics["mismatch_abs_sum"] / n)
            t_learn = time.perf_counter() - t0

            # New weights to the engines, behind any rollout already running on the old ones.
            t0 = time.perf_counter()
            if producer is not None:  # groups in flight or queued stay: their staleness is bounded (async_loop.py)
                producer.publish(lambda: sync.push(step + 1), step + 1)
            else:
                queue.sync(lambda job: job(), sync.snapshot(step + 1), step + 1)
            t_sync = queue.sync_seconds(time.perf_counter() - t0)

            done = step + 1
            metrics = step_metrics(ro.all_groups, train_metrics)
            metrics.update(extra)
            metrics.update(ro.curriculum)
            metrics.update(staleness=float(staleness), time_rollout_s=ro.time_rollout_s, time_score_s=ro.time_score_s,
                           time_rollout_wait_s=t_wait, time_learner_s=t_learn, time_sync_s=t_sync,
                           time_step_s=time.perf_counter() - t_step, rollout_tokens_per_s=ro.rollout_tokens / max(ro.time_rollout_s, 1e-9),
                           groups_kept=float(len(ro.kept)), groups_dropped=float(len(ro.dropped)))  # fmt: skip
            metrics.update(ro.reward_metrics)
            # cuda_ipc: where time_sync_s went (time_sync_push_s: the learners' part; the rest is Ray's round trip)
            metrics.update({f"time_sync_{k}_s": v for k, v in sync.last_push_times.items()})
            metrics.update(ro.metrics, learner_idle_share=t_wait / metrics["time_step_s"], tokens_per_s=ro.rollout_tokens / metrics["time_step_s"],
                           engine_idle_share=max(0.0, 1 - ro.time_rollout_s / metrics["time_step_s"]))  # fmt: skip
            if producer is not None and ledger is not None:
                metrics.update(producer.engine_metrics(t_step, t_step + metrics["time_step_s"]))
                ledger.write(done, ro)
            log.log(done, "train", metrics)
            if step == start:
                console.print(clock.line(metrics["time_step_s"]))
            _write_samples(samples_file, done, ro.all_groups, per_group=1)
            console.print(
                f"step {done}/{g.max_steps}  reward {metrics['reward']:.3f}  acc {metrics['accuracy']:.3f}  kept {len(ro.kept)}/{g.prompts_per_step}  "
                f"rollout {metrics['time_rollout_s']:.1f}s ({metrics['rollout_tokens_per_s']:.0f} tok/s, waited {t_wait:.1f}s, staleness {staleness})  "
                f"score {ro.time_score_s:.2f}s  learner {t_learn:.1f}s  sync {t_sync:.2f}s  mismatch_kl {extra['mismatch_kl']:.2e}"
                + (f"  kl {extra['kl']:.2e}" if "kl" in extra else "") + f"  {env_errors}"
            )
            if done % g.eval_every_steps == 0 or done == g.max_steps:
                # On the engine queue, so it sees exactly the weights of this update.
                log_eval(done, queue.submit(evaluate, done).result())
            if done % r.checkpoint.every_steps == 0 and done < g.max_steps:
                ckpts.save(done, lambda tmp: write_checkpoint(learners, tmp, model_path, r.checkpoint.save_hf), {"tasks": ro.tasks_state})
    finally:
        queue.close()
        if producer is not None:
            producer.close()

    log.close()
    samples_file.close()
    final = publish_hf(run_dir, learners, model_path)
    _plots(run_dir, [s.name for s in r.envs])
    judged = judge_final(rewards, played.get(0), played.get(g.max_steps))
    (run_dir / "summary.json").write_text(json.dumps({"final_checkpoint": str(final), "eval": eval_history, **judged}, indent=2, default=str))
    learners.shutdown()
    if reference is not None:
        reference.shutdown()
    rollout.shutdown()
    return 0


def judge_final(rewards: list[tuple[RewardFn, float]], start: list[Trajectory] | None, final: list[Trajectory] | None) -> dict[str, Any]:
    """A GenRM reward's win rate of the final policy over the start policy on the held-out prompts (``genrm_win_rate``)."""
    out: dict[str, Any] = {}
    for fn, _ in rewards:
        if isinstance(fn, GenRMReward) and start and final:
            out["genrm_win_rate"] = win_rate(fn.judge_items, start, final)
            console.print("GenRM judged final vs start policy: " + "  ".join(f"{k} {v:.3f}" for k, v in out["genrm_win_rate"].items()))
        if hasattr(fn, "close"):
            fn.close()
    return out


def _attach(per_rank: list[list[dict[str, Any]]], key: str, values: list[list[Any]]) -> None:
    for rank_mbs, rank_values in zip(per_rank, values, strict=True):
        for mb, v in zip(rank_mbs, rank_values, strict=True):
            mb[key] = v


def score_group(trajectories: list[Trajectory], rewards: list[tuple[RewardFn, float]], max_new_tokens: int, cfg: GRPOSettings) -> Scored:
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


def _write_samples(f: Any, step: int, groups: list[Scored], per_group: int) -> None:
    for g in groups:
        for t, reward, adv in list(zip(g.trajectories, g.rewards, g.advantages))[:per_group]:
            f.write(json.dumps({"step": step, "env": t.env, "task": t.task.id, "mode": {"thinking": t.mode.thinking, "budget": t.budget},
                                "reward": reward, "advantage": adv, "correct": t.correct, "thinking_tokens": t.thinking_tokens,
                                "forced_close": t.forced_close, "completion": t.completion, "error": t.info.get("error")}) + "\n")  # fmt: skip
    f.flush()


def _print_eval(step: int, summary: EvalSummary) -> None:
    parts = [f"{env} {c['think']['accuracy']:.2f}" for env, c in summary.items() if "think" in c and env != "all"]
    console.print(f"eval step {step}: held-out accuracy (/think) " + ", ".join(parts))


def _plots(run_dir: Path, env_names: list[str]) -> None:
    plot_curves(run_dir, {f"{e} (train)": ("train", f"{e}/reward") for e in env_names}, "reward_per_env.png", "train reward per environment")
    plot_curves(run_dir, {f"{e} (held-out)": ("eval", f"{e}/think/accuracy") for e in env_names}, "eval_accuracy_per_env.png", "held-out accuracy (/think)")


