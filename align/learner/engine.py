"""A learner: one DeepSpeed engine holding one data-parallel replica of the policy.

The same class serves SFT, DPO, RM and RL: ``train_step`` takes this rank's micro-batches
and an *objective* (a picklable function ``objective(model, micro_batch) -> (loss_sum,
metrics)``). It is a plain class; ``align/cluster.py`` turns it into a Ray actor, and tests
use it in-process.

Loss normalisation: objectives return a *sum* over their units (tokens, pairs, sequences),
and every micro-batch carries ``loss_denominator``, the count over the whole global batch.
DeepSpeed divides by the accumulation steps and averages gradients over ranks, so the loss
handed to it is ``loss_sum / denominator * world_size * accumulation_steps``: the gradient is
then exactly the global-batch mean, whatever the split into ranks and micro-batches. That is
why 2 learners x 1 accumulation step and 1 learner x 2 steps give the same loss curve.

On GPU the model runs each padded micro-batch as packed rows (``align.models.enable_packed_forward``:
no compute on padding, sample boundaries kept) and the hybrid policy's Mamba2 layers use
``mamba_ssm``'s Triton kernels when installed; objectives still read padded tensors. On CPU the
batches stay padded.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from align.config.schema import LearnerConfig
from align.learner.ds_build import import_deepspeed
from align.learner.liger import use_liger
from align.learner.loading import REWARD_KINDS, freeze_matching, load_for_training
from align.learner.moe import configure_moe, lora_target_parameters
from align.learner.step_stats import DeviceTotals, step_profile
from align.models import enable_packed_forward
from align.weights import Wire, to_wire

# Metrics may be 0-d tensors: the learner sums them on the device and reads them back once a step.
Objective = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float | torch.Tensor]]]
MicroBatch = dict[str, torch.Tensor]


def lr_lambda(cfg: LearnerConfig, total_steps: int) -> Callable[[int], float]:
    """Warmup then constant / cosine / linear decay to ``min_lr_ratio`` (a multiplier of lr)."""

    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_schedule == "cosine" else 1 - progress
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return f


def _use_bf16(cfg: LearnerConfig) -> bool:
    if cfg.precision == "bf16":
        return True
    return cfg.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


class Learner:
    """One rank of a data-parallel DeepSpeed group. Call ``setup`` on every rank at once."""

    def __init__(self, rank: int, world_size: int, cpus: float | None = None) -> None:
        """``cpus``: pin torch's CPU threads to this many (an actor owning its process); None leaves
        them alone (in-process, where vLLM in the same process has bound its own threads)."""
        self.rank, self.world_size = rank, world_size
        if cpus is not None and not torch.cuda.is_available():
            torch.set_num_threads(max(1, int(cpus)))
        self.engine: Any = None
        self.packing = False
        self.train_steps = 0
        self._model: nn.Module | None = None  # load_model's, until build_engine wraps it
        self._ipc_arena: Any = None  # cuda_ipc: the GPU buffer the engines on this GPU map once (align.weight_sync)

    # -------------------------------------------------------------- set-up

    def free_port(self, host: str) -> tuple[str, int]:
        """``host`` (this node's address, from the group) and a free port on it, for rank 0 to serve the process group."""
        import socket

        with socket.socket() as s:
            s.bind((host, 0))
            return host, s.getsockname()[1]

    def setup(
        self,
        model_path: str,
        cfg: LearnerConfig,
        total_steps: int,
        seed: int,
        master: tuple[str, int],
        model_kind: str = "causal_lm",
        num_labels: int = 1,
    ) -> None:
        """All of set-up. ``LearnerGroup`` calls the three steps as separate actor calls instead, so
        a step that hangs past ``cluster.setup_timeout_s`` can be named."""
        self.join_group(master)
        self.load_model(model_path, cfg, seed, model_kind, num_labels)
        self.build_engine(total_steps)

    def join_group(self, master: tuple[str, int]) -> None:
        """Join the learners' process group (on CPU DeepSpeed loads, or first builds, its comm op here)."""
        deepspeed = import_deepspeed()

        os.environ.update(
            RANK=str(self.rank), LOCAL_RANK="0", WORLD_SIZE=str(self.world_size),
            MASTER_ADDR=master[0], MASTER_PORT=str(master[1]),
        )  # fmt: skip
        if not torch.distributed.is_initialized():
            deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")

    def load_model(self, model_path: str, cfg: LearnerConfig, seed: int, model_kind: str = "causal_lm", num_labels: int = 1) -> None:
        self.cfg = cfg
        torch.manual_seed(seed)
        model = load_for_training(model_path, model_kind, num_labels, _use_bf16(cfg))
        # MoE layers: experts kernel and router freezing (freeze_router null means off here; the RL
        # driver resolves it to on before it gets here). Dense models are left alone.
        configure_moe(model, cfg, freeze_router=bool(cfg.freeze_router))
        kernels = use_liger(model, cfg.liger_kernel, torch.cuda.is_available())  # fused Triton kernels, before LoRA and compile
        # GPU: Mamba2 kernels and packed rows inside the forward (objectives still see padded
        # tensors); CPU: padded batches, unchanged.
        self.packing = enable_packed_forward(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        if torch.cuda.is_available():  # the forward path taken, in the job's log (CPU: always eager, padded)
            if cfg.compile:
                model.compile(dynamic=True)  # in place: parameter names (checkpoints, weight sync) are unchanged
            print(f"learner {self.rank}: forward {'torch.compile' if cfg.compile else 'eager'}, {'packed' if self.packing else 'padded'} rows, {kernels}", flush=True)
        if cfg.lora is not None:
            from peft import LoraConfig as PeftLora
            from peft import get_peft_model

            modules_to_save = ["score"] if model_kind in REWARD_KINDS else None
            model = get_peft_model(
                model,
                PeftLora(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                         target_modules=cfg.lora.target_modules, modules_to_save=modules_to_save,
                         target_parameters=lora_target_parameters(model, cfg.lora.target_parameters, cfg.lora.dropout)),
            )  # fmt: skip
        if cfg.freeze:  # after LoRA, so that a pattern also keeps the adapters of its modules out of training
            print(f"learner {self.rank}: learner.freeze kept {freeze_matching(model, cfg.freeze):,} parameters out of training", flush=True)
        self._model = model

    def build_engine(self, total_steps: int) -> None:
        deepspeed = import_deepspeed()

        if self._model is None:  # load_model failed (the caller reports that failure) or never ran
            raise RuntimeError("Learner.build_engine needs a model: load_model did not finish")
        model, cfg, self._model = self._model, self.cfg, None
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size_per_device,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": _use_bf16(cfg)},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)

    # -------------------------------------------------------------- steps

    def _scaled(self, loss_sum: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        denom = float(mb["loss_denominator"])
        return loss_sum / max(denom, 1e-9) * self.world_size * self.cfg.gradient_accumulation_steps

    def train_step(self, micro_batches: list[MicroBatch], objective: Objective) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (exactly ``gradient_accumulation_steps``)."""
        if len(micro_batches) != self.cfg.gradient_accumulation_steps:
            raise ValueError(f"got {len(micro_batches)} micro-batches, expected gradient_accumulation_steps={self.cfg.gradient_accumulation_steps}")
        self.train_steps += 1
        with step_profile(self.cfg.profile, self.rank, self.train_steps):
            return self._train_step(micro_batches, objective)

    def _train_step(self, micro_batches: list[MicroBatch], objective: Objective) -> dict[str, float]:
        self.engine.train()
        totals = DeviceTotals()  # no host sync per micro-batch (align/learner/step_stats.py)
        grad_norm = None
        loss_finite = torch.ones((), dtype=torch.bool, device=self.engine.device)
        skipped = False
        for i, mb in enumerate(micro_batches):
            mb = self._to_device(mb)
            loss_sum, metrics = objective(self.engine, mb)
            loss_finite &= torch.isfinite(loss_sum.detach()).all()
            self.engine.backward(self._scaled(loss_sum, mb))
            if i == len(micro_batches) - 1 and self.cfg.zero_stage == 0:
                # ZeRO-0 clips without keeping the norm; grads are all-reduced by now (boundary backward).
                grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
                grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                skipped = self._skip_if_nonfinite(bool(loss_finite), grad_norm)
            self.engine.step()
            totals.add("loss", loss_sum.detach().double() / float(mb["loss_denominator"]))
            for k, v in metrics.items():
                totals.add(k, v)
        if grad_norm is None:
            grad_norm = self.engine.get_global_grad_norm()
            # ZeRO 1-3 skip a step whose grad norm is inf/NaN themselves (not under bf16); they say so here.
            skipped = bool(getattr(self.engine.optimizer, "overflow", False))
        out = totals.result()
        out["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        out["lr"] = float(self.engine.get_lr()[0])
        out["nonfinite_skipped"] = float(skipped)
        out["nonfinite_params"] = float(self._count_nonfinite_params())
        return out

    def _skip_if_nonfinite(self, loss_finite: bool, grad_norm: float) -> bool:
        """Make this step a no-op when any rank's loss or the global grad norm is not finite.

        The gradients are zeroed and the step runs at lr 0, so the weights stay as they were
        (DeepSpeed's step still runs: its counters and the schedule stay in line; the next
        scheduler step restores the lr; Adam's moments decay by one step). Only where the
        optimizer is torch's own AdamW (ZeRO-0 without DeepSpeed's bf16 wrapper). Elsewhere
        DeepSpeed holds the gradients, the step goes through, and :meth:`_count_nonfinite_params`
        reports the damage so the driver stops the job before anything is published.
        """
        bad = torch.tensor([0.0 if loss_finite and math.isfinite(grad_norm) else 1.0])
        if torch.distributed.is_initialized() and self.world_size > 1:
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        if not bad.item() or _use_bf16(self.cfg):
            return False
        for p in self.engine.module.parameters():
            if p.grad is not None:
                p.grad.zero_()
        for group in self.engine.optimizer.param_groups:
            group["lr"] = 0.0
        return True

    @torch.no_grad()
    def _count_nonfinite_params(self) -> int:
        """Parameter tensors of this rank (its ZeRO-3 partition) that hold NaN or inf."""
        flags = [~torch.isfinite(getattr(p, "ds_tensor", p)).all() for p in self.engine.module.parameters()]
        return int(torch.stack(flags).sum()) if flags else 0  # one host sync, not one per tensor

    @torch.no_grad()
    def eval_step(self, micro_batches: list[MicroBatch], objective: Objective) -> dict[str, float]:
        self.engine.eval()
        totals = DeviceTotals()
        for mb in micro_batches:
            mb = self._to_device(mb)
            loss_sum, metrics = objective(self.engine, mb)
            totals.add("loss", loss_sum.double() / float(mb["loss_denominator"]))
            for k, v in metrics.items():
                totals.add(k, v)
        return totals.result()

    @torch.no_grad()
    def compute(self, micro_batches: list[MicroBatch], fn: Callable[[nn.Module, MicroBatch], torch.Tensor]) -> list[torch.Tensor]:
        """Run ``fn`` (e.g. per-token log-probs) on each micro-batch in eval mode; results on CPU."""
        self.engine.eval()
        return [fn(self.engine, self._to_device(mb)).float().cpu() for mb in micro_batches]

    def _to_device(self, mb: MicroBatch) -> MicroBatch:
        device = self.engine.device  # loss_denominator stays on the host: reading it must not wait for the GPU
        return {k: v.to(device) if isinstance(v, torch.Tensor) and k != "loss_denominator" else v for k, v in mb.items()}

    # -------------------------------------------------------------- weights

    @contextmanager
    def _full_params(self) -> Iterator[nn.Module]:
        """The module with full (gathered under ZeRO-3) and LoRA-merged weights."""
        deepspeed = import_deepspeed()

        module = self.engine.module
        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None) if self.cfg.zero_stage == 3 else nullcontext()
        with gather:
            merged = hasattr(module, "merge_adapter")
            if merged:
                module.merge_adapter()
            try:
                yield module
            finally:
                if merged:
                    module.unmerge_adapter()

    @contextmanager
    def _hf_weights(self) -> Iterator[dict[str, torch.Tensor]]:
        """Full weights under their Hugging Face names (LoRA merged), where they live (GPU or CPU);
        valid inside the ``with`` only (under ZeRO-3 they are gathered copies)."""
        with self._full_params() as module:
            sd = module.state_dict()
            if hasattr(module, "merge_adapter"):
                # A module in modules_to_save (the reward head) keeps a frozen original and a trained
                # copy: the trained copy takes the HF name.
                sd = {_strip_peft(k): v for k, v in sd.items() if "lora_" not in k and ".original_module." not in k}
            yield {k: v.detach() for k, v in sd.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """:meth:`_hf_weights` copied to CPU: what rollout loads, and what checkpoints write."""
        with self._hf_weights() as sd:
            return {k: v.to("cpu", copy=True) for k, v in sd.items()}

    def state_dict_wire(self) -> Wire:
        """:meth:`state_dict` as arrays, the form weight sync sends over Ray (align.weights)."""
        return to_wire(self.state_dict())

    # Bucketed weight sync (align.weight_sync). Every rank calls the push methods (ZeRO-3 gathers
    # need all of them); rank 0 sends for "broadcast", each rank serves its own GPU for "cuda_ipc".

    def weight_meta(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """``(name, shape, dtype)`` of every tensor a push sends, in order."""
        with self._hf_weights() as sd:
            return [(k, tuple(v.shape), v.dtype) for k, v in sd.items()]

    def gpu_uuid(self) -> str | None:
        from align.weight_sync.transports import gpu_uuid

        return gpu_uuid()

    def init_weight_group(self, host: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 joins the weight-sync group as its rank 0 (the engines join as 1..world_size-1)."""
        from align.weight_sync.transports import WeightGroup

        if self.rank == 0:
            self._weight_group = WeightGroup(host, port, 0, world_size, backend)

    def push_broadcast(self, buckets: list[Any]) -> None:
        from align.weight_sync.transports import send_broadcast

        with self._hf_weights() as sd:
            if self.rank == 0:
                send_broadcast(self._weight_group, buckets, sd)

    def push_ipc(self, buckets: list[Any], engines: list[Any], version: int | None = None) -> dict[str, float]:
        """Hand each bucket to ``engines`` (the rollout engines on this rank's GPU) over CUDA IPC, from a
        buffer kept across syncs (:func:`align.weight_sync.transports.push_ipc` says what it returns)."""
        from time import perf_counter

        from align.weight_sync.transports import IpcArena, push_ipc

        t0 = perf_counter()
        torch.cuda.current_stream().synchronize()  # the step's queued GPU work, timed apart from the push
        times = {"tail": perf_counter() - t0}
        with self._hf_weights() as sd:
            times["state_dict"] = perf_counter() - t0 - times["tail"]
            if not engines or not buckets:
                return {}
            if self._ipc_arena is None or not self._ipc_arena.fits(buckets):
                self._ipc_arena = None  # the old arena is freed before the new one is made
                self._ipc_arena = IpcArena(buckets, torch.device("cuda", torch.cuda.current_device()))
            return push_ipc(buckets, sd, self._ipc_arena, engines, version, times) | {"push": perf_counter() - t0}

    def save_hf(self, path: str, tokenizer_path: str | None = None) -> None:
        """Write an HF folder (rank 0 writes; every rank must call it under ZeRO-3)."""
        sd = self.state_dict()
        if self.rank != 0:
            return
        module = self.engine.module
        base = module.get_base_model() if hasattr(module, "get_base_model") else module
        base.save_pretrained(path, state_dict=sd, safe_serialization=True)
        if tokenizer_path:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_path).save_pretrained(path)

    # -------------------------------------------------------------- checkpoints

    def save_state(self, path: str) -> None:
        """DeepSpeed state (weights, optimizer, scheduler) plus this rank's RNG, into ``path``."""
        self.engine.save_checkpoint(path, tag="learner")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        torch.save(rng, Path(path) / f"rng_rank{self.rank}.pt")

    def load_state(self, path: str) -> None:
        load_path, _ = self.engine.load_checkpoint(path, tag="learner")
        if load_path is None:
            raise FileNotFoundError(f"no learner state in {path}")
        rng = torch.load(Path(path) / f"rng_rank{self.rank}.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])

    def barrier(self) -> None:
        torch.distributed.barrier()


def _strip_peft(name: str) -> str:
    # LoRA on two parameters of one module (MoE experts' up_proj and down_proj) nests two wrappers:
    # "experts.base_layer.base_layer.up_proj".
    name = name.removeprefix("base_model.model.").replace(".modules_to_save.default.", ".")
    while ".base_layer." in name:
        name = name.replace(".base_layer.", ".")
    return name
