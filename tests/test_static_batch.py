"""`make_static_batch` on the real timm graphs (EfficientNet-Lite0's "same" padding, ViT's token reshapes):
the batch is fixed in the I/O, nothing is computed from it at run time, and every output is unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tedloc_edge.bundle import BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.export.onnx_export import export_to_proto
from tedloc_edge.export.static_batch import make_static_batch, static_batch_of
from tedloc_edge.train.backbone import create_backbone
from tedloc_edge.train.model import create_model, model_args_for

SIZE, CLASSES = 64, 5


def exported(backbone_name: str) -> onnx.ModelProto:
    backbone = create_backbone(backbone_name, "random", input_size=SIZE)
    args = model_args_for("tedloc", backbone, SIZE, num_classes=CLASSES, embed_dim=8, hidden=16, temperature=0.1)
    anchors = torch.linalg.qr(torch.randn(8, CLASSES, generator=torch.Generator().manual_seed(0)))[0].T.contiguous()
    model = create_model(args, anchors, backbone=backbone).eval()
    grid = backbone.grid(SIZE)
    meta = BundleMeta(class_names=tuple("abcde"), input_size=(SIZE, SIZE), patch_grid=grid, backbone=backbone_name)
    return export_to_proto(model, meta)


def run(model: onnx.ModelProto, images: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": images})


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite0", "vit_tiny_patch16_224"])
def test_fixed_batch_graph_computes_nothing_from_the_batch_and_changes_no_value(backbone):
    dynamic = exported(backbone)
    assert any(n.op_type == "Shape" for n in dynamic.graph.node)  # the batch is read at run time
    static = make_static_batch(dynamic, 3)
    assert static_batch_of(static) == 3 and static_batch_of(dynamic) is None
    assert not any(n.op_type == "Shape" for n in static.graph.node)
    for out in static.graph.output:
        assert out.type.tensor_type.shape.dim[0].dim_value == 3
    images = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    for a, b in zip(run(dynamic, images), run(static, images)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # the argument is not modified


def test_bad_batches_are_one_line():
    dynamic = exported("tf_efficientnet_lite0")
    with pytest.raises(UserError, match="--static-batch 0 must be between 1 and"):
        make_static_batch(dynamic, 0)
    twice = make_static_batch(make_static_batch(dynamic, 2), 2)  # the same batch again is a no-op
    assert static_batch_of(twice) == 2
    with pytest.raises(UserError, match="already has a fixed batch of 2; export the run again for batch 5"):
        make_static_batch(twice, 5)
