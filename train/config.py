"""The one typed configuration of a training run. Frozen: change it with `dataclasses.replace`, never in place.

`RUN/config.json` is this dataclass as resolved at the start of the run (weights source, run id filled in),
so a checkpoint and its folder describe themselves.

`tedloc-edge train` is built from this dataclass (`tedloc_edge.cli_options`): to add an option, add the field
only, with its help, e.g. `label_smoothing: float = option(0.0, "Soft class targets.", panel=LOSS)` gives
--label-smoothing (`internal(0.0)` keeps a field off the command line), and check its range in `validate`.
Torch-free: `tedloc-edge --help` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tedloc_edge.cli_options import internal, option
from tedloc_edge.errors import UserError

METHODS = ("tedloc", "cam")
CUE_KINDS = ("ddt", "cam", "clip-es", "files")
OPTIMIZERS = ("adamw", "sgd")
DATA, MODEL, ANCHORS, CUES, LOSS, OPTIM, RUN = ("Data", "Model", "Class anchors", "Localization cues",
                                                "Sampling and losses", "Optimization", "Run folder")
RESUMABLE = ("out", "epochs", "device", "workers")  # what --resume takes from the command line; the rest is the run's
# --fg-rule auto: Otsu (the paper's rule) for CLIP-ES and the other cues; for the offline DDT cues the rule chosen
# by the val sweep of benchmarks/sweep_rules.py (docs/results.md). The resolved rule is what config.json keeps.
AUTO_FG_RULES = {"ddt": "frac:0.7"}
LEGACY_KEYS = {"bg_fraction": lambda v: ("bg_rule", f"quantile:{v}")}  # config.json of older runs


def auto_embed_dim(num_classes: int) -> int:
    """d = max(128, the next multiple of 64 >= classes): the anchors need d >= classes."""
    return max(128, -(-num_classes // 64) * 64)


@dataclass(frozen=True)
class TrainConfig:
    # data and output (path fields: the CLI takes a PATH; "absolute" so eval/export find it from any folder)
    data: str = option("", "Dataset root: wsolevaluation layout, CUB-200-2011, or class folders.", panel=DATA, path="absolute")
    out: str = option("runs/tedloc", "Run folder (checkpoints, anchors, cues, metrics).", panel=RUN, path="given")
    train_split: str = option("train", panel=DATA)
    val_split: str = option("val", "Validation split for best.pt; '' for none.", panel=DATA)  # none: best.pt follows the last epoch
    negatives: str | None = option(None, "Object-free images (every patch background for P_CL): a folder of images, or a dataset root with a <train-split>_negatives split. Default: the dataset's own, when it has one.", panel=DATA, path="absolute")  # resolved at start: "" = none
    method: str = option("tedloc", "tedloc, or cam: the CAM baseline in the same harness.", panel=MODEL)
    # model
    backbone: str = option("tf_efficientnet_lite0", "Frozen timm encoder (CNN or ViT).", panel=MODEL)
    backbone_weights: str | None = option(None, "timm tag, local file, or 'random'. Default: offline ImageNet weights for tf_efficientnet_lite0.", panel=MODEL)
    input_size: int = option(224, "Square input side, a multiple of the backbone stride.", panel=MODEL)
    embed_dim: int = option(0, "d: patch embedding and anchor width (>= classes); 0: max(128, next multiple of 64 >= classes).", panel=MODEL)
    decoder_hidden: int = option(256, panel=MODEL)
    finetune_stages: int = option(0, "Train the backbone's last N stages too (EfficientNet-style CNNs); the cache "
                                  "holds their input, so a step runs only them.", panel=MODEL)
    finetune_lr: float = option(0.1, "Learning rate of the fine-tuned stages, as a fraction of --lr.", panel=MODEL)
    temperature: float = option(0.1, "Cosine logits are divided by T.", panel=MODEL)  # CLIP-like sharpness on orthonormal anchors
    dropout: float = option(0.0, "Dropout on the pooled embedding (the image-level classification path).", panel=MODEL)
    # anchors
    clip_model: str = option("ViT-B-16", "open_clip model for anchors (and clip-es cues).", panel=ANCHORS)
    clip_pretrained: str | None = option(None, "open_clip tag (e.g. openai) or a local file. Default: random, NO text semantics.", panel=ANCHORS)
    prompt_template: str = option("Image of a {}.", panel=ANCHORS)
    anchors_file: str | None = option(None, "Bring your own (classes, d) .npy anchors.", panel=ANCHORS, flag="--anchors", path="absolute")
    # cues
    cue: str = option("ddt", "ddt (offline), cam, clip-es, or files.", panel=CUES)
    cue_dir: str | None = option(None, "With --cue files: one map per image.", panel=CUES, path="absolute")
    ddt_contrast: float = option(0.0, "With --cue ddt and object-free images: contrastive DDT, the class's patch "
                                 "covariance minus this times theirs (better cues for small objects); 0: plain DDT. "
                                 "The demo uses 1.5.", panel=CUES)
    # sampling and losses (METHOD.md; defaults are the paper lab's)
    k_fg: int = option(10, "Foreground patches per image per step.", panel=LOSS)  # enough to cover a small object's grid cells
    k_bg: int = option(10, "Background patches per image per step.", panel=LOSS)  # same count as fg so P_CL stays balanced
    fg_rule: str = option("auto", "Foreground patches: otsu, frac:F (cue > F x max) or quantile:Q; auto: otsu, or the "
                          "val-chosen rule for ddt cues.", panel=LOSS)
    bg_rule: str = option("quantile:0.2", "Background patches: quantile:Q (lowest Q of the map, ties kept), frac:F "
                          "(cue <= F x max) or otsu.", panel=LOSS)  # paper: "lowest ~20%"
    w_kd: float = option(1.0, panel=LOSS)
    w_pcl: float = option(1.0, panel=LOSS)
    w_icl: float = option(1.0, panel=LOSS)
    label_smoothing: float = option(0.0, "Label smoothing of the image-level cross-entropy (I_CL).", panel=LOSS)
    # optimisation
    epochs: int = option(10, "Default 10; with --resume, the new total.", panel=OPTIM, no_default=True)
    batch_size: int = option(32, "Per process.", panel=OPTIM)
    optimizer: str = option("adamw", "adamw or sgd.", panel=OPTIM)
    lr: float = option(1e-3, panel=OPTIM)
    weight_decay: float = option(0.05, panel=OPTIM)
    warmup_epochs: float = option(1.0, panel=OPTIM)
    grad_clip: float = option(1.0, "Max gradient norm; 0 disables.", panel=OPTIM)
    augment: bool = option(False, "Random horizontal flips (mirrored images are encoded once too: 2x the feature time).", panel=OPTIM)
    seed: int = option(0, panel=OPTIM)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 ...", panel=OPTIM)
    amp: bool = option(True, "Mixed precision on CUDA.", panel=OPTIM, flag="--amp/--no-amp")  # bf16/fp16 autocast
    workers: int = option(0, "DataLoader workers (features are cached; 0 is usually best).", panel=OPTIM)
    feature_batch: int = internal(32)
    # run folder
    exist_ok: bool = option(False, "Overwrite an existing run folder.", panel=RUN)
    resume: bool = option(False, "Continue OUT from checkpoints/last.pt with its saved settings (--epochs may raise the total).", panel=RUN)
    run_id: str = internal("")  # filled in when the run starts

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
                    "decoder_hidden": self.decoder_hidden, "k_fg": self.k_fg,
                    "k_bg": self.k_bg, "feature_batch": self.feature_batch}
        for name, value in positive.items():
            if value < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        # every float is checked finite first: NaN passes any comparison test (--lr nan trained into NaN weights)
        floats = {"lr": self.lr, "temperature": self.temperature, "weight_decay": self.weight_decay,
                  "warmup_epochs": self.warmup_epochs, "grad_clip": self.grad_clip, "label_smoothing": self.label_smoothing,
                  "dropout": self.dropout, "finetune_lr": self.finetune_lr,
                  "w_kd": self.w_kd, "w_pcl": self.w_pcl, "w_icl": self.w_icl}
        for name, value in floats.items():
            if not math.isfinite(value):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number, not {value}")
        if self.finetune_stages < 0 or self.finetune_lr < 0:
            raise UserError("--finetune-stages and --finetune-lr must be at least 0")
        if self.embed_dim < 0:
            raise UserError(f"--embed-dim must be at least 1 (or 0 for automatic), not {self.embed_dim}")
        from tedloc_edge.train.sampling import parse_rule

        if self.fg_rule != "auto":
            parse_rule(self.fg_rule, "--fg-rule")
        parse_rule(self.bg_rule, "--bg-rule")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--dropout {self.dropout} must be in [0, 1)")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"--label-smoothing {self.label_smoothing} must be in [0, 1)")
        if self.temperature <= 0 or self.lr <= 0:
            raise UserError("--temperature and --lr must be positive")
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "w_kd", "w_pcl", "w_icl", "workers", "ddt_contrast"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be 0 or more, not {getattr(self, name)}")
        if not 0 <= self.seed < 2**32:
            raise UserError(f"--seed must be in 0..{2**32 - 1} (numpy's range), not {self.seed}")
        try:
            usable = "{}" in self.prompt_template and bool(self.prompt_template.format("x"))
        except (IndexError, KeyError, ValueError):
            usable = False
        if not usable:
            raise UserError(f"--prompt-template {self.prompt_template!r} needs one '{{}}' where the class name goes "
                            "(and no other braces)")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: is a file, not a run folder; choose a folder path for --out")
        if self.data and out.exists() and Path(self.data).exists() and out.resolve() == Path(self.data).resolve():
            raise UserError(f"--out {out} is the dataset folder (--data): the run would write over its classes.txt; "
                            "choose another --out")
        if self.exist_ok and not self.resume and out.is_dir() and any(out.iterdir()) and not _is_run(out):
            raise UserError(f"--out {out}: not a run folder (no config.json or checkpoints/ of one); --exist-ok "
                            "replaces only runs: choose a new or empty folder")
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
        hints = typing.get_type_hints(cls)
        for name, value in doc.items():  # a hand-edited "epochs": "10" must not be a TypeError in validate()
            if not _fits(value, hints[name]):
                raise UserError(f"{source}: {name} = {json.dumps(value)[:40]} is not {_kind(hints[name])}; restore "
                                "config.json or retrain")
        return cls(**{k: float(v) if hints[k] is float else v for k, v in doc.items()})

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


def _is_run(folder: Path) -> bool:
    """A folder `tedloc-edge train` wrote: its checkpoints/, or a config.json of a run."""
    if (folder / "checkpoints").is_dir():
        return True
    try:
        TrainConfig.load(folder / "config.json")
        return True
    except (UserError, OSError):
        return False


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of a field's type (`X | None` either; an int is a float; a bool is no number)."""
    if typing.get_args(hint):
        return any(_fits(value, arg) for arg in typing.get_args(hint))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _kind(hint: Any) -> str:
    names = {str: "text", int: "a whole number", float: "a number", bool: "true or false", type(None): "null"}
    return " or ".join(names.get(arg, str(arg)) for arg in (typing.get_args(hint) or (hint,)))
