"""Per-epoch validation on the cached validation features: classification and the WSOL box protocol.

The localization numbers are the protocol's own (tedloc_edge.metrics: maps at 224x224, every threshold of the
sweep, largest contour, IoU 0.5), maximized over thresholds, so `val_top1_loc` is what best.pt is chosen by
whenever the validation split has boxes. It is the same computation `tedloc-edge eval` makes, on val, with the
evaluator's own ground-truth scaling (`evaluate.protocol_gt_boxes`: the image's real size, read from the file
when the metadata has none, as in the native CUB layout), computed once per sample.
"""

from __future__ import annotations

import weakref

import numpy as np
import torch

from tedloc_edge.datasets import Split
from tedloc_edge.evaluate import protocol_gt_boxes
from tedloc_edge.metrics import EVAL_SIZE, LocAccumulator, protocol_scoremap, ranking_from_logits
from tedloc_edge.train.data import SplitCache

VAL_BATCH = 64
_GT_BOXES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # sample -> its boxes on the 224 grid


def gt_boxes(sample, where: str) -> np.ndarray:
    """The evaluator's ground truth for a sample, remembered (images without sizes are opened once)."""
    if sample not in _GT_BOXES:
        _GT_BOXES[sample] = protocol_gt_boxes(sample, None, where)
    return _GT_BOXES[sample]


@torch.no_grad()
def head_outputs(model: torch.nn.Module, cache: SplitCache, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(fg_map (N, gh, gw), logits (N, C)) for the decodable rows of a cached split, from its features."""
    was_training = model.head.training
    model.head.eval()
    rows = np.flatnonzero(cache.ok)
    maps, logits = [], []
    for start in range(0, len(rows), VAL_BATCH):
        x = torch.from_numpy(np.asarray(cache.features[rows[start:start + VAL_BATCH]], dtype=np.float32)).to(device)
        out = model.forward_features(x)
        maps.append(out["fg_map"].float().cpu().numpy())
        logits.append(out["logits"].float().cpu().numpy())
    model.head.train(was_training)
    return np.concatenate(maps), np.concatenate(logits)


def validate(model: torch.nn.Module, split: Split, cache: SplitCache, input_size: int,
             device: torch.device) -> dict[str, float]:  # input_size: kept for callers; boxes need none
    """{"val_top1_cls"} always; {"val_top1_loc", "val_gt_known_loc", "val_maxboxacc_v2"} when val has boxes."""
    maps, logits = head_outputs(model, cache, device)
    samples = [s for s, ok in zip(split.samples, cache.ok) if ok]
    labels = np.array([s.label for s in samples])
    rankings = [ranking_from_logits(row) for row in logits]
    out = {"val_top1_cls": 100.0 * float((logits.argmax(1) == labels).mean())}
    if not split.has_boxes:
        return out
    acc = LocAccumulator()
    for fg_map, sample, ranking in zip(maps, samples, rankings):
        gt = gt_boxes(sample, f"{split.root} ({split.name})")
        acc.add(protocol_scoremap(fg_map, EVAL_SIZE)[1], gt, sample.label, ranking)
    m = acc.metrics()
    out.update(val_top1_loc=m["top1_loc"], val_gt_known_loc=m["gt_known_loc"], val_maxboxacc_v2=m["maxboxacc_v2"])
    return out
