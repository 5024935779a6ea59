"""The graph contract of docs/architecture.md, once: what every model the project makes or runs takes and returns.

Input ``images``: uint8 (N, H, W, 3) RGB at the bundle's input size; outputs ``fg_map`` float32 (N, gh, gw) and
``logits`` float32 (N, C). `GraphContract.of(meta)` states it for one bundle: export checks the traced graph, each
backend the graph it loaded, every runner each batch in and out, so a model that breaks it fails at the first
stage that sees it, in the same words.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError

INPUT_NAME = "images"
OUTPUT_NAMES = ("fg_map", "logits")

Dims = Sequence[object]  # a declared shape: ints where static; None, a name, 0 or -1 where dynamic


@dataclass(frozen=True)
class GraphContract:
    input_size: tuple[int, int]
    patch_grid: tuple[int, int]
    num_classes: int

    @classmethod
    def of(cls, meta: BundleMeta) -> "GraphContract":
        h, w = meta.input_size
        gh, gw = meta.patch_grid
        return cls((int(h), int(w)), (int(gh), int(gw)), meta.num_classes)

    @functools.cached_property
    def per_image(self) -> dict[str, tuple[int, ...]]:
        """Each tensor's shape after the batch dimension, by name (input first)."""
        return {INPUT_NAME: (*self.input_size, 3), "fg_map": self.patch_grid, "logits": (self.num_classes,)}

    def shape(self, name: str, batch: int) -> tuple[int, ...]:
        return (batch, *self.per_image[name])

    def check_input(self, images: np.ndarray, who: str) -> None:
        h, w = self.input_size
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (h, w, 3):
            raise ValueError(f"{who}: input must be uint8 (n, {h}, {w}, 3), got {images.dtype} {images.shape}")

    def check_outputs(self, outputs: Sequence[np.ndarray], batch: int, who: str) -> None:
        """A runner's (fg_map, logits) for a batch of `batch` images: float32 and shaped as the bundle says."""
        for name, array in zip(OUTPUT_NAMES, outputs, strict=True):
            if array.dtype != np.float32 or array.shape != self.shape(name, batch):
                raise ValueError(f"{who}: output '{name}' is {array.dtype} {array.shape}, expected float32 {self.shape(name, batch)}")

    def check_graph(self, inputs: Mapping[str, tuple[str, Dims]], outputs: Mapping[str, Dims], where: str, fix: str,
                    exact: bool = False) -> int | None:
        """A declared graph: `inputs` {name: (numpy dtype name, dims)}, `outputs` {name: dims}. Checks the names
        (with `exact`, nothing else and in order, as torch export must write them), the input's dtype and rank,
        and every static dim against the bundle. Returns the graph's static batch, or None when it is dynamic."""
        if exact:
            names_ok = list(inputs) == [INPUT_NAME] and list(outputs) == list(OUTPUT_NAMES)
        else:
            names_ok = INPUT_NAME in inputs and all(name in outputs for name in OUTPUT_NAMES)
        if not names_ok:
            raise UserError(f"{where}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                            f"expected input '{INPUT_NAME}' and outputs {list(OUTPUT_NAMES)}; {fix}")
        dtype, dims = inputs[INPUT_NAME]
        if dtype != "uint8" or len(dims) != 4:
            raise UserError(f"{where}: input '{INPUT_NAME}' is {dtype} {list(dims)}, expected UINT8 (N, H, W, 3); {fix}")
        declared = {INPUT_NAME: dims, **{name: outputs[name] for name in OUTPUT_NAMES}}
        for name, want in self.per_image.items():
            got = list(declared[name])
            if len(got) != len(want) + 1 or any(isinstance(g, int) and g > 0 and g != v for g, v in zip(got[1:], want)):
                kind = "input" if name == INPUT_NAME else "output"
                raise UserError(f"{where}: {kind} '{name}' has shape {got}, which differs from the bundle "
                                f"(its metadata says {'x'.join(map(str, want))} per image); {fix}")
        batch = dims[0]
        return batch if isinstance(batch, int) and batch > 0 else None
