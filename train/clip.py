"""Loading an open_clip model: a named architecture plus weights from a pretrained tag or a local file.

Offline with no weights, the model is built with random weights and `ClipModel.has_weights` is False,
so callers can say loudly that what they derive from it (anchors, CLIP-ES cues) carries no text semantics.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tedloc_edge.errors import UserError, first_line

log = logging.getLogger(__name__)


@dataclass
class ClipModel:
    model: Any  # open_clip.CLIP (or CustomTextCLIP)
    tokenizer: Any
    preprocess: Any  # torchvision transform for images
    name: str
    weights: str | None  # the tag or file the weights came from; None when random
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def has_weights(self) -> bool:
        return self.weights is not None

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts)
        return self.model.encode_text(tokens.to(next(self.model.parameters()).device)).float()


def load_clip(name: str = "ViT-B-16", pretrained: str | None = None, device: str = "cpu") -> ClipModel:
    """Build `name` with weights from `pretrained` (an open_clip tag such as 'openai', or a .pt/.bin/.safetensors
    file). With `pretrained=None` the weights stay random (offline default) and a warning says so."""
    import open_clip

    if name not in open_clip.list_models():
        close = [m for m in open_clip.list_models() if name.lower().split("-")[0] in m.lower()][:8]
        raise UserError(f"unknown open_clip model {name!r}; close matches: {', '.join(close) or 'see open_clip.list_models()'}")
    weights = pretrained
    if pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise UserError(
                f"{pretrained!r} is neither a file nor a pretrained tag of {name}; tags: {', '.join(tags) or 'none'}"
            )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except Exception as exc:  # noqa: BLE001 - hub and file errors come in many types
        if os.environ.get("HF_HUB_OFFLINE") and pretrained and not Path(pretrained).is_file():
            raise UserError(
                f"cannot fetch CLIP weights {name}:{pretrained} offline (HF_HUB_OFFLINE=1); "
                "pass a local checkpoint file with --clip-pretrained PATH"
            ) from None
        raise UserError(f"cannot load CLIP {name} with weights {pretrained!r}: {first_line(exc)}") from None
    if weights is None:
        log.warning(
            "CLIP %s has RANDOM weights (no --clip-pretrained given): class anchors and CLIP cues carry NO text "
            "semantics. Pass --clip-pretrained openai (online) or a local checkpoint file for real ones.",
            name,
        )
    model.eval()
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return ClipModel(model, open_clip.get_tokenizer(name), preprocess, name, weights, mean, std)
