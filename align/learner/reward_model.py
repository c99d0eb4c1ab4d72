"""A reward model on the policy's own architecture: the causal LM's backbone plus a linear head.

``RewardModel`` = ``AutoModel`` backbone (for the tiny world ``NemotronHModel``: the hybrid
Mamba-Transformer without its LM head) + ``score``, a ``Linear(hidden_size, num_labels)``
that reads the hidden state of each sequence's *last non-pad token*. One output is a
Bradley-Terry reward; several are HelpSteer-style attributes (helpfulness, correctness, ...)
that :meth:`RewardModel.combine` weights into one reward at inference.

Why not ``AutoModelForSequenceClassification`` for training: not every architecture has one
(NemotronH in transformers 5.19 does not), and the policy's own backbone is what makes a reward
model share the policy's tokenizer and scale. The head is called ``score`` as in transformers'
classifiers, so LoRA's ``modules_to_save=["score"]`` trains it in full. A Bradley-Terry head's
bias is frozen at zero (``train_bias=False``): the loss cannot see it (it cancels in
``r_chosen - r_rejected``), and a zero bias is what lets the standard classes load the folder.

Saved format (a folder, written by :meth:`save_pretrained`, read by :meth:`from_pretrained`): a
Hugging Face sequence-classification folder (:mod:`align.learner.rm_export`: the standard class
where transformers has one for the architecture and the bias is zero, else a class shipped in
the folder for ``trust_remote_code=True``), plus::

    reward_head.json         {"format": "align.reward_model/1", "num_labels": K, "pooling": "last_non_pad",
                              "attribute_names": [K names], "attribute_weights": {name: weight}}
    tokenizer files          (written by the learner next to it)

``attribute_names``/``attribute_weights`` are filled in by the RM driver (:func:`write_head_info`);
a folder without them scores with names ``reward_0 ...`` and weight 1 each.

Limits: the pooled token is found from ``attention_mask`` (left or right padding both work),
so a sequence cut by ``max_seq_len`` is scored on its cut end; packed sequences are not supported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

HEAD_FORMAT = "align.reward_model/1"
HEAD_JSON = "reward_head.json"


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Loading a backbone from a causal-LM folder reports lm_head as unexpected: that is the point."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last attended position (works for left and right padding).

    >>> last_token_index(torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 1, 1, 1]])).tolist()
    [2, 0, 3]
    """
    t = attention_mask.size(-1)
    return t - 1 - attention_mask.flip(-1).long().argmax(-1)


class RewardModel(nn.Module):
    """Backbone + linear head; ``forward(input_ids, attention_mask) -> [batch, num_labels]`` rewards."""

    base_model_prefix = "backbone"  # transformers/peft helpers look for it on any model they wrap

    def __init__(self, backbone: nn.Module, num_labels: int, head_info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"num_labels must be at least 1, got {num_labels}")
        self.backbone = backbone
        self.config = backbone.config  # what peft, gradient checkpointing and DeepSpeed look for
        hidden = int(backbone.config.hidden_size)
        self.score = nn.Linear(hidden, num_labels, dtype=next(backbone.parameters()).dtype)
        std = float(getattr(backbone.config, "initializer_range", 0.02))
        nn.init.normal_(self.score.weight, std=std)
        nn.init.zeros_(self.score.bias)
        self.num_labels = num_labels
        info = dict(head_info or {})
        self.attribute_names: list[str] = list(info.get("attribute_names") or [f"reward_{i}" for i in range(num_labels)])
        self.attribute_weights: dict[str, float] = dict(info.get("attribute_weights") or {n: 1.0 for n in self.attribute_names})
        if len(self.attribute_names) != num_labels:
            raise ValueError(f"{len(self.attribute_names)} attribute names for a head with {num_labels} outputs")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_causal_lm(cls, path: str | Path, num_labels: int = 1, dtype: torch.dtype = torch.float32, train_bias: bool = True) -> "RewardModel":
        """A new reward model: the backbone of the causal LM at ``path`` and a freshly initialised head
        (its bias frozen at zero with ``train_bias=False``, for Bradley-Terry)."""
        from transformers import AutoModel

        with _quiet_transformers():
            backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
        model = cls(backbone, num_labels)
        model.score.bias.requires_grad_(train_bias)
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "RewardModel":
        """Load a folder written by :meth:`save_pretrained` (see the module docstring)."""
        from transformers import AutoModel

        from align.learner.rm_export import load_head

        path = Path(path)
        info_path = path / HEAD_JSON
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{path} is not a reward model folder (no {HEAD_JSON}); train one with `align rm --recipe ...` "
                "and point at its final/ folder"
            )
        info = json.loads(info_path.read_text())
        if info.get("format") != HEAD_FORMAT:
            raise ValueError(f"{info_path}: format {info.get('format')!r}, expected {HEAD_FORMAT!r}")
        with _quiet_transformers():  # the backbone of a sequence classifier: the head's keys are unexpected
            backbone = AutoModel.from_pretrained(str(path), dtype=dtype)
        model = cls(backbone, int(info["num_labels"]), info)
        model.score.load_state_dict({k: v.to(dtype) for k, v in load_head(path, model.num_labels).items()})
        return model

    def save_pretrained(self, path: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None, safe_serialization: bool = True, **_: Any) -> None:
        """Write the folder format of the module docstring; ``state_dict`` (full names) overrides the live weights.

        The learner passes a gathered (ZeRO-3) or LoRA-merged state dict, as it does for causal LMs.
        """
        from align.learner.rm_export import save

        del safe_serialization  # always safetensors
        sd = dict(state_dict if state_dict is not None else self.state_dict())
        path = Path(path)
        backbone_sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
        head_sd = {k: v.detach().cpu().contiguous() for k, v in sd.items() if k.startswith("score.")}
        if set(head_sd) != {"score.weight", "score.bias"}:
            raise ValueError(f"state dict has head keys {sorted(head_sd)}, expected score.weight and score.bias")
        save(path, self.backbone.config, backbone_sd, head_sd, self.attribute_names)
        write_head_info(path, self.attribute_names, self.attribute_weights, num_labels=self.num_labels)

    # ------------------------------------------------------------------ training hooks

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    # ------------------------------------------------------------------ forward

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        rows = torch.arange(hidden.size(0), device=hidden.device)
        pooled = hidden[rows, last_token_index(attention_mask)]
        return self.score(pooled).float()

    def combine(self, rewards: torch.Tensor, weights: Mapping[str, float] | None = None) -> torch.Tensor:
        """One reward per row: ``sum_i w_i * rewards[:, i]`` with the saved (or given) attribute weights."""
        weights = weights if weights is not None else self.attribute_weights
        unknown = sorted(set(weights) - set(self.attribute_names))
        if unknown:
            raise ValueError(f"weights for unknown attributes {unknown}; this reward model has {self.attribute_names}")
        w = torch.tensor([float(weights.get(n, 0.0)) for n in self.attribute_names], dtype=rewards.dtype, device=rewards.device)
        return rewards @ w


