"""Shared by the export tests: a small torch module obeying the graph contract, its bundle, real photos.

The module has the TeD-Loc inference shape (in-graph normalization, conv backbone -> patch embeddings,
patch head -> sigmoid fg_map, map-weighted pooling, normalized product with frozen anchors), so the
export, fp16, int8 and head-finding code run on the same structure a trained run has.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tedloc_edge.bundle import BundleMeta, Preprocess

CLASSES = ("astronaut", "cat", "coffee", "rocket")


class TinyTedLoc(nn.Module):
    def __init__(self, num_classes: int = len(CLASSES), dim: int = 32, size: int = 64, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, dim, 3, stride=2, padding=1),
        )
        self.decoder = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 1)
        anchors = torch.linalg.qr(torch.randn(dim, num_classes))[0].T.contiguous()
        self.register_buffer("anchors", anchors)
        self.temperature = 0.1
        self.size = size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        feats = self.backbone(x)  # (N, d, gh, gw)
        n, d, gh, gw = feats.shape
        z = self.decoder(feats.flatten(2).transpose(1, 2))  # (N, P, d)
        m = torch.sigmoid(self.head(z)).squeeze(-1)  # (N, P)
        pooled = (m.unsqueeze(-1) * z).sum(1) / (m.sum(1, keepdim=True) + 1e-6)
        pooled = nn.functional.normalize(pooled, dim=-1)
        logits = pooled @ self.anchors.T / self.temperature
        return m.reshape(n, gh, gw), logits


def tiny_meta(size: int = 64) -> BundleMeta:
    return BundleMeta(
        class_names=CLASSES,
        input_size=(size, size),
        patch_grid=(size // 8, size // 8),
        preprocess=Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        threshold=0.35,
        backbone="tiny-conv",
        anchor_source="random-qr",
        run_id="tiny-test",
    )


def real_photos() -> list[np.ndarray]:
    """Real RGB photos shipped with scikit-image (no download)."""
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
