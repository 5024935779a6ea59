"""The training run folder (layout: docs/architecture.md). `RunDir` is its reader and writer, as `BundleMeta` is
of a model's metadata, so training, evaluation and export agree on where things are and how they are read:
paths, config.json's dataset root ("data"), threshold.json (written by `tedloc-edge eval RUN --calibrate`) and
the run's results. Torch-free. A `--maps` folder keeps its threshold.json the same way, through `RunDir(maps)`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from tedloc_edge.errors import UserError
from tedloc_edge.files import atomic_write_text

logger = logging.getLogger(__name__)

# what a fresh run (not --resume) removes, so nothing of an earlier run in the folder is taken for its own
RESULTS = ("metrics.jsonl", "checkpoints/best.pt", "checkpoints/last.pt", "threshold.json", "skipped.json")


class RunDir:
    """One run folder: its paths as attributes, its small files through the methods below."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.checkpoints = self.path / "checkpoints"
        self.threshold_file = self.path / "threshold.json"
        self.cache, self.cues, self.export = (self.path / name for name in ("cache", "cues", "export"))

    @classmethod
    def of(cls, target: str | os.PathLike) -> "RunDir":
        """The run of a folder, or of a checkpoint: RUN for RUN/checkpoints/x.pt, else the checkpoint's folder."""
        path = Path(target).expanduser()
        if path.is_dir():
            return cls(path)
        parent = path.resolve().parent  # resolved: "best.pt" given inside RUN/checkpoints still finds RUN
        return cls(parent.parent if parent.name == "checkpoints" else parent)

    def __str__(self) -> str:  # messages name the folder
        return str(self.path)

    def checkpoint(self, which: str = "best") -> Path:
        """`which` is "best", "last" or a path to a .pt file."""
        return self.checkpoints / f"{which}.pt" if which in ("best", "last") else Path(which)

    # ------------------------------------------------------------------------------------------ reading

    def data_root(self) -> Path | None:
        """The dataset root config.json records ("data"), or None when there is none. A relative root is taken
        from the run folder when it is there, else from the working folder."""
        if not self.config.is_file():
            return None
        try:
            root = json.loads(self.config.read_text(encoding="utf-8")).get("data") or ""
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise UserError(f"{self.config}: not a valid run config; restore it, retrain, or pass the data folder") from None
        if not root:
            return None
        path = Path(root).expanduser()
        if not path.is_absolute():
            path = (self.path / path).resolve() if (self.path / path).exists() else path.resolve()
        return path

    def read_threshold(self) -> tuple[float, str] | None:
        """(threshold, "split:criterion") from threshold.json, or None when the run was not calibrated."""
        doc = self._threshold_doc()
        if doc is None:
            return None
        return self._parse(lambda: (float(doc["threshold"]), f"{doc.get('split', 'val')}:{doc.get('criterion', 'unknown')}"))

    def read_presence(self) -> tuple[float, str] | None:
        """(presence threshold, its source) from threshold.json's "presence" record, or None when presence was not
        calibrated (no negatives at calibration, or a CAM run)."""
        doc = self._threshold_doc()
        record = None if doc is None else doc.get("presence")
        if not record:
            return None
        return self._parse(lambda: (float(record["threshold"]), f"{doc.get('split', 'val')}:{record['criterion']} "
                                    f"({record['object_images']} object, {record['empty_images']} empty images)"))

    def _threshold_doc(self) -> dict[str, Any] | None:
        if not self.threshold_file.is_file():
            return None
        return self._parse(lambda: json.loads(self.threshold_file.read_text(encoding="utf-8")))

    def _parse(self, read: Any) -> Any:
        try:
            return read()
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{self.threshold_file}: unreadable threshold file ({exc}); recalibrate with `tedloc-edge eval "
                            f"{self.path} --calibrate` or delete it") from None

    # ------------------------------------------------------------------------------------------ writing

    def write_threshold(self, doc: dict[str, Any]) -> Path:
        """threshold.json (export and load_run read it), written atomically: the box threshold and, when presence
        was calibrated, a "presence" record ({"threshold", "criterion", "object_images", "empty_images", ...})."""
        atomic_write_text(self.threshold_file, json.dumps(doc, indent=2) + "\n")
        logger.info("wrote %s: threshold %.3f (%s %s = %.2f%%)%s", self.threshold_file, doc["threshold"], doc["split"],
                    doc["criterion"], doc["value"],
                    f", presence threshold {doc['presence']['threshold']:.4f}" if doc.get("presence") else "")
        return self.threshold_file

    def start(self, config: dict[str, Any], fresh: bool) -> None:
        """Create the folder and write config.json; a `fresh` run first removes an earlier run's results."""
        self.path.mkdir(parents=True, exist_ok=True)
        for name in RESULTS if fresh else ():
            (self.path / name).unlink(missing_ok=True)
        atomic_write_text(self.config, json.dumps(config, indent=2, ensure_ascii=False))

    def write_classes(self, names: list[str]) -> None:
        atomic_write_text(self.path / "classes.txt", "".join(f"{n}\n" for n in names))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def write_skipped(self, skipped: dict[str, list[str]]) -> None:
        doc = {"count": {k: len(v) for k, v in skipped.items()}, "images": skipped}
        atomic_write_text(self.path / "skipped.json", json.dumps(doc, indent=2, ensure_ascii=False))
