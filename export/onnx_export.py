"""torch module -> self-describing ONNX: named I/O, dynamic batch, the bundle in metadata_props["tedloc"]."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.contract import INPUT_NAME, OUTPUT_NAMES, GraphContract

from tedloc_edge.files import atomic_write_bytes
from tedloc_edge.errors import UserError, first_line
from tedloc_edge.export.graph_opt import optimize_graph

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

OPSET_RANGE = (17, 20)
DEFAULT_OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1


def check_opset(opset: int) -> int:
    lo, hi = OPSET_RANGE
    if not lo <= opset <= hi:
        raise UserError(f"--opset {opset} is outside {lo}..{hi} (17 keeps LayerNorm as one op for ViTs); pick one in range")
    return opset


def sample_input(meta: BundleMeta, batch: int = 2) -> "torch.Tensor":
    """A uint8 NHWC batch at the bundle's input size (values only matter for tracing, not for the graph)."""
    import torch

    h, w = meta.input_size
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=gen)


def export_to_proto(model: "torch.nn.Module", meta: BundleMeta, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Trace the model into an ONNX ModelProto with the graph contract of docs/architecture.md."""
    import torch

    check_opset(opset)
    model.eval()
    tmp = tempfile.TemporaryDirectory(prefix="tedloc-onnx-")
    traced = Path(tmp.name, "model.onnx")
    # The exporter is chosen explicitly: torch >= 2.9 defaults to the dynamo exporter, whose decompositions
    # and opset conversion (it emits opset 18+ and down-converts) vary across releases for timm ViTs. The
    # TorchScript exporter (dynamo=False) writes opset 17 directly, with LayerNormalization as one op and
    # `dynamic_axes` for the batch, and has produced the same graph for years: the robust choice for 17-20.
    with tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (sample_input(meta),),
            str(traced),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"}, OUTPUT_NAMES[1]: {0: "batch"}},
            do_constant_folding=True,
        )
        proto = onnx.load(str(traced))
    check_graph_contract(proto, meta)
    proto, _ = optimize_graph(proto)  # exact: static "same" padding, normalization folded into the first Conv
    return set_metadata(proto, meta)


def check_graph_contract(proto: onnx.ModelProto, meta: BundleMeta) -> None:
    """The traced graph against the contract (tedloc_edge/contract.py): a model that breaks it is a bug."""
    initializers = {t.name for t in proto.graph.initializer}

    def dims(info: onnx.ValueInfoProto) -> list[object]:
        return [d.dim_value or d.dim_param or None for d in info.type.tensor_type.shape.dim]

    inputs = {i.name: (onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower(), dims(i))
              for i in proto.graph.input if i.name not in initializers}
    outputs = {o.name: dims(o) for o in proto.graph.output}
    GraphContract.of(meta).check_graph(inputs, outputs, "the run's model", "it does not follow docs/architecture.md "
                                       "(retrain with this tedloc-edge)", exact=True)


def set_metadata(proto: onnx.ModelProto, meta: BundleMeta) -> onnx.ModelProto:
    """Replace the ``tedloc`` metadata entry with the bundle (other entries are kept)."""
    keep = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in keep + [(METADATA_KEY, meta.to_json())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "tedloc-edge"
    proto.doc_string = f"TeD-Loc localizer ({meta.method}, {meta.backbone or 'backbone'}, {meta.precision}, {meta.num_classes} classes)"
    return proto


def add_to_extra(proto: onnx.ModelProto, **items: object) -> onnx.ModelProto:
    """Add entries to the bundle's `extra` (the INT8 gate's figures, a static batch); a graph without the
    ``tedloc`` entry is left as it is."""
    text = next((p.value for p in proto.metadata_props if p.key == METADATA_KEY), None)
    if text is None:
        return proto
    meta = BundleMeta.from_json(text, "model")
    return set_metadata(proto, meta.replace(extra={**meta.extra, **items}))


def save_model(proto: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Checked, then written atomically (temp + rename). One self-contained file: protobuf caps it at 2 GB,
    which fp32 backbones up to ~500M parameters fit (the paper's EVA ViT-L does not; edge backbones do)."""
    path = Path(path)
    if proto.ByteSize() >= PROTOBUF_LIMIT:
        raise UserError(
            f"{path}: the model is {proto.ByteSize() / 2**30:.1f} GiB, over ONNX's 2 GiB single-file limit; "
            "train with an edge-size backbone (ViT-S, ResNet-50, mobile nets) for a single-file bundle"
        )
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"{path}: exported graph fails the ONNX checker ({first_line(exc)}); report this with the run") from None
    try:
        atomic_write_bytes(path, proto.SerializeToString())
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror}); choose a writable --output") from None
    return path


def export_onnx(model: "torch.nn.Module", meta: BundleMeta, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> Path:
    """Export a model obeying the graph contract to a self-describing fp32 ONNX file at `path`."""
    proto = export_to_proto(model, meta.replace(precision="fp32"), opset)
    out = save_model(proto, path)
    logger.info("wrote %s (opset %d, %d nodes)", out, opset, len(proto.graph.node))
    return out
