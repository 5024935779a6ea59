"""Localization cues: one pseudo-label map per training image, computed once and cached on disk.

TeD-Loc samples foreground and background patches from these maps (training only). Four sources:

* ``ddt``: DDT / PSOL class co-localization, offline, plain or contrasted with object-free images
  (``tedloc_edge.train.ddt``).
* ``cam``: class activation map of a linear classifier trained (seeded, full-batch L-BFGS) on globally
  pooled frozen features: the true class's map, ReLU.
* ``clip-es``: CLIP-ES (``tedloc_edge.train.clip_es``) for the true class, from an open_clip ViT.
* ``files``: the user's maps, ``cue_dir/<image id without extension>.{npy,png,jpg,jpeg}`` (or the bare
  file stem), any resolution and range.

Every map is resized bilinearly to ``out_size`` and min-max normalized to [0, 1] (a constant map -> 0).
With a ``cache_dir``, the maps are saved as ``<kind>-<key>.npy`` plus a JSON sidecar of the settings; the
key hashes the kind, its settings, the sample ids and labels and the features, so a second call loads.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from tedloc_edge.files import atomic_write_text
from tedloc_edge.boxes import normalize_map
from tedloc_edge.errors import UserError
from tedloc_edge.console import progress as progress_bar
from tedloc_edge.images import load_image
from tedloc_edge.train.config import CUE_KINDS
from tedloc_edge.train.cue_picture import save_cue_picture
from tedloc_edge.train.ddt import contrastive_ddt_maps, ddt_maps

__all__ = ["CUE_KINDS", "compute_cues", "save_cue_picture", "ddt_maps", "contrastive_ddt_maps", "cam_maps",
           "clip_es_maps", "load_cue_file", "finalize_maps"]
log = logging.getLogger(__name__)

CUE_FORMAT = 1  # bump when a kind's computation changes, so old caches are not reused
FILE_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg")
CAM_STEPS, CAM_WEIGHT_DECAY = 300, 1e-4  # L-BFGS iterations at most; L2 on the weights

Features = torch.Tensor | Callable[[], torch.Tensor] | None


def compute_cues(
    kind: str,
    samples: Sequence,
    class_names: Sequence[str],
    *,
    features: Features,
    out_size: tuple[int, int],
    cache_dir: Path | None = None,
    clip_model: str = "ViT-B-16",
    clip_pretrained: str | None = None,
    cue_dir: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    features_key: str | None = None,
    clip_input_size: int | None = None,
    background: Features = None,
    background_key: str | None = None,
    ddt_contrast: float = 0.0,
) -> np.ndarray:
    """Cue maps (N, gh, gw) float32 in [0, 1] for `samples` (objects with image_id, path, label), at `out_size`.

    `features` (ddt, cam): (N, C, h, w) frozen-backbone features of the samples, or a callable returning them;
    with `features_key` (e.g. backbone, weights and input size) naming them, a cache hit never calls it.
    `background` (ddt with `ddt_contrast` > 0): the same features of object-free images, named by `background_key`
    the same way; without them (or with ddt_contrast 0) DDT is the plain one.
    """
    contrast = float(ddt_contrast) if kind == "ddt" and background is not None else 0.0
    req = _Request(_check_kind(kind), samples, tuple(class_names), _labels(samples, len(class_names)),
                   (int(out_size[0]), int(out_size[1])), cue_dir, clip_model, clip_pretrained, clip_input_size,
                   device, seed, progress, contrast)
    settings = _settings(req)
    feats = None
    if req.kind in ("ddt", "cam"):
        if features is None:
            raise ValueError("cue kinds ddt and cam need the frozen backbone's features (N, C, h, w)")
        if features_key is None:  # name the features by their content
            feats = _materialize(features, len(samples))
            features_key = _features_digest(feats)
        settings["features"] = features_key
    bg = None
    if req.contrast > 0:
        if background_key is None:
            bg = _materialize(background, None)
            background_key = _features_digest(bg)
        settings["background"] = background_key
    key = _cache_key(settings, req)
    cached = _load_cached(cache_dir, req.kind, key, (len(samples), *req.out_size)) if cache_dir is not None else None
    if cached is not None:
        log.info("cues: loaded %d %s maps from the cache %s", len(samples), req.kind, cache_dir)
        return cached
    if feats is None and req.kind in ("ddt", "cam"):
        feats = _materialize(features, len(samples))
    if req.contrast > 0 and bg is None:
        bg = _materialize(background, None)
    maps = finalize_maps(_compute(req, feats, bg), req.out_size)
    if cache_dir is not None:
        _save_cached(Path(cache_dir), req.kind, key, maps, settings)
    return maps


@dataclass(frozen=True)
class _Request:
    kind: str
    samples: Sequence
    class_names: tuple[str, ...]
    labels: np.ndarray
    out_size: tuple[int, int]
    cue_dir: Path | None
    clip_model: str
    clip_pretrained: str | None
    clip_input_size: int | None
    device: str
    seed: int
    progress: bool
    contrast: float = 0.0


def _compute(req: _Request, feats: torch.Tensor | None, background: torch.Tensor | None) -> Sequence[np.ndarray]:
    if req.kind == "ddt" and background is not None:
        return contrastive_ddt_maps(feats.to(req.device), req.labels, background.to(req.device),
                                    req.contrast).cpu().numpy()
    if req.kind == "ddt":
        return ddt_maps(feats.to(req.device), req.labels, seed=req.seed).cpu().numpy()
    if req.kind == "cam":
        return cam_maps(feats.to(req.device), req.labels, len(req.class_names), seed=req.seed).cpu().numpy()
    if req.kind == "clip-es":
        return clip_es_maps(req.samples, req.class_names, req.labels, clip_model=req.clip_model,
                            clip_pretrained=req.clip_pretrained, input_size=req.clip_input_size, device=req.device,
                            progress=req.progress)
    return [load_cue_file(p) for p in _cue_files(req.samples, Path(req.cue_dir))]


# ---------------------------------------------------------------------------------------------- sources


def cam_maps(features: torch.Tensor, labels: np.ndarray, num_classes: int, seed: int = 0,
             steps: int = CAM_STEPS) -> torch.Tensor:
    """CAM (N, h, w) >= 0 of a linear classifier on standardized pooled features, for each true class.

    The classifier is L2-regularized softmax regression, a convex problem: full-batch L-BFGS from a seeded
    start, at most `steps` iterations, stopping early once converged."""
    feats = features.float()
    pooled = feats.mean(dim=(2, 3))
    mu = pooled.mean(dim=0)
    sd = pooled.std(dim=0).clamp_min(1e-6) if len(pooled) > 1 else torch.ones_like(mu)
    z = (pooled - mu) / sd
    y = torch.as_tensor(labels, dtype=torch.long, device=feats.device)
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(z.shape[1], num_classes).to(feats.device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    losses: list[float] = []

    def objective() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(head(z), y) + CAM_WEIGHT_DECAY * head.weight.pow(2).sum()
        loss.backward()
        losses.append(float(loss.detach()))
        return loss

    with torch.enable_grad():
        opt.step(objective)
    with torch.no_grad():
        acc = float((head(z).argmax(dim=1) == y).float().mean())
    log.info("cues: cam classifier (L-BFGS, %d evaluations): loss %.4f, train accuracy %.3f", len(losses), losses[-1], acc)
    weights = (head.weight.detach() / sd)[y]  # the same classifier on raw features; the bias is no map
    return torch.relu(torch.einsum("nc,nchw->nhw", weights, feats))


def clip_es_maps(samples: Sequence, class_names: Sequence[str], labels: np.ndarray, *, clip_model: str,
                 clip_pretrained: str | None, input_size: int | None, device: str, progress: bool) -> np.ndarray:
    """CLIP-ES maps at the CLIP patch grid for every sample's image and true class."""
    from tedloc_edge.train.clip import load_clip
    from tedloc_edge.train.clip_es import ClipES, ClipESConfig

    es = ClipES(load_clip(clip_model, clip_pretrained, device), class_names, ClipESConfig(input_size=input_size))
    bs, out = es.cfg.batch_size, []
    with progress_bar(transient=True, disable=None if progress else True) as bar:
        task = bar.add_task("clip-es cues", total=len(samples), info="")
        for start in range(0, len(samples), bs):
            chunk = samples[start:start + bs]
            out.append(es.maps([load_image(s.path) for s in chunk], labels[start:start + bs]))
            bar.advance(task, len(chunk))
    return np.concatenate(out) if out else np.zeros((0, *es.grid), dtype=np.float32)


