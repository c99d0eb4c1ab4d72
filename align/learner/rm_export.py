"""A reward model's weights as a Hugging Face sequence-classification folder.

``align rm`` folders load where users load reward models (TRL, OpenRLHF-style reward servers)::

    AutoModelForSequenceClassification.from_pretrained(folder)                          # llama & co
    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)  # NemotronH

Two layouts, both ``config.json`` (the backbone's config plus ``num_labels``, ``id2label`` = the
attribute names, ``architectures``) and ``model.safetensors`` (sharded with an index when large):

- *native*, when transformers has a sequence-classification class for the architecture
  (``LlamaForSequenceClassification`` ...) and the head's bias is zero, as it always is for a
  Bradley-Terry model (the bias cancels in ``r_chosen - r_rejected``, so it never moves from its
  zero start): weights under that class's names, ``<prefix>.*`` and ``score.weight``; it pools at
  the rightmost token that is not ``pad_token_id``, which is the last real token of a padded row.
- *remote code* otherwise (NemotronH has no such class in transformers 5.19; a regression head
  has a bias): ``model.*``, ``score.weight``, ``score.bias``, and ``modeling_align_reward.py``
  copied into the folder and named in ``config.auto_map``.

Limits: the native layout pools on ``pad_token_id``, so a row whose real text ends in the pad
token is scored one token early (align's own scorer reads ``attention_mask``); align's tokenizers
have a pad token of their own.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

REMOTE_MODULE = "modeling_align_reward"
REMOTE_CLASS = "AlignRewardModel"
LEGACY_HEAD = "reward_head.safetensors"  # align's earlier layout (backbone-only model.safetensors); read, never written


def native_class(config: Any) -> type | None:
    """transformers' sequence-classification class for ``config``'s architecture, if it has one."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    name = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(config.model_type)
    return getattr(transformers, name, None) if name else None


def save(
    path: Path,
    config: Any,
    backbone_sd: Mapping[str, torch.Tensor],
    head_sd: Mapping[str, torch.Tensor],
    attribute_names: Sequence[str],
) -> str:
    """Write ``config.json`` and the weights of one of the two layouts; returns the class name written."""
    from huggingface_hub import save_torch_state_dict

    path.mkdir(parents=True, exist_ok=True)
    cls = native_class(config)
    native = cls is not None and not bool(head_sd["score.bias"].any())
    config = copy.deepcopy(config)
    config.num_labels = len(attribute_names)
    config.id2label = dict(enumerate(attribute_names))
    config.label2id = {n: i for i, n in enumerate(attribute_names)}
    prefix = cls.base_model_prefix if native else "model"
    weights = {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in backbone_sd.items()}
    weights["score.weight"] = head_sd["score.weight"].detach().cpu().contiguous()
    if native:
        architecture = cls.__name__
    else:
        architecture = REMOTE_CLASS
        weights["score.bias"] = head_sd["score.bias"].detach().cpu().contiguous()
        config.auto_map = {"AutoModelForSequenceClassification": f"{REMOTE_MODULE}.{REMOTE_CLASS}"}
        source = Path(__file__).with_name(f"{REMOTE_MODULE}.py").read_text()
        default = 'CONFIG_CLASS = "PreTrainedConfig"'
        (path / f"{REMOTE_MODULE}.py").write_text(source.replace(default, f'CONFIG_CLASS = "{type(config).__name__}"'))
    config.architectures = [architecture]
    config.save_pretrained(str(path))
    save_torch_state_dict(weights, str(path), max_shard_size="5GB")
    return architecture


def load_head(path: Path, num_labels: int) -> dict[str, torch.Tensor]:
    """``weight`` and ``bias`` of the score head saved in ``path`` (zero bias for the native layout)."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    files = json.loads(index.read_text())["weight_map"] if index.is_file() else {}
    if (path / LEGACY_HEAD).is_file():  # folders written before this layout: the head in a file of its own
        files = {"score.weight": LEGACY_HEAD, "score.bias": LEGACY_HEAD}
    head: dict[str, torch.Tensor] = {}
    for key in ("score.weight", "score.bias"):
        file = path / files.get(key, "model.safetensors")
        with safe_open(str(file), framework="pt") as f:
            if key in f.keys():
                head[key.removeprefix("score.")] = f.get_tensor(key)
    if "weight" not in head:
        raise FileNotFoundError(f"{path}: no score.weight in the model's safetensors; is this a folder written by `align rm`?")
    head.setdefault("bias", torch.zeros(num_labels, dtype=head["weight"].dtype))
    return head
