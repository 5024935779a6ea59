"""DDT cue maps (``--cue ddt``): DDT / PSOL class co-localization, offline. Per class, the patch descriptors of all its images,
mean-centred, give a first principal direction; each patch's projection on it is the map. It lights
what the class's images have in common, which tends to be the whole object. The sign of a principal
direction is arbitrary, so it is chosen per class by a **border prior**: the object side is the one whose
mean projection over the interior patches exceeds that over the one-patch border ring (photographs and
the synthetic benchmark alike frame objects away from the edges, and the ring is mostly background even
for objects covering most of the image). On grids under 3x3, or when that gap is negligible, the
**minority rule** decides (the side with fewer positive patches is the object, as PSOL's max+min rule).
Negative projections become 0.

**Contrastive DDT**, when the run has object-free images and ``ddt_contrast`` = a > 0: the direction is the
top eigenvector of C_class - a * C_free (contrastive PCA, Abid et al. 2018), the covariances of the class's
patch descriptors and of the object-free images' ones. Those scenes hold the same backgrounds and distractors,
so the variance they share with the class cancels and what is left is the object's; plain DDT's first
direction is often a distractor's or the background's when the object is small. Projections are measured
from the object-free mean, and the object side is the one the class's images lean to (they hold the object,
the object-free ones do not). On seed 0 of the demo's data (448 px) the share of foreground patches inside
the box rises from 0.35 to 0.61 for birds under 30% of the image side and from 0.83 to 0.94 for large ones
(`benchmarks/cue_quality.py`, docs/presence.md).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["contrastive_ddt_maps", "ddt_maps"]


def ddt_maps(features: torch.Tensor, labels: np.ndarray, seed: int = 0) -> torch.Tensor:
    """DDT co-localization (N, h, w) >= 0: per class, the first principal component's projection, object-signed."""
    n, c, h, w = features.shape
    out = torch.zeros(n, h, w, dtype=torch.float32, device=features.device)
    for k in np.unique(labels):
        idx = torch.from_numpy(np.flatnonzero(labels == k)).to(features.device)
        x = features[idx].permute(0, 2, 3, 1).reshape(-1, c).float()
        x = x - x.mean(dim=0, keepdim=True)
        proj = (x @ _first_principal_direction(x, seed)).reshape(len(idx), h, w)
        out[idx] = (proj * _object_sign(proj)).clamp_min(0)
    return out


def contrastive_ddt_maps(features: torch.Tensor, labels: np.ndarray, background: torch.Tensor,
                         contrast: float) -> torch.Tensor:
    """Contrastive DDT (N, h, w) >= 0 against object-free images' features `background` (M, C, h', w'): per
    class, the top eigenvector of C_class - contrast * C_background, projections from the background mean,
    signed so the class's mean projection is positive (see the module docstring)."""
    n, c, h, w = features.shape
    out = torch.zeros(n, h, w, dtype=torch.float32, device=features.device)
    bg_mean, bg_cov = _mean_cov(background)
    for k in np.unique(labels):
        idx = torch.from_numpy(np.flatnonzero(labels == k)).to(features.device)
        _, cov = _mean_cov(features[idx])
        direction = torch.linalg.eigh(cov - contrast * bg_cov).eigenvectors[:, -1]
        x = features[idx].permute(0, 2, 3, 1).reshape(-1, c).double()
        proj = ((x - bg_mean) @ direction).reshape(len(idx), h, w)
        sign = 1.0 if float(proj.mean()) >= 0 else -1.0  # the object side: where the class's images lean
        out[idx] = (proj * sign).clamp_min(0).float()
    return out


def _mean_cov(features: torch.Tensor, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and covariance (C, C), float64, of the patch descriptors of features (N, C, h, w), summed
    `chunk` images at a time (a float64 copy of every patch would be several GB at 448 px)."""
    c = features.shape[1]
    total = torch.zeros(c, dtype=torch.float64, device=features.device)
    outer = torch.zeros(c, c, dtype=torch.float64, device=features.device)
    count = 0
    for start in range(0, len(features), chunk):
        x = features[start:start + chunk].permute(0, 2, 3, 1).reshape(-1, c).double()
        total += x.sum(0)
        outer += x.t() @ x
        count += len(x)
    mean = total / max(count, 1)
    return mean, (outer - count * torch.outer(mean, mean)) / max(count - 1, 1)


def _first_principal_direction(x: torch.Tensor, seed: int, max_iters: int = 1000) -> torch.Tensor:
    """Unit first principal direction of centred rows x (n, c): the top eigenvector of the smaller of the
    covariance x^T x and the Gram x x^T, by seeded power iteration until the explained variance (Rayleigh
    quotient) stops growing; with near-equal top eigenvalues any direction of their span explains as much."""
    small = x.shape[0] < x.shape[1]
    m = (x @ x.t() if small else x.t() @ x).double()
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(m.shape[0], generator=gen, dtype=torch.float64).to(m.device)
    v, variance = v / v.norm(), 0.0
    for _ in range(max_iters):
        w = m @ v
        previous, variance = variance, float(v @ w)
        v = w / w.norm().clamp_min(1e-300)
        if variance - previous <= 1e-7 * abs(variance):
            break
    direction = x.t().double() @ v if small else v
    return (direction / direction.norm().clamp_min(1e-12)).to(x.dtype)


def _object_sign(proj: torch.Tensor) -> float:
    """+1 or -1 so that positive projections are the object: border prior, minority rule as the fallback."""
    _, h, w = proj.shape
    if h >= 3 and w >= 3:
        interior = proj[:, 1:-1, 1:-1]
        ring_sum = proj.sum(dim=(1, 2)) - interior.sum(dim=(1, 2))
        ring_mean = ring_sum.sum() / (proj.shape[0] * (h * w - (h - 2) * (w - 2)))
        gap = float(interior.mean() - ring_mean)
        if abs(gap) > 1e-3 * float(proj.std()) + 1e-12:
            return 1.0 if gap > 0 else -1.0
    return 1.0 if float((proj > 0).double().mean()) <= 0.5 else -1.0
