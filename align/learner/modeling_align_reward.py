"""A reward model written by ``align rm``, as a transformers sequence classifier.

This file is copied into a reward-model folder whose architecture has no sequence-classification
class in transformers (NemotronH), or whose head has a bias the standard class lacks; the
folder's ``config.json`` names it in ``auto_map``, so

    AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)

builds this class. It imports only torch and transformers (it runs without align installed).

The model: the architecture's own backbone (``AutoModel``), then ``score``, a
``Linear(hidden_size, num_labels)`` with bias, read at each row's last attended token
(``attention_mask``; without a mask, the rightmost token that is not ``pad_token_id``, as
transformers' classifiers do). ``logits`` are the rewards, ``[batch, num_labels]``; a
multi-attribute model's names are ``config.id2label`` and the weights that combine them are in
``reward_head.json`` next to this file.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

# The folder's config class (transformers checks that it matches config.json's); align's export
# writes the architecture's name here when it copies this file.
CONFIG_CLASS = "PreTrainedConfig"


class AlignRewardModel(PreTrainedModel):
    config_class = getattr(transformers, CONFIG_CLASS)
    base_model_prefix = "model"
    supports_gradient_checkpointing = True

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = AutoModel.from_config(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=True)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        kwargs.pop("use_cache", None)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs).last_hidden_state
        if attention_mask is not None:
            keep = attention_mask.to(hidden.device, torch.int32)
        elif input_ids is not None and self.config.pad_token_id is not None:
            keep = (input_ids != self.config.pad_token_id).to(hidden.device, torch.int32)
        else:
            keep = torch.ones(hidden.shape[:2], dtype=torch.int32, device=hidden.device)
        positions = torch.arange(hidden.size(1), device=hidden.device, dtype=torch.int32)
        last = (positions * keep).argmax(-1)
        logits = self.score(hidden[torch.arange(hidden.size(0), device=hidden.device), last])
        loss = None
        if labels is not None:  # regression on every output, as transformers does for float labels
            loss = nn.functional.mse_loss(logits.float().squeeze(-1), labels.float().squeeze(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
