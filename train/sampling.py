"""Which patches teach what: the foreground and background rules of the cue map, as settings.

Rules (`--fg-rule`, `--bg-rule`), per image on its cue map c over the patch grid:
- ``otsu``: fg = c > Otsu threshold of c (the paper's rule for CLIP-ES cues); as a bg rule, c <= that threshold.
- ``frac:F``: fg = c > F * max(c); as a bg rule, c <= F * max(c).
- ``quantile:Q``: fg = c > the Q-quantile of c (the top 1-Q); as a bg rule, the lowest Q fraction of the patches.
  Ties at the cut are all kept: DDT maps are clamped at 0 and most of a map can be exactly 0, so "the lowest 20%"
  is every patch at the 20% value, and draws are uniform among them (never the first ones in raster order).
Background never overlaps foreground. Candidate regions are fixed per image (the cues are computed once); the k
patches drawn from them are redrawn at every step, with replacement when a region is smaller than k.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tedloc_edge.errors import UserError

OTSU_BINS = 256
RULE_KINDS = ("otsu", "frac", "quantile")


def parse_rule(spec: str, option: str = "--fg-rule") -> tuple[str, float]:
    """'otsu' | 'frac:F' | 'quantile:Q' (F, Q in (0, 1)) -> (kind, value); a UserError names the option."""
    kind, _, value = str(spec).strip().partition(":")
    if kind == "otsu" and not value:
        return kind, 0.0
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if kind not in RULE_KINDS or kind == "otsu" or not 0.0 < number < 1.0:
        raise UserError(f"{option} {spec!r}: write otsu, frac:F or quantile:Q with F, Q between 0 and 1 "
                        "(e.g. frac:0.7, quantile:0.2)")
    return kind, number


def rule_cut(row: np.ndarray, rule: tuple[str, float]) -> float:
    """The cue value a rule cuts at: fg is row > cut, bg is row <= cut."""
    kind, value = rule
    if kind == "otsu":
        return otsu_threshold(row)
    if kind == "frac":
        return float(value * row.max())
    k = max(1, int(round(value * row.size)))  # quantile: the k-th smallest value, ties included
    return float(np.partition(row, k - 1)[k - 1])


def otsu_threshold(values: np.ndarray, bins: int = OTSU_BINS) -> float:
    """Otsu's threshold of values in [0, 1]: the level maximizing the between-class variance (histogram of `bins`).

    Foreground is then `values > threshold`. A constant input returns its value (nothing lies above it)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-12:
        return hi
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    omega = np.cumsum(p)  # weight of the class at or below each bin
    mu = np.cumsum(p * np.arange(bins))
    mu_t = mu[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu_t * omega - mu) ** 2 / (omega * (1.0 - omega))
    between = np.nan_to_num(between, nan=-1.0, posinf=-1.0)
    k = int(np.argmax(between[:-1]))  # the split after bin k; the last bin would leave nothing above
    return float(edges[k + 1])


@dataclass(frozen=True)
class PatchRegions:
    """Per image, over the flattened patch grid (N, P): candidate masks and whether the cue can teach at all."""

    fg: torch.Tensor  # (N, P) bool, cue above the fg rule's cut
    bg: torch.Tensor  # (N, P) bool, cue at or below the bg rule's cut, outside fg
    valid: torch.Tensor  # (N,) bool, False for a constant cue map (no foreground to tell apart)


def patch_regions(cues: np.ndarray, bg_rule: str = "quantile:0.2", fg_rule: str = "otsu") -> PatchRegions:
    """Candidate regions from cue maps (N, gh, gw) in [0, 1] under the two rules (see the module docstring)."""
    fg_r, bg_r = parse_rule(fg_rule, "--fg-rule"), parse_rule(bg_rule, "--bg-rule")
    cues = np.asarray(cues, dtype=np.float32)
    n = cues.shape[0]
    flat = cues.reshape(n, -1)
    fg = np.zeros(flat.shape, dtype=bool)
    bg = np.zeros(flat.shape, dtype=bool)
    valid = np.zeros(n, dtype=bool)
    for i, row in enumerate(flat):
        if row.max() - row.min() < 1e-6:
            continue
        fg[i] = row > rule_cut(row, fg_r)
        bg[i] = (row <= rule_cut(row, bg_r)) & ~fg[i]
        valid[i] = fg[i].any() and bg[i].any()
    return PatchRegions(torch.from_numpy(fg), torch.from_numpy(bg), torch.from_numpy(valid))


def add_negatives(regions: PatchRegions, count: int) -> PatchRegions:
    """The regions with `count` object-free images appended: no foreground, every patch background."""
    patches = regions.fg.shape[1]
    return PatchRegions(torch.cat([regions.fg, torch.zeros(count, patches, dtype=torch.bool)]),
                        torch.cat([regions.bg, torch.ones(count, patches, dtype=torch.bool)]),
                        torch.cat([regions.valid, torch.ones(count, dtype=torch.bool)]))


def hardest_background(bg_idx: torch.Tensor, fg_logits: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """`bg_idx` (B, k) with each object-free row (`negative`) replaced by its k highest-scoring patches (repeated
    on a grid of fewer than k): every patch of such an image is background, and the highest are the ones the
    presence score reads (tedloc_edge.presence), so they are the ones worth teaching."""
    k, patches = bg_idx.shape[1], fg_logits.shape[1]
    hard = fg_logits.detach().topk(min(k, patches), dim=1).indices
    hard = hard.repeat(1, -(-k // hard.shape[1]))[:, :k].to(bg_idx.device)
    return torch.where(negative.to(bg_idx.device)[:, None], hard, bg_idx)


def flip_regions(regions: PatchRegions, grid: tuple[int, int]) -> PatchRegions:
    """The regions of horizontally flipped images."""
    gh, gw = grid

    def flip(mask: torch.Tensor) -> torch.Tensor:
        return mask.view(-1, gh, gw).flip(-1).reshape(mask.shape)

    return PatchRegions(flip(regions.fg), flip(regions.bg), regions.valid)


def draw(mask: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k patch indices per row of a (B, P) bool mask, uniformly from its True entries, with replacement.

    A row with no True entry draws uniformly from all patches (callers weight such rows out)."""
    weights = mask.float()
    empty = weights.sum(1) == 0
    weights[empty] = 1.0
    return torch.multinomial(weights, k, replacement=True, generator=generator)


def sample_patches(regions: PatchRegions, index: torch.Tensor, k_fg: int, k_bg: int,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the batch rows `index` into the regions: (fg_idx (B, k_fg), bg_idx (B, k_bg), valid (B,))."""
    fg = regions.fg[index]
    bg = regions.bg[index]
    return draw(fg, k_fg, generator), draw(bg, k_bg, generator), regions.valid[index]
