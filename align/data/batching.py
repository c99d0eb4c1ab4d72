"""Padding, a resumable batch plan, and data-parallel sharding.

- :func:`pad_batch` right-pads token examples into tensors: what every objective reads.
- :func:`pack_padded` / :func:`unpack_to_padded` turn a padded batch into packed rows (the real
  tokens of several samples back to back, with ``position_ids`` restarting per sample and
  ``seq_idx`` naming each token's sample) and a packed model output back into the padded layout.
  The learner does this inside the model's forward on GPU (``align.models.enable_packed_forward``),
  so objectives keep reading padded tensors. On CPU we pad: the hybrid policy's Mamba2 layers
  need ``mamba_ssm``'s kernels to honour ``seq_idx`` at speed (DESIGN.md, "Facts").
- :class:`BatchPlan` says which example indices make up optimizer step ``k``'s global batch,
  as a pure function of ``(seed, k)``: resuming at step ``k`` replays exactly the batches an
  uninterrupted run would have seen, with no sampler state to save beyond the step number.
- :func:`shard_batch` splits one global batch into the micro-batches of one data-parallel
  rank. The split depends only on ``world_size * gradient_accumulation_steps``, so 2 ranks x 1
  accumulation step and 1 rank x 2 steps compute on exactly the same micro-batches.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from align.data.tokenize import IGNORE_INDEX, Example


def pad_batch(examples: Sequence[Example], pad_id: int, pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Stack examples into tensors, right-padded to one common length.

    Keys ending in ``input_ids`` are padded with ``pad_id`` and get a matching
    ``attention_mask`` (``chosen_input_ids`` -> ``chosen_attention_mask``); keys ending in
    ``labels`` are padded with -100; ``attributes`` (equal-length float lists) are stacked.
    All sequence keys share one length, so chosen and rejected can be concatenated into one
    forward pass. Any other key is an error, not silently dropped.
    """
    if not examples:
        raise ValueError("pad_batch needs at least one example")
    keys = list(examples[0])
    seq_keys = [k for k in keys if k.endswith("input_ids") or k.endswith("labels")]
    length = max((len(ex[k]) for ex in examples for k in seq_keys), default=0)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        if key.endswith("input_ids"):
            ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
            mask = torch.zeros((len(examples), length), dtype=torch.long)
            for i, ex in enumerate(examples):
                n = len(ex[key])
                ids[i, :n] = torch.tensor(ex[key], dtype=torch.long)
                mask[i, :n] = 1
            out[key] = ids
            out[key[: -len("input_ids")] + "attention_mask"] = mask
        elif key.endswith("labels"):
            labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
            for i, ex in enumerate(examples):
                labels[i, : len(ex[key])] = torch.tensor(ex[key], dtype=torch.long)
            out[key] = labels
        elif key == "attributes":
            out[key] = torch.tensor([ex[key] for ex in examples], dtype=torch.float32)
        else:
            raise ValueError(f"pad_batch does not know how to batch key {key!r}")
    return out


