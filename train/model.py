"""TeD-Loc and the CAM baseline: a frozen `PatchBackbone` plus a small trainable head.

`TeDLocNet.forward(images)` is the graph contract of docs/architecture.md, exactly what export puts into ONNX:
uint8 NHWC RGB images at the input size -> (fg_map (N, gh, gw) float32, logits (N, C) float32), normalization
inside. `forward_features` runs the head on precomputed backbone features, which is how training runs fast
(the encoder is frozen, so its features are computed once per image; with a fine-tuned tail, the
cache holds the input of the tail stages and `forward_features` runs them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tedloc_edge.train.backbone import PatchBackbone, create_backbone


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild the module from a checkpoint (saved in it as a dict)."""

    method: str  # "tedloc" or "cam"
    backbone: str
    input_size: int
    channels: int  # backbone descriptor width C
    grid: tuple[int, int]
    num_classes: int
    embed_dim: int = 128
    hidden: int = 256
    temperature: float = 0.1
    dropout: float = 0.0  # on the pooled embedding (I_CL's input), training only
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, doc: dict) -> "ModelArgs":
        doc = dict(doc)
        for key in ("grid", "mean", "std"):
            doc[key] = tuple(doc[key])
        return cls(**doc)


def decoder(channels: int, hidden: int, out: int) -> nn.Sequential:
    """D: backbone descriptors -> d-dimensional patch embeddings (1x1 mixes channels, 3x3 adds neighbours)."""
    return nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, out, 3, padding=1))


class TeDLocHead(nn.Module):
    """Decoder D, patch foreground head g, frozen anchors, map-weighted pooling, temperature."""

    def __init__(self, args: ModelArgs, anchors: torch.Tensor):
        super().__init__()
        self.temperature = args.temperature
        self.dropout = args.dropout
        self.decoder = decoder(args.channels, args.hidden, args.embed_dim)
        self.fg_head = nn.Conv2d(args.embed_dim, 1, 1)
        self.register_buffer("anchors", anchors.float().clone(), persistent=True)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.decoder(features)  # (N, d, gh, gw)
        n, d, gh, gw = z.shape
        emb = z.flatten(2)  # (N, d, P)
        fg_logits = self.fg_head(z).flatten(1)  # (N, P)
        m = torch.sigmoid(fg_logits)
        pooled = (emb * m.unsqueeze(1)).sum(2) / (m.sum(1, keepdim=True) + 1e-6)  # map-weighted mean
        if self.dropout and self.training:
            pooled = F.dropout(pooled, self.dropout, training=True)
        logits = F.normalize(pooled, dim=1) @ self.anchors.t() / self.temperature
        return {"embeddings": emb, "fg_logits": fg_logits, "logits": logits, "fg_map": m.view(n, gh, gw)}


class CamHead(nn.Module):
    """The CAM baseline on the same backbone: decoder, global average pooling, linear classifier.
    Its map is the class activation map of the top-1 class (raw, not a probability)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.decoder = decoder(args.channels, args.hidden, args.embed_dim)
        self.classifier = nn.Linear(args.embed_dim, args.num_classes)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.decoder(features)
        n, d, gh, gw = z.shape
        # CAM_c = w_c . z_p + b_c per patch; its spatial mean is exactly the GAP logit.
        cams = torch.einsum("ndp,cd->ncp", z.flatten(2), self.classifier.weight) + self.classifier.bias.view(1, -1, 1)
        logits = cams.mean(2)
        top = logits.argmax(1)
        fg_map = torch.gather(cams, 1, top.view(n, 1, 1).expand(n, 1, gh * gw)).view(n, gh, gw)
        return {"logits": logits, "cams": cams.view(n, -1, gh, gw), "fg_map": fg_map}


class TeDLocNet(nn.Module):
    """Backbone + head behind the graph contract: forward(uint8 NHWC RGB) -> (fg_map, logits)."""

    def __init__(self, args: ModelArgs, backbone: PatchBackbone, head: nn.Module):
        super().__init__()
        self.args = args
        self.backbone = backbone
        self.head = head
        self.register_buffer("mean", torch.tensor(args.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(args.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) RGB -> float (N, 3, H, W) normalized; the same steps the ONNX graph holds."""
        x = images.permute(0, 3, 1, 2).to(self.mean.dtype) / 255.0  # float32, or float16 after .half()
        return (x - self.mean) / self.std

    def forward_features(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The head on cached `backbone.encode` features (through the trainable backbone tail, if any)."""
        return self.head(self.backbone.finish(features))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.backbone(self.normalize(images)))
        return out["fg_map"].float(), out["logits"].float()


def make_head(args: ModelArgs, anchors: torch.Tensor | None) -> nn.Module:
    if args.method == "tedloc":
        if anchors is None:
            raise ValueError("TeD-Loc needs class anchors")
        return TeDLocHead(args, anchors)
    if args.method == "cam":
        return CamHead(args)
    raise ValueError(f"unknown method {args.method!r}")


def create_model(args: ModelArgs, anchors: torch.Tensor | None = None, backbone: PatchBackbone | None = None,
                 backbone_weights: str | None = None, pretrained: bool = True) -> TeDLocNet:
    """Build a `TeDLocNet`; pass `backbone` to share an already built encoder, else one is created."""
    if backbone is None:
        backbone = create_backbone(args.backbone, backbone_weights, input_size=args.input_size, pretrained=pretrained)
    return TeDLocNet(args, backbone, make_head(args, anchors))


def model_args_for(method: str, backbone: PatchBackbone, input_size: int, num_classes: int, embed_dim: int,
                   hidden: int, temperature: float, dropout: float = 0.0) -> ModelArgs:
    return ModelArgs(method=method, backbone=backbone.name, input_size=input_size, channels=backbone.channels,
                     grid=backbone.grid(input_size), num_classes=num_classes, embed_dim=embed_dim, hidden=hidden,
                     temperature=temperature, dropout=dropout, mean=backbone.mean, std=backbone.std)


def args_to_dict(args: ModelArgs) -> dict:
    return dataclasses.asdict(args)
