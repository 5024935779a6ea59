"""The one typed configuration of a training run. Frozen: change it with `dataclasses.replace`, never in place.

`RUN/config.json` is this dataclass as resolved at the start of the run (weights source, run id filled in),
so a checkpoint and its folder describe themselves.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tedloc_edge.errors import UserError

METHODS = ("tedloc", "cam")
CUE_KINDS = ("ddt", "cam", "clip-es", "files")
OPTIMIZERS = ("adamw", "sgd")
# --fg-rule auto: Otsu (the paper's rule) for CLIP-ES and the other cues; for the offline DDT cues the rule chosen
# by the val sweep of benchmarks/sweep_rules.py (docs/results.md). The resolved rule is what config.json keeps.
AUTO_FG_RULES = {"ddt": "frac:0.7"}
LEGACY_KEYS = {"bg_fraction": lambda v: ("bg_rule", f"quantile:{v}")}  # config.json of older runs


def auto_embed_dim(num_classes: int) -> int:
    """d = max(128, the next multiple of 64 >= classes): the anchors need d >= classes."""
    return max(128, -(-num_classes // 64) * 64)


@dataclass(frozen=True)
class TrainConfig:
    # data and output
    data: str = ""  # dataset root (wsolevaluation layout, CUB native, or class-per-folder)
    out: str = "runs/tedloc"
    train_split: str = "train"
    val_split: str = "val"  # "" = no validation (best.pt then follows the last epoch)
    method: str = "tedloc"  # "tedloc" or the "cam" baseline in the same harness
    # model
    backbone: str = "tf_efficientnet_lite0"
    backbone_weights: str | None = None  # None: offline default; a timm tag; a local file; "random"
    input_size: int = 224
    embed_dim: int = 0  # d, the patch embedding and anchor width (>= classes); 0: max(128, next multiple of 64 >= classes)
    decoder_hidden: int = 256
    temperature: float = 0.1  # cosine logits / T; CLIP-like sharpness on orthonormal anchors
    # anchors
    clip_model: str = "ViT-B-16"
    clip_pretrained: str | None = None  # None: random text tower offline (anchors carry no text semantics)
    prompt_template: str = "Image of a {}."
    anchors_file: str | None = None  # a (C, d) .npy to use instead of computing anchors
    # cues
    cue: str = "ddt"
    cue_dir: str | None = None  # for cue="files"
    # sampling and losses (METHOD.md; defaults are the paper lab's)
    k_fg: int = 10  # fg patches per image per step: enough to cover a small object's grid cells
    k_bg: int = 10  # same count as fg so P_CL stays balanced
    fg_rule: str = "auto"  # otsu | frac:F | quantile:Q; auto: otsu, or the val-chosen rule for ddt cues
    bg_rule: str = "quantile:0.2"  # background candidates: the lowest 20% of the cue map (paper: "lowest ~20%")
    w_kd: float = 1.0
    w_pcl: float = 1.0
    w_icl: float = 1.0
    label_smoothing: float = 0.0  # on the image-level cross-entropy (I_CL)
    # optimisation
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_clip: float = 1.0  # max grad norm; 0 disables
    augment: bool = False  # random horizontal flips (the mirrored images' features are cached too: 2x encoding)
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16/fp16 autocast, CUDA only
    workers: int = 0
    feature_batch: int = 32
    # run folder
    exist_ok: bool = False
    resume: bool = False
    run_id: str = ""  # filled in when the run starts

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.cue not in CUE_KINDS:
            raise UserError(f"--cue {self.cue!r}: choose one of {', '.join(CUE_KINDS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.cue == "files" and not self.cue_dir:
            raise UserError("--cue files needs --cue-dir DIR holding one map per training image")
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "input_size": self.input_size,
                    "k_fg": self.k_fg, "k_bg": self.k_bg, "feature_batch": self.feature_batch}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if self.embed_dim < 0:
            raise UserError(f"--embed-dim must be at least 1 (or 0 for automatic), not {self.embed_dim}")
        from tedloc_edge.train.sampling import parse_rule

        if self.fg_rule != "auto":
            parse_rule(self.fg_rule, "--fg-rule")
        parse_rule(self.bg_rule, "--bg-rule")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        if self.temperature <= 0 or self.lr <= 0:
            raise UserError("--temperature and --lr must be positive")
        return self

    def resolved(self, num_classes: int) -> "TrainConfig":
        """`auto` settings made concrete (fg rule by cue kind, embed_dim by class count), as the run stores them."""
        fg = AUTO_FG_RULES.get(self.cue, "otsu") if self.fg_rule == "auto" else self.fg_rule
        return self.replace(fg_rule=fg, embed_dim=self.embed_dim or auto_embed_dim(num_classes))

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "<config>") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        doc = dict(doc)
        for key, convert in LEGACY_KEYS.items():
            if key in doc and key not in known:
                new, value = convert(doc.pop(key))
                doc.setdefault(new, value)
        unknown = sorted(set(doc) - known)
        if unknown:
            raise UserError(f"{source}: unknown config keys {', '.join(unknown)}; was it written by a newer tedloc-edge?")
        return cls(**doc)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{path}: no config.json; is this a run folder written by `tedloc-edge train`?") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc.msg}); restore it or retrain") from None
        return cls.from_dict(doc, str(path))
