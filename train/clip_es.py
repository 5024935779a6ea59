"""CLIP-ES localization cues: Grad-CAM on a CLIP ViT, refined by class-aware attention affinity.

After Lin et al., "CLIP is Also an Efficient Segmenter" (CVPR 2023), the cue source TeD-Loc trains from:

1. Text side: the prompt "a clean origami {}." for every class and for 25 background words, through the
   CLIP text tower, L2-normalized.
2. Image side: the image resized (no crop) to the CLIP input size and run through the visual tower. A
   manual forward over ``visual.transformer.resblocks`` recomputes each block's attention from its
   ``in_proj`` weights (so the head-averaged attention maps come out) and is checked in the tests to
   equal open_clip's own ``encode_image``.
3. Score: cosine logits times ``logit_scale``, softmax over the target class and the background words
   (as the CLIP-ES code does for a single-label image; ``compete_with_classes`` adds the other classes).
4. Grad-CAM: the gradient of the target's softmax score with respect to the last block's ``ln_1``
   output (its patch tokens), averaged over patches per channel, weights the activations; ReLU; min-max.
5. Class-aware attention refinement (CAA): the head-averaged patch-to-patch attention of the last 8
   blocks, averaged, is made doubly stochastic (Sinkhorn: 3 rounds of column then row normalization),
   symmetrized and squared; its columns outside the boxes of the Grad-CAM at 0.4 of its maximum (every
   contour, the WSOL protocol's box rule) are zeroed; the refined map is that affinity times the
   Grad-CAM, min-max normalized. Boxes are inclusive on the patch grid (the reference code's exclusive
   slice after clipping to W-1, H-1 drops the last row and column of a box touching the border).

With random CLIP weights (offline, nothing given) all of this runs but the maps mean nothing; a warning says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tedloc_edge.boxes import boxes_at_level, normalize_map
from tedloc_edge.errors import UserError

log = logging.getLogger(__name__)

PROMPT = "a clean origami {}."
# The background set of the CLIP-ES code (VOC/COCO experiments).
BACKGROUND_WORDS = (
    "ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water", "river", "sea", "railway",
    "railroad", "keyboard", "helmet", "cloud", "house", "mountain", "ocean", "road", "rock", "street", "valley",
    "bridge", "sign",
)


@dataclass(frozen=True)
class ClipESConfig:
    prompt: str = PROMPT
    background: tuple[str, ...] = BACKGROUND_WORDS
    affinity_blocks: int = 8  # attention of the last this many blocks makes the affinity
    box_threshold: float = 0.4  # fraction of the Grad-CAM maximum whose boxes gate the affinity
    sinkhorn_rounds: int = 3  # column-then-row normalizations (the reference: 1 + 2)
    input_size: int | None = None  # square side fed to CLIP (multiple of the patch); None: the model's own
    batch_size: int = 8
    compete_with_classes: bool = False  # softmax over target + background (CLIP-ES) or all classes + background


class ClipES:
    """CLIP-ES maps for images and their true classes, from a loaded `tedloc_edge.train.clip.ClipModel`."""

    def __init__(self, clip, class_names: Sequence[str], cfg: ClipESConfig = ClipESConfig()):
        self.clip, self.cfg = clip, cfg
        self.visual = _check_visual(clip.model, clip.name)
        clip.model.requires_grad_(False)  # gradients are taken w.r.t. activations only
        self.device = next(clip.model.parameters()).device
        self.num_classes = len(class_names)
        self.prompts = [cfg.prompt.format(c) for c in class_names] + [cfg.prompt.format(w) for w in cfg.background]
        self._text: torch.Tensor | None = None
        self.logit_scale = float(clip.model.logit_scale.exp())
        patch = _pair(self.visual.patch_size)[0]
        native = _pair(self.visual.image_size)[0]
        self.input_size = cfg.input_size or native
        if self.input_size % patch:
            raise UserError(f"clip-es input size {self.input_size} is not a multiple of {clip.name}'s patch {patch}; "
                            f"pick a multiple of {patch}")
        self.grid = (self.input_size // patch, self.input_size // patch)
        if not 1 <= cfg.affinity_blocks <= len(self.visual.transformer.resblocks):
            raise UserError(f"clip-es affinity_blocks {cfg.affinity_blocks}: use 1 to "
                            f"{len(self.visual.transformer.resblocks)} (the blocks of {clip.name}; CLIP-ES uses 8)")
        if not clip.has_weights:
            log.warning("CLIP-ES with RANDOM CLIP weights: the cue maps are noise and the model will learn nothing "
                        "useful from them. Pass --clip-pretrained openai (online) or a local CLIP checkpoint file.")

    @property
    def text(self) -> torch.Tensor:
        """L2-normalized text embeddings (C + background, e) of the prompts, encoded on first use."""
        if self._text is None:
            self._text = F.normalize(self.clip.encode_text(self.prompts), dim=-1)
        return self._text

    # -- image side -------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """RGB uint8 HxWx3 images of any size -> (B, 3, S, S) normalized, resized without crop."""
        s = self.input_size
        batch = np.stack([cv2.resize(im, (s, s), interpolation=cv2.INTER_CUBIC) for im in images]).astype(np.float32)
        x = torch.from_numpy(batch / 255.0).permute(0, 3, 1, 2)
        mean = torch.tensor(self.clip.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.clip.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the first block: open_clip's ``_embeds`` with the position embedding resized to the grid."""
        v = self.visual
        x = v.conv1(x)
        b, d, gh, gw = x.shape
        x = x.reshape(b, d, gh * gw).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, d).expand(b, 1, d)
        x = torch.cat([cls, x], dim=1) + _resized_pos_embed(v.positional_embedding, gh, gw).to(x.dtype)
        return v.ln_pre(x)

    def _image_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final tokens (B, L, D) -> cosine logits (B, C + background) scaled as CLIP scales them."""
        pooled, _ = self.visual._pool(tokens)
        if self.visual.proj is not None:
            pooled = pooled @ self.visual.proj
        return self.logit_scale * F.normalize(pooled, dim=-1) @ self.text.t()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding through the manual forward (equals ``model.encode_image`` at the native size)."""
        tokens = self._embed(x)
        for blk in self.visual.transformer.resblocks:
            tokens, _, _ = _block_forward(blk, tokens)
        pooled, _ = self.visual._pool(tokens)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def target_scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Softmax probability of each image's label against the background words (and the classes, if asked)."""
        if self.cfg.compete_with_classes:
            return logits.softmax(dim=-1).gather(1, labels[:, None])[:, 0]
        fg = logits.gather(1, labels[:, None])
        return torch.cat([fg, logits[:, self.num_classes:]], dim=1).softmax(dim=-1)[:, 0]

    def gradcam_and_affinity(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grad-CAM (B, gh*gw) in [0, 1] and the averaged patch attention (B, n, n) of the last blocks."""
        blocks = self.visual.transformer.resblocks
        first_kept = max(len(blocks) - self.cfg.affinity_blocks, 0)
        attns = []
        with torch.no_grad():
            tokens = self._embed(x)
            for i, blk in enumerate(blocks[:-1]):
                tokens, attn, _ = _block_forward(blk, tokens)
                if i >= first_kept:
                    attns.append(attn)
        last = blocks[-1]
        with torch.enable_grad():
            acts = last.ln_1(tokens).detach().requires_grad_(True)  # the Grad-CAM layer: the last block's ln_1
            out, attn = _attention(last.attn, acts)
            hidden = tokens + last.ls_1(out)
            hidden = hidden + last.ls_2(last.mlp(last.ln_2(hidden)))
            score = self.target_scores(self._image_logits(hidden), labels)
            (grads,) = torch.autograd.grad(score.sum(), acts)
        attns.append(attn.detach())
        patch_acts, patch_grads = acts.detach()[:, 1:], grads[:, 1:]
        weights = patch_grads.mean(dim=1, keepdim=True)  # (B, 1, D): per-channel mean gradient
        cam = torch.relu((patch_acts * weights).sum(dim=-1))
        cam = _minmax_rows(cam)
        affinity = torch.stack(attns).mean(dim=0)[:, 1:, 1:]
        return cam, affinity

    @torch.no_grad()
    def refine(self, cam: np.ndarray, affinity: torch.Tensor) -> np.ndarray:
        """Class-aware attention refinement of one Grad-CAM (gh, gw) with its affinity (n, n) -> (gh, gw)."""
        gh, gw = cam.shape
        box_mask = self._box_mask(cam).reshape(1, gh * gw)
        trans = affinity.double().cpu()
        for _ in range(self.cfg.sinkhorn_rounds):
            trans = trans / trans.sum(dim=0, keepdim=True)
            trans = trans / trans.sum(dim=1, keepdim=True)
        trans = (trans + trans.t()) / 2
        trans = (trans @ trans) * torch.from_numpy(box_mask).double()
        refined = (trans @ torch.from_numpy(cam.reshape(-1, 1)).double()).reshape(gh, gw)
        return normalize_map(refined.numpy())

    def _box_mask(self, cam: np.ndarray) -> np.ndarray:
        """1 inside every box of the map's contours above box_threshold of its maximum, else 0 (patch grid)."""
        u = (cam * 255).astype(np.uint8)
        mask = np.zeros(cam.shape, dtype=np.float64)
        for x0, y0, x1, y1 in boxes_at_level(u, int(self.cfg.box_threshold * int(u.max())), mode="all"):
            mask[y0:y1 + 1, x0:x1 + 1] = 1.0
        return mask

    def maps(self, images: Sequence[np.ndarray], labels: Sequence[int]) -> np.ndarray:
        """Refined CLIP-ES maps (B, gh, gw) float32 in [0, 1] for RGB uint8 images and their class indices."""
        x = self.preprocess(images)
        y = torch.as_tensor(list(labels), dtype=torch.long, device=self.device)
        cam, affinity = self.gradcam_and_affinity(x, y)
        gh, gw = self.grid
        cam_np = cam.detach().cpu().numpy().reshape(-1, gh, gw)
        return np.stack([self.refine(c, a) for c, a in zip(cam_np, affinity)]).astype(np.float32)


def _check_visual(model, name: str):
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None:
        raise UserError(f"clip-es needs an open_clip ViT with a plain token-pooled visual tower; {name} is not one "
                        "(use --clip-model ViT-B-16)")
    if not all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks):
        raise UserError(f"clip-es reads attention from nn.MultiheadAttention blocks; {name} uses custom attention "
                        "(use --clip-model ViT-B-16)")
    return visual


def _attention(mha: torch.nn.MultiheadAttention, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-attention of (B, L, D) tokens from the module's own weights -> (output, head-mean weights (B, L, L))."""
    b, n, d = y.shape
    heads = mha.num_heads
    q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) * (d // heads) ** -0.5).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, n, d)
    return mha.out_proj(out), weights.mean(dim=1)


def _block_forward(blk, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One open_clip ResidualAttentionBlock -> (tokens out, head-mean attention, ln_1 output)."""
    y = blk.ln_1(x)
    out, attn = _attention(blk.attn, y)
    x = x + blk.ls_1(out)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, attn, y


def _resized_pos_embed(pos: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    """(1 + g*g, D) position embedding resized bicubically to a (gh, gw) patch grid (CLS entry kept)."""
    n, d = pos.shape
    g = int(round((n - 1) ** 0.5))
    if (g, g) == (gh, gw):
        return pos
    grid = pos[1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, d).to(pos.dtype)], dim=0)


def _minmax_rows(x: torch.Tensor) -> torch.Tensor:
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))