def load_cue_file(path: Path) -> np.ndarray:
    """One user cue map as float (h, w): a 2-D .npy (any range) or an image (colour images are averaged)."""
    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy cue map ({exc}); save it with numpy.save") from None
    else:
        arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise UserError(f"{path}: not a decodable cue image; replace it with a grayscale PNG or a .npy")
        if arr.ndim == 3:
            arr = arr[..., :3].mean(axis=2)
    arr = np.squeeze(np.asarray(arr))
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise UserError(f"{path}: cue map has shape {arr.shape} ({arr.dtype}); save one 2-D numeric map per image")
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: cue map has NaN or infinite values; replace them before training")
    return arr.astype(np.float32)


def _cue_files(samples: Sequence, cue_dir: Path) -> list[Path]:
    if not cue_dir.is_dir():
        raise UserError(f"{cue_dir}: cue folder not found; pass --cue-dir with one map per training image")
    found = []
    for s in samples:
        rel = Path(s.image_id).with_suffix("")
        candidates = [cue_dir / f"{rel}{ext}" for ext in FILE_SUFFIXES]
        candidates += [cue_dir / f"{rel.name}{ext}" for ext in FILE_SUFFIXES]
        hit = next((p for p in candidates if p.is_file()), None)
        if hit is None:
            raise UserError(f"{candidates[0]}: missing cue map for image {s.image_id}; "
                            f"add it as .npy, .png or .jpg (or drop the image from the split)")
        found.append(hit)
    return found


