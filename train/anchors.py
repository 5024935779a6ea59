"""Class anchors t_c: CLIP text embeddings of "Image of a {class}.", projected to d and QR-orthonormalized.

The anchors are computed once and cached in a file keyed by (CLIP model, weights, template, class names, d),
or brought by the user as a (C, d) .npy (`--anchors FILE`). With random CLIP weights (offline, no
`--clip-pretrained`) they still work as orthonormal targets, but carry no text semantics: that is said in the
log and recorded in `anchors.json`, and from there in the exported bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tedloc_edge.files import atomic_write_bytes, atomic_write_text
from tedloc_edge.errors import UserError

log = logging.getLogger(__name__)

PROJECTION_SEED = 1234  # fixed, so the same classes and CLIP model always give the same anchors


@dataclass(frozen=True)
class AnchorInfo:
    source: str  # e.g. "clip:ViT-B-16:openai", "clip:ViT-B-16:random", "file:/path/anchors.npy"
    has_text_semantics: bool
    template: str
    num_classes: int
    dim: int
    key: str = ""  # the cache key (sha256 prefix) when computed from CLIP


def orthonormalize(vectors: np.ndarray, dim: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """(C, D) L2-normalized embeddings -> (C, dim) orthonormal rows (the columns of Q of a QR decomposition).

    When D != dim a fixed seeded Gaussian projection (D, dim) maps them first; dim must be >= C, since C
    orthonormal vectors need C dimensions. With more classes than the CLIP width (C > D), the projected vectors
    span only D dimensions; the QR still gives C orthonormal columns (Householder QR does for any rank), the
    first D of them from the text, the rest completing the basis."""
    vectors = np.asarray(vectors, dtype=np.float64)
    num, width = vectors.shape
    if dim < num:
        raise UserError(f"--embed-dim {dim} is smaller than the number of classes {num}; "
                        f"orthonormal anchors need --embed-dim {num} or more")
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if width != dim:
        rng = np.random.default_rng(seed)
        vectors = vectors @ (rng.standard_normal((width, dim)) / np.sqrt(dim))
    q, r = np.linalg.qr(vectors.T)  # (dim, C): columns orthonormal, spanning the projected embeddings
    q = q * np.sign(np.where(np.diag(r) == 0, 1.0, np.diag(r)))  # deterministic signs: t_c stays close to e_c
    return np.ascontiguousarray(q.T, dtype=np.float32)


def cache_key(clip_model: str, clip_weights: str | None, template: str, class_names: list[str], dim: int) -> str:
    # "v2": random text towers are built under PROJECTION_SEED (before, under whatever RNG state the caller had)
    doc = json.dumps(["v2", clip_model, clip_weights or "random", template, list(class_names), dim], ensure_ascii=False)
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()[:16]


def text_anchors(class_names: list[str], dim: int, *, clip_model: str = "ViT-B-16", clip_pretrained: str | None = None,
                 template: str = "Image of a {}.", cache_dir: str | Path | None = None,
                 device: str = "cpu") -> tuple[np.ndarray, AnchorInfo]:
    """Anchors from the CLIP text tower, reading/writing `cache_dir/anchors-<key>.npz` when given."""
    if "{}" not in template:
        raise UserError(f"--prompt-template {template!r} needs a '{{}}' where the class name goes")
    if dim < len(class_names):
        orthonormalize(np.eye(len(class_names)), dim)  # raises the one-line error
    key = cache_key(clip_model, clip_pretrained, template, class_names, dim)
    weights = clip_pretrained or "random"
    info = AnchorInfo(f"clip:{clip_model}:{weights}", clip_pretrained is not None, template, len(class_names), dim, key)
    cache = Path(cache_dir) / f"anchors-{key}.npy" if cache_dir else None
    if cache is not None and cache.is_file():
        anchors = np.load(cache)
        if anchors.shape == (len(class_names), dim):
            log.info("class anchors from cache %s", cache)
            _warn_if_random(info)
            return anchors, info
    from tedloc_edge.train.clip import load_clip

    with torch.random.fork_rng(devices=[]), torch.no_grad():  # a random tower is the same in every process
        torch.manual_seed(PROJECTION_SEED)
        clip = load_clip(clip_model, clip_pretrained, device=device)
        emb = clip.encode_text([template.format(name) for name in class_names]).cpu().numpy()
    anchors = orthonormalize(emb, dim)
    if cache is not None:
        buf = io.BytesIO()
        np.save(buf, anchors)
        atomic_write_bytes(cache, buf.getvalue())
    _warn_if_random(info)
    return anchors, info


def file_anchors(path: str | Path, class_names: list[str], dim: int) -> tuple[np.ndarray, AnchorInfo]:
    """User-supplied anchors: a (C, d) .npy, rows in class order. Rows are L2-normalized; they are used as given
    otherwise (say so if they are not orthonormal, since the method assumes it)."""
    path = Path(path)
    try:
        anchors = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: no such anchors file; pass a (classes, d) .npy with --anchors") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a readable .npy ({exc}); save anchors with numpy.save") from None
    want = (len(class_names), dim)
    if anchors.ndim != 2 or anchors.shape != want:
        raise UserError(f"{path}: anchors have shape {anchors.shape}, need {want} (classes, --embed-dim)")
    if not np.isfinite(anchors).all():
        raise UserError(f"{path}: anchors hold NaN or inf values; recompute them")
    anchors = anchors / np.maximum(np.linalg.norm(anchors, axis=1, keepdims=True), 1e-12)
    gram = anchors @ anchors.T
    if np.abs(gram - np.eye(len(anchors))).max() > 1e-3:
        log.warning("%s: anchors are not orthonormal (max |<t_i,t_j>| off the diagonal %.3f); TeD-Loc expects QR anchors",
                    path, np.abs(gram - np.diag(np.diag(gram))).max())
    info = AnchorInfo(f"file:{path.resolve()}", True, "", len(class_names), dim)
    return anchors.astype(np.float32), info


def _warn_if_random(info: AnchorInfo) -> None:
    if not info.has_text_semantics:
        log.warning("CLASS ANCHORS CARRY NO TEXT SEMANTICS: %s has random weights; they are orthonormal targets only. "
                    "This is recorded in anchors.json and the exported bundle.", info.source)


def save_anchors(run_dir: str | Path, anchors: np.ndarray, info: AnchorInfo) -> None:
    run_dir = Path(run_dir)
    buf = io.BytesIO()
    np.save(buf, np.asarray(anchors, dtype=np.float32))
    atomic_write_bytes(run_dir / "anchors.npy", buf.getvalue())
    atomic_write_text(run_dir / "anchors.json", json.dumps(asdict(info), indent=2, ensure_ascii=False))


def load_anchors(run_dir: str | Path) -> tuple[np.ndarray, AnchorInfo]:
    run_dir = Path(run_dir)
    try:
        anchors = np.load(run_dir / "anchors.npy", allow_pickle=False)
        info = AnchorInfo(**json.loads((run_dir / "anchors.json").read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: missing from the run folder; retrain or copy it back") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{run_dir}/anchors.*: unreadable ({exc}); retrain to rewrite the anchors") from None
    return anchors.astype(np.float32), info
