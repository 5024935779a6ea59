"""The README.txt that `tedloc-edge data synth` writes beside the benchmark (train/synth.py)."""

from __future__ import annotations

README_TITLE = "Synthetic WSOL benchmark (tedloc-edge data synth)"  # how data synth --exist-ok knows its own folders


def readme(table: tuple[tuple[str, str, str], ...], scale_range: tuple[float, float], counts: dict[str, int],
           seed: int, image_size: tuple[int, int], negatives: dict[str, int]) -> str:
    """`table`: (name, head colour, pattern) per class, line i = class i; `negatives`: object-free scenes per split."""
    class_lines = "\n".join(f"  {i:2d}  {name:<18} head: {colour} {pattern}" for i, (name, colour, pattern) in enumerate(table))
    written = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    per_split = ", ".join(f"{k}_negatives {negatives[k]}" for k, v in counts.items() if v and negatives.get(k))
    empty = "" if not per_split else f"""
Object-free scenes in metadata/<split>_negatives/ ({per_split}): the same backgrounds and
distractors (headless bodies, lone heads) with no bird. They list image_ids.txt and image_sizes.txt only:
no class (a scene without an object has none), no box, no mask. Training uses train_negatives for the presence score; eval --calibrate uses val_negatives to pick
the presence threshold and eval on test reports presence with test_negatives.
"""
    return f"""{README_TITLE}

Every image holds one bird. All birds share one body: the same shape, feather texture and colour.
Only the head tells the class: its colour and pattern (solid, striped, dotted or ringed), and the head
covers about 18% of the bird. Colours and patterns are shared between classes, so neither alone is
enough. A classifier needs only the head, so a CAM fires on it; the box and mask to find cover the whole
bird (tail, body, head and beak). This is the gap between part and object that WSOL methods must close.

Clutter: gradient and noise backgrounds, stripes, translucent blobs, grain; 0-2 headless bodies and
0-2 lone heads (as large as real birds' heads) of random classes, never touching the bird, so a body or
head detector is fooled.
Pose: any rotation, mirror, aspect 0.8-1.25 across the body, box side {scale_range[0]:.0%}-{scale_range[1]:.0%}
of the image's shorter side. Image sides: {image_size[0]}-{image_size[1]} px; 70% JPEG (quality 92), 30% PNG.

Layout (wsolevaluation metadata, see METHOD.md): classes.txt, images/<split>/, metadata/<split>/
{{image_ids,class_labels,image_sizes,localization}}.txt, masks/<split>/<split>/<n>.png (0/255).
Boxes are xyxy = (xmin, ymin, xmax + 1, ymax + 1) of the mask, as OpenCV's boundingRect draws them,
so a perfect map scores IoU 1 under the protocol. Boxes and masks are given for every split.
{empty}
Generated with seed {seed}: {written} images, {len(table)} classes.
The same arguments give byte-identical files.

Classes:
{class_lines}
"""