def write_head_info(
    path: str | Path, attribute_names: Sequence[str], attribute_weights: Mapping[str, float], num_labels: int | None = None
) -> None:
    """Write ``reward_head.json`` (atomically): what the head's outputs are called and how they combine;
    the names also go into ``config.json``'s ``id2label`` when the folder has one."""
    path = Path(path)
    names = list(attribute_names)
    if num_labels is not None and len(names) != num_labels:
        raise ValueError(f"{len(names)} attribute names for {num_labels} outputs")
    info = {
        "format": HEAD_FORMAT,
        "num_labels": len(names),
        "pooling": "last_non_pad",
        "attribute_names": names,
        "attribute_weights": {n: float(attribute_weights.get(n, 0.0)) for n in names},
    }
    tmp = path / f".{HEAD_JSON}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, path / HEAD_JSON)
    config_path = path / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.update(id2label={str(i): n for i, n in enumerate(names)}, label2id={n: i for i, n in enumerate(names)})
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, config_path)


class RewardModelScorer:
    """One copy of a reward model that scores conversations in padded batches (a plain worker class).

    :class:`align.cluster.RewardModelGroup` makes it a Ray actor; tests use it directly.
    """

    def __init__(self, path: str, batch_size: int = 32, max_seq_len: int = 1024, cpus: float | None = None) -> None:
        from transformers import AutoTokenizer

        if cpus is not None and not torch.cuda.is_available():  # as a Ray actor: its CPU share
            torch.set_num_threads(max(1, int(cpus)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = RewardModel.from_pretrained(path).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len

    def attributes(self) -> dict[str, float]:
        """The model's attribute names and saved weights, in output order."""
        return {n: self.model.attribute_weights.get(n, 0.0) for n in self.model.attribute_names}

    def _render(self, messages: list[dict[str, Any]], template_kwargs: Mapping[str, Any]) -> list[int]:
        clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
        ids = list(self.tokenizer.apply_chat_template(clean, tokenize=True, return_dict=True, **template_kwargs)["input_ids"])
        return ids[-self.max_seq_len :]

    @torch.no_grad()
    def score(
        self,
        conversations: Sequence[list[dict[str, Any]]],
        template_kwargs: Sequence[Mapping[str, Any]] | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[float]:
        """One combined reward per conversation, in order (batched longest-first to pad little)."""
        kwargs = template_kwargs if template_kwargs is not None else [{}] * len(conversations)
        ids = [self._render(c, k) for c, k in zip(conversations, kwargs, strict=True)]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = [0.0] * len(ids)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            length = max(len(ids[i]) for i in chunk)
            input_ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, i in enumerate(chunk):
                input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            rewards = self.model(input_ids.to(self.device), mask.to(self.device))
            for i, v in zip(chunk, self.model.combine(rewards, weights).tolist(), strict=True):
                out[i] = float(v)
        return out