def finalize_maps(maps: Sequence[np.ndarray], out_size: tuple[int, int]) -> np.ndarray:
    """Each map resized bilinearly to `out_size` = (h, w), then min-max normalized -> (N, h, w) float32."""
    h, w = out_size
    out = np.zeros((len(maps), h, w), dtype=np.float32)
    for i, m in enumerate(maps):
        m = np.asarray(m, dtype=np.float32)
        out[i] = normalize_map(cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) if m.shape != (h, w) else m)
    return out


# ---------------------------------------------------------------------------------------------- cache


def _check_kind(kind: str) -> str:
    if kind not in CUE_KINDS:
        close = difflib.get_close_matches(kind, CUE_KINDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"--cue {kind!r} is not a cue kind{hint}; choose one of {', '.join(CUE_KINDS)}")
    return kind


def _labels(samples: Sequence, num_classes: int) -> np.ndarray:
    labels = np.array([int(s.label) for s in samples], dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        s = samples[int(bad[0])]
        raise UserError(f"{s.image_id}: class index {s.label} is outside 0..{num_classes - 1}; "
                        "fix the labels or classes.txt")
    return labels


def _materialize(features: Features, n: int | None) -> torch.Tensor:
    """The features as a (N, C, h, w) tensor (calling them when callable); `n` None takes any N."""
    feats = features() if callable(features) else features
    if not isinstance(feats, torch.Tensor) or feats.ndim != 4 or (n is not None and feats.shape[0] != n):
        raise ValueError(f"features must be a tensor (N={n}, C, h, w), got {getattr(feats, 'shape', type(feats))}")
    return feats


def _features_digest(feats: torch.Tensor) -> str:
    digest = hashlib.sha256(feats.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:24]}:{tuple(feats.shape)}"


def _settings(req: _Request) -> dict:
    settings: dict = {"kind": req.kind, "format": CUE_FORMAT, "out_size": list(req.out_size)}
    if req.kind == "ddt" and req.contrast > 0:
        settings.update(contrast=req.contrast, sign="background-mean")
    elif req.kind == "ddt":
        settings.update(seed=req.seed, sign="border-prior/minority")
    elif req.kind == "cam":
        settings.update(seed=req.seed, solver="lbfgs", steps=CAM_STEPS, weight_decay=CAM_WEIGHT_DECAY)
    elif req.kind == "clip-es":
        from tedloc_edge.train.clip_es import ClipESConfig

        weights = req.clip_pretrained
        if weights and Path(weights).is_file():
            st = Path(weights).stat()
            weights = f"{Path(weights).resolve()}:{st.st_size}:{st.st_mtime_ns}"
        cfg = asdict(ClipESConfig(input_size=req.clip_input_size))
        settings.update(clip_model=req.clip_model, clip_weights=weights, meaningful=weights is not None, **cfg)
    elif req.kind == "files":
        if req.cue_dir is None:
            raise UserError("--cue files needs --cue-dir DIR holding one map per training image")
        settings.update(cue_dir=str(Path(req.cue_dir).resolve()),
                        files=_files_digest(_cue_files(req.samples, Path(req.cue_dir))))
    return settings


def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


def _cache_key(settings: dict, req: _Request) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update("\n".join(req.class_names).encode())
    h.update("\n".join(s.image_id for s in req.samples).encode())
    h.update(req.labels.tobytes())
    return h.hexdigest()[:16]


def _cache_paths(cache_dir: Path, kind: str, key: str) -> tuple[Path, Path]:
    stem = f"{kind}-{key}"
    return Path(cache_dir) / f"{stem}.npy", Path(cache_dir) / f"{stem}.json"


def _load_cached(cache_dir: Path, kind: str, key: str, shape: tuple[int, ...]) -> np.ndarray | None:
    npy, side = _cache_paths(cache_dir, kind, key)
    if not (npy.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        maps = np.load(npy, allow_pickle=False)
    except (OSError, ValueError) as exc:
        log.warning("cues: cache %s unreadable (%s); recomputing", npy, exc)
        return None
    if meta.get("key") != key or maps.shape != shape or maps.dtype != np.float32 or not np.isfinite(maps).all():
        log.warning("cues: cache %s does not match these settings; recomputing", npy)
        return None
    return maps


def _save_cached(cache_dir: Path, kind: str, key: str, maps: np.ndarray, settings: dict) -> None:
    npy, side = _cache_paths(cache_dir, kind, key)
    npy.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{npy.name}.", suffix=".tmp", dir=npy.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, maps)
        os.replace(tmp, npy)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    doc = {"key": key, "count": len(maps), "shape": list(maps.shape), "settings": settings}
    atomic_write_text(side, json.dumps(doc, indent=2, ensure_ascii=False, default=str))
    log.info("cues: cached %d %s maps at %s", len(maps), kind, npy)