@dataclass(frozen=True)
class PackedRows:
    """A padded ``[B, T]`` batch repacked into ``[R, L]`` rows (``R <= B``, ``L <= T``).

    ``source`` and ``target`` map each real token between the two layouts (flat indices into
    ``B * T`` and ``R * L``), in the same order. The tail of a row after its last sample holds
    ``pad_id`` with positions restarting at 0 and a ``seq_idx`` of its own: a causal model
    never lets it touch the samples before it, and nothing reads its outputs.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    seq_idx: torch.Tensor
    source: torch.Tensor
    target: torch.Tensor
    padded_shape: tuple[int, int]
    samples_per_row: tuple[int, ...]

    @property
    def num_tokens(self) -> int:
        return int(self.source.numel())


def pack_padded(input_ids: torch.Tensor, attention_mask: torch.Tensor, row_len: int | None = None, pad_id: int = 0) -> PackedRows:
    """First-fit-decreasing packing of the rows of a padded batch into rows of at most ``row_len`` tokens.

    A sample's tokens are the positions where ``attention_mask`` is 1, in order, so right and
    left padding both work. ``row_len`` defaults to the padded width ``T``: then no packed row
    is longer than the padded rows were, and attention (quadratic in the row) never costs more
    than it did padded. Samples with no tokens are dropped (their outputs stay zero).

    >>> ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0], [4, 0, 0, 0]])
    >>> p = pack_padded(ids, (ids != 0).long())
    >>> p.input_ids.tolist(), p.position_ids.tolist(), p.seq_idx.tolist()
    ([[5, 6, 7, 4], [8, 9, 0, 0]], [[0, 1, 2, 0], [0, 1, 0, 1]], [[0, 0, 0, 1], [0, 0, 1, 1]])
    """
    if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
        raise ValueError(f"pack_padded needs [B, T] input_ids and attention_mask, got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    b, t = input_ids.shape
    cap = t if row_len is None else row_len
    mask = attention_mask.detach().to("cpu").bool()
    lengths = mask.sum(1).tolist()
    if max(lengths, default=0) > cap:
        raise ValueError(f"a sample of {max(lengths)} tokens does not fit in packed rows of {cap}")
    fill: list[int] = []
    members: list[list[tuple[int, int]]] = []  # per row: (sample, offset)
    for i in sorted(range(b), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n == 0:
            continue
        row = next((r for r, used in enumerate(fill) if used + n <= cap), None)
        if row is None:
            row = len(fill)
            fill.append(0)
            members.append([])
        members[row].append((i, fill[row]))
        fill[row] += n
    if not fill:
        fill, members = [0], [[]]
    width = max(1, max(fill))
    rows = len(fill)
    position_ids = torch.zeros(rows, width, dtype=torch.long)
    seq_idx = torch.zeros(rows, width, dtype=torch.int32)
    sources, targets = [], []
    for r, row_members in enumerate(members):
        row_members.sort(key=lambda m: m[1])
        for k, (i, offset) in enumerate(row_members):
            n = lengths[i]
            sources.append(i * t + torch.nonzero(mask[i]).flatten())
            targets.append(r * width + offset + torch.arange(n))
            position_ids[r, offset : offset + n] = torch.arange(n)
            seq_idx[r, offset : offset + n] = k
        tail = width - fill[r]
        if tail:
            position_ids[r, fill[r] :] = torch.arange(tail)
            seq_idx[r, fill[r] :] = len(row_members)
    device = input_ids.device
    source = torch.cat(sources).to(device) if sources else torch.zeros(0, dtype=torch.long, device=device)
    target = torch.cat(targets).to(device) if targets else torch.zeros(0, dtype=torch.long, device=device)
    packed_ids = torch.full((rows * width,), pad_id, dtype=input_ids.dtype, device=device)
    packed_ids[target] = input_ids.reshape(-1)[source]
    return PackedRows(
        input_ids=packed_ids.view(rows, width),
        position_ids=position_ids.to(device),
        seq_idx=seq_idx.to(device),
        source=source,
        target=target,
        padded_shape=(b, t),
        samples_per_row=tuple(len(m) for m in members),
    )


def unpack_to_padded(packed_output: torch.Tensor, packed: PackedRows) -> torch.Tensor:
    """``[R, L, ...]`` outputs of packed rows -> ``[B, T, ...]`` in the padded layout (zeros at pads).

    Differentiable: gradients flow back to the packed tokens that produced each output.
    """
    rows, width = packed.input_ids.shape
    rest = packed_output.shape[2:]
    flat = packed_output.reshape(rows * width, *rest)
    b, t = packed.padded_shape
    out = flat.new_zeros((b * t, *rest))
    out = out.index_copy(0, packed.source, flat.index_select(0, packed.target))
    return out.view(b, t, *rest)


class BatchPlan:
    """The global batch of every optimizer step: epoch-aware, deterministic, resumable.

    Each epoch is a fresh seeded permutation; its last ``num_examples % global_batch_size``
    examples wait for a later epoch (each epoch drops a different tail), so every step has
    exactly ``global_batch_size`` examples.

    With ``lengths`` (one per example), batches are length-grouped: each run of
    ``megabatch_size`` batches of the permutation is sorted by length before being cut into
    batches, the batches of the epoch are shuffled, and each batch lists its examples
    longest first, so the micro-batches cut from it by :func:`shard_batch` pad little.
    ``megabatch_size=1`` keeps batches random and only sorts within them. Grouping trades a
    little randomness (long and short examples meet less often) for less padding.

    Limits: indices refer to a fixed list of examples; a changed data set invalidates a
    resume, which :meth:`check_state` detects through a fingerprint of the plan's inputs.
    """

    def __init__(
        self,
        num_examples: int,
        global_batch_size: int,
        seed: int,
        lengths: Sequence[int] | None = None,
        megabatch_size: int = 16,
    ):
        if global_batch_size < 1 or megabatch_size < 1:
            raise ValueError("global_batch_size and megabatch_size must be at least 1")
        if num_examples < global_batch_size:
            raise ValueError(
                f"{num_examples} examples cannot fill one global batch of {global_batch_size}; "
                "add data or lower the batch size"
            )
        if lengths is not None and len(lengths) != num_examples:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_examples} examples")
        self.num_examples = num_examples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.lengths = list(lengths) if lengths is not None else None
        self.megabatch_size = megabatch_size
        self.steps_per_epoch = num_examples // global_batch_size
        self._cached_epoch: int | None = None
        self._cached_batches: list[list[int]] = []

    def epoch(self, step: int) -> int:
        return step // self.steps_per_epoch

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"batch-plan:{self.seed}:{epoch}")
        order = list(range(self.num_examples))
        rng.shuffle(order)
        order = order[: self.steps_per_epoch * self.global_batch_size]
        b = self.global_batch_size
        if self.lengths is None:
            return [order[i : i + b] for i in range(0, len(order), b)]
        lengths = self.lengths
        batches: list[list[int]] = []
        span = b * self.megabatch_size
        for start in range(0, len(order), span):
            group = sorted(order[start : start + span], key=lambda i: -lengths[i])
            batches.extend(group[i : i + b] for i in range(0, len(group), b))
        rng.shuffle(batches)
        return [sorted(batch, key=lambda i: -lengths[i]) for batch in batches]

    def batch(self, step: int) -> list[int]:
        """Example indices of optimizer step ``step`` (0-based): the same for any run with this plan."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        epoch = self.epoch(step)
        if epoch != self._cached_epoch:
            self._cached_batches = self._epoch_batches(epoch)
            self._cached_epoch = epoch
        return list(self._cached_batches[step % self.steps_per_epoch])

    def batches(self, start_step: int = 0) -> Iterator[tuple[int, list[int]]]:
        """``(step, indices)`` from ``start_step`` on, without end; resume by passing the next step."""
        step = start_step
        while True:
            yield step, self.batch(step)
            step += 1

    def fingerprint(self) -> str:
        inputs = [self.num_examples, self.global_batch_size, self.seed, self.megabatch_size, self.lengths]
        return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores to check, on resume, that the plan is the same one."""
        return {"num_examples": self.num_examples, "global_batch_size": self.global_batch_size, "seed": self.seed, "fingerprint": self.fingerprint()}

    def check_state(self, state: dict[str, Any]) -> None:
        """Raise if ``state`` (from :meth:`state_dict`) came from a different plan: a resume would not be exact."""
        mine = self.state_dict()
        diff = [k for k in mine if state.get(k) != mine[k]]
        if diff:
            detail = ", ".join(f"{k}: checkpoint {state.get(k)!r} vs now {mine[k]!r}" for k in diff)
            raise ValueError(
                f"the batch plan differs from the checkpoint's ({detail}); the data, its order or the batch "
                "size changed, so resuming would not replay the same batches. Restore them or start a new run."
            )


def shard_batch(indices: Sequence[int], world_size: int, rank: int, gradient_accumulation_steps: int) -> list[list[int]]:
    """The micro-batches (one per accumulation step) that ``rank`` computes for one global batch.

    The global batch is cut into ``world_size * gradient_accumulation_steps`` consecutive
    micro-batches of equal size; rank ``r`` takes numbers ``r * G`` to ``r * G + G - 1``
    (``G`` = accumulation steps). So the micro-batches themselves, and their padding, do not
    depend on how they are spread over ranks and steps.

    >>> shard_batch(list(range(8)), world_size=2, rank=1, gradient_accumulation_steps=2)
    [[4, 5], [6, 7]]
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    parts = world_size * gradient_accumulation_steps
    if len(indices) % parts:
        raise ValueError(
            f"a global batch of {len(indices)} does not split into {world_size} ranks x {gradient_accumulation_steps} "
            "accumulation steps of equal micro-batches"
        )
    size = len(indices) // parts
    first = rank * gradient_accumulation_steps
    return [list(indices[(first + a) * size : (first + a + 1) * size]) for a in range(gradient_accumulation_steps)]
