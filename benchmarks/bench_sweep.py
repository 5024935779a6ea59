"""The fast WSOL sweep vs the straight per-threshold loop, side by side in one run, same maps, same numbers.

    python benchmarks/bench_sweep.py --images 40 --grid 14

Maps: patch grids (like a ViT-S/16's 14x14) holding a few Gaussian blobs plus noise, upsampled bicubic to
224x224 and cut to uint8 exactly as the protocol does. Each image is scored at all 1,000 thresholds, for
the largest contour (MaxBoxAcc) and every contour (MaxBoxAccV2), against 1-3 random true boxes.

- straight: for each threshold and each contour mode, `boxes.boxes_at_level` (threshold, findContours,
  rectangles) then the IoU, as wsolevaluation's two box evaluators do (2,000 contour passes per image);
- fast: `metrics.sweep_levels` + `metrics.best_iou` (one cropped contour pass per distinct mask, both modes).
Also reported: the straight loop for the largest contour alone (1,000 passes), a lower bound of the reference.
The run fails if any best-IoU value differs between the two.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import cv2
import numpy as np

from tedloc_edge.boxes import CAM_THRESHOLDS, box_iou, boxes_at_level, protocol_boxes, threshold_level
from tedloc_edge.metrics import best_iou, protocol_scoremap, straight_best_iou, sweep_levels


def make_map(rng: np.random.Generator, grid: int) -> np.ndarray:
    """A patch-grid map with 1-3 Gaussian blobs and a little noise, as a trained localizer gives."""
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    m = np.zeros((grid, grid), np.float32)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, grid, size=2)
        sy, sx = rng.uniform(0.8, grid / 3, size=2)
        m += rng.uniform(0.3, 1.0) * np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    return m + rng.uniform(0, 0.08, size=m.shape).astype(np.float32)


def make_gt(rng: np.random.Generator) -> np.ndarray:
    xy = np.sort(rng.integers(0, 224, size=(rng.integers(1, 4), 2, 2)), axis=2)
    return np.stack([xy[:, 0, 0], xy[:, 1, 0], xy[:, 0, 1], xy[:, 1, 1]], axis=1)


def straight_largest(u: np.ndarray, gt: np.ndarray) -> np.ndarray:
    u_max = int(u.max())
    return np.array([box_iou(protocol_boxes(boxes_at_level(u, threshold_level(t, u_max), "largest")), gt).max()
                     for t in CAM_THRESHOLDS])


def timed(fn, items) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(u, gt) for u, gt in items]
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--grid", type=int, default=14, help="patch grid side before the 224x224 upsampling")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    items = [(protocol_scoremap(make_map(rng, args.grid))[1], make_gt(rng)) for _ in range(args.images)]
    masks = [len(sweep_levels(u).largest) for u, _ in items]

    t_fast, fast = timed(lambda u, gt: best_iou(sweep_levels(u), gt), items)
    t_slow, slow = timed(straight_best_iou, items)
    t_largest, largest = timed(straight_largest, items)
    for i, (f, s, lg) in enumerate(zip(fast, slow, largest)):
        if not (np.array_equal(f["largest"], s["largest"]) and np.array_equal(f["all"], s["all"])
                and np.array_equal(f["largest"], lg)):
            print(f"MISMATCH on image {i}: the fast sweep differs from the straight loop", file=sys.stderr)
            return 1

    n = args.images
    print(f"command: python benchmarks/bench_sweep.py --images {n} --grid {args.grid} --seed {args.seed}")
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}, OpenCV {cv2.__version__}, "
          f"{cv2.getNumThreads()} OpenCV threads")
    print(f"{n} maps 224x224 from {args.grid}x{args.grid} grids, 1000 thresholds, distinct masks per map: "
          f"mean {np.mean(masks):.0f} (min {min(masks)}, max {max(masks)})")
    print(f"straight loop, largest + all contours: {1000 * t_slow / n:8.1f} ms/image")
    print(f"straight loop, largest contour only:   {1000 * t_largest / n:8.1f} ms/image")
    print(f"fast sweep, largest + all contours:    {1000 * t_fast / n:8.1f} ms/image")
    print(f"speed-up (same work, both modes):      {t_slow / t_fast:8.1f}x")
    print(f"speed-up vs largest-only straight loop: {t_largest / t_fast:7.1f}x")
    print("identical best IoU at every threshold, both modes, every image: yes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
