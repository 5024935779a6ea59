"""The three TeD-Loc losses (METHOD.md), on patches already sampled by `sampling.sample_patches`.

- L_KD: each sampled foreground patch embedding, as cosine logits against the anchors / T, is pulled to its
  image's class anchor (cross-entropy).
- P_CL: binary cross-entropy of the patch foreground head on the sampled patches (fg = 1, bg = 0).
- I_CL: cross-entropy of the image-level class scores.
Total = w_kd * L_KD + w_pcl * P_CL + w_icl * I_CL. Images whose cue map is constant (`valid` False) give no
patch terms. Object-free images (label -1, NO_OBJECT) give only P_CL's background terms (every patch is
background; the k_bg taught are the highest-scoring ones, `sampling.hardest_background`): no foreground patch,
no class for L_KD or I_CL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def anchor_logits(embeddings: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., d) embeddings -> (..., C) cosine similarity to the (C, d) unit anchors, divided by T."""
    return F.normalize(embeddings, dim=-1) @ anchors.t() / temperature


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over rows (B, ...) whose `valid` is True; 0 (with a gradient path) when none is."""
    weight = valid.to(values.dtype).view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def kd_loss(fg_embeddings: torch.Tensor, labels: torch.Tensor, anchors: torch.Tensor, temperature: float,
            valid: torch.Tensor | None = None) -> torch.Tensor:
    """L_KD over fg patch embeddings (B, k, d) with image labels (B,)."""
    logits = anchor_logits(fg_embeddings, anchors, temperature)  # (B, k, C)
    b, k, c = logits.shape
    ce = F.cross_entropy(logits.reshape(b * k, c), labels.repeat_interleave(k), reduction="none").view(b, k)
    return _masked_mean(ce, valid if valid is not None else torch.ones(b, dtype=torch.bool, device=ce.device))


def pcl_loss(fg_logits: torch.Tensor, bg_logits: torch.Tensor, valid: torch.Tensor | None = None,
             has_object: torch.Tensor | None = None) -> torch.Tensor:
    """P_CL from head logits at sampled fg (B, k_fg) and bg (B, k_bg) patches: mean BCE over all sampled patches
    (an object-free row, `has_object` False, over its bg patches only: it has no foreground)."""
    logits = torch.cat([fg_logits, bg_logits], dim=1)
    target = torch.cat([torch.ones_like(fg_logits), torch.zeros_like(bg_logits)], dim=1)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    rows = valid if valid is not None else torch.ones(len(bce), dtype=torch.bool, device=bce.device)
    fg_rows = rows if has_object is None else rows & has_object
    weight = torch.cat([fg_rows[:, None].expand_as(fg_logits), rows[:, None].expand_as(bg_logits)], dim=1).to(bce.dtype)
    return (bce * weight).sum() / weight.sum().clamp_min(1.0)


def icl_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """I_CL: cross-entropy of image-level class scores (B, C) over the rows with a class (label >= 0), optionally
    label-smoothed."""
    has_object = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none", label_smoothing=label_smoothing)
    return _masked_mean(ce, has_object)


@dataclass(frozen=True)
class LossWeights:
    kd: float = 1.0
    pcl: float = 1.0
    icl: float = 1.0


def tedloc_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, fg_idx: torch.Tensor, bg_idx: torch.Tensor,
                valid: torch.Tensor, anchors: torch.Tensor, temperature: float,
                weights: LossWeights = LossWeights(), label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """All parts from a model output dict (``embeddings`` (B, d, P), ``fg_logits`` (B, P), ``logits`` (B, C)).

    Returns {"loss", "kd", "pcl", "icl"}; "loss" is the weighted sum the optimizer steps on. Rows labelled -1
    are object-free images (see the module docstring)."""
    emb = out["embeddings"]
    fg_emb = torch.gather(emb, 2, fg_idx.unsqueeze(1).expand(-1, emb.shape[1], -1)).transpose(1, 2)  # (B, k, d)
    has_object = labels >= 0
    fg_logits, bg_logits = torch.gather(out["fg_logits"], 1, fg_idx), torch.gather(out["fg_logits"], 1, bg_idx)
    parts = {
        "kd": kd_loss(fg_emb, labels.clamp_min(0), anchors, temperature, valid & has_object),
        "pcl": pcl_loss(fg_logits, bg_logits, valid, has_object),
        "icl": icl_loss(out["logits"], labels, label_smoothing),
    }
    parts["loss"] = weights.kd * parts["kd"] + weights.pcl * parts["pcl"] + weights.icl * parts["icl"]
    return parts


def cam_loss(out: dict[str, torch.Tensor], labels: torch.Tensor, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """The CAM baseline's only loss: image classification."""
    ce = F.cross_entropy(out["logits"], labels, label_smoothing=label_smoothing)
    return {"loss": ce, "icl": ce}
