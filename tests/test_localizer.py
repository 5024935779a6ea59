"""Localizer, Result, preprocessing, scoring and the backends' contract, on small fixture ONNX models."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from runtime_models import CLASSES, fixture_meta, newer_format_metadata, write_model

from tedloc_edge.boxes import decode_boxes, scale_boxes
from tedloc_edge.bundle import BundleError, write_plan_sidecar
from tedloc_edge.errors import UserError
from tedloc_edge.runtime import Localizer, Result
from tedloc_edge.runtime import decode_boxes as exported_decoder
from tedloc_edge.runtime.backend_onnxruntime import OnnxRuntimeRunner
from tedloc_edge.runtime.ort_providers import choose_providers, graph_providers, with_cuda_options
from tedloc_edge.runtime.postprocess import box_scores
from tedloc_edge.runtime.preprocess import Preprocessor, as_uint8_3ch


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def scene(h: int = 240, w: int = 320, box=(60, 40, 200, 160), rgb=(240, 40, 30)) -> np.ndarray:
    frame = np.full((h, w, 3), 10, np.uint8)
    x0, y0, x1, y1 = box
    frame[y0:y1, x0:x1] = rgb
    return frame


def test_single_frame_result(model):
    loc = Localizer(model)
    result = loc(scene())
    assert isinstance(result, Result)
    assert result.class_name == "red" and result.class_id == 0
    assert result.orig_shape == (240, 320)
    assert result.boxes.dtype == np.float32 and result.boxes.shape == (1, 4)
    x0, y0, x1, y1 = result.boxes[0]
    # the fixture map is on an 8x8 grid: at 320x240 a patch is 40x30 pixels, so boxes are within half a patch
    assert abs(x0 - 60) <= 20 and abs(y0 - 40) <= 15 and abs(x1 - 199) <= 20 and abs(y1 - 159) <= 15
    assert [t[1] for t in result.topk][0] == "red" and abs(sum(t[2] for t in result.topk) - 1) < 1e-5
    assert set(result.speed) == {"preprocess", "inference", "postprocess"}
    json.dumps(result.summary())  # JSON-ready
    assert exported_decoder is decode_boxes


def test_boxes_are_the_evaluator_decoder_scaled_to_the_frame(model):
    loc = Localizer(model, return_map=True)
    frame = scene(480, 640, box=(100, 300, 500, 460))
    result = loc(frame)
    maps, _ = loc.forward_maps([frame])
    want = scale_boxes(decode_boxes(maps[0], loc.meta.threshold, loc.meta.input_size, "largest"), loc.meta.input_size, (480, 640))
    np.testing.assert_array_equal(result.boxes, want)
    np.testing.assert_array_equal(result.fg_map, maps[0])


def test_batches_lists_arrays_and_chunks(model):
    loc = Localizer(model, max_batch=2)
    frames = [scene(box=(10 + 20 * i, 20, 120 + 20 * i, 140)) for i in range(5)]
    listed = loc(frames)
    stacked = loc(np.stack(frames))
    singles = [loc(f) for f in frames]
    assert len(listed) == len(stacked) == 5
    for a, b, c in zip(listed, stacked, singles):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.boxes, c.boxes)
    assert loc([]) == []


def test_bgr_and_rgb_agree(model):
    loc = Localizer(model)
    rgb = scene(rgb=(30, 60, 240))
    a, b = loc(rgb, color="RGB"), loc(np.ascontiguousarray(rgb[..., ::-1]), color="BGR")
    assert a.class_name == b.class_name == "blue"
    np.testing.assert_array_equal(a.boxes, b.boxes)
    with pytest.raises(UserError, match="RGB' or 'BGR"):
        loc(rgb, color="YUV")


@pytest.mark.parametrize("kind", ["gray", "gray1", "rgba", "uint16", "float"])
def test_other_pixel_formats(model, kind):
    loc = Localizer(model)
    rgb = scene()
    gray = rgb.mean(axis=2).astype(np.uint8)
    frame = {
        "gray": gray,
        "gray1": gray[:, :, None],
        "rgba": np.dstack([rgb, np.full(gray.shape, 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,
        "float": rgb.astype(np.float32) / 255.0,
    }[kind]
    result = loc(frame)
    assert result.orig_shape == (240, 320) and len(result.boxes) >= 1
    with pytest.raises(UserError, match="not supported"):
        loc(rgb.astype(np.int64))


def test_preprocess_writes_into_one_buffer():
    pre = Preprocessor((64, 64), max_batch=4)
    buffer = pre.buffer
    for h, w in ((64, 64), (480, 640), (31, 17)):
        out = pre([np.zeros((h, w, 3), np.uint8)] * 3, "BGR")
        assert out.base is buffer or np.shares_memory(out, buffer)
        assert pre.buffer is buffer and out.shape == (3, 64, 64, 3)
    frame = np.zeros((10, 10, 3), np.uint8)
    assert as_uint8_3ch(frame) is frame  # the common case costs nothing


def test_box_score_is_mean_of_covered_patches():
    grid = np.zeros((4, 4), np.float32)
    grid[1:3, 1:3] = 1.0
    boxes = np.array([[16, 16, 47, 47], [0, 0, 63, 63], [0, 0, 3, 3]])
    np.testing.assert_allclose(box_scores(grid, boxes, (64, 64)), [1.0, 0.25, 0.0])


def test_threshold_classes_and_min_area(model):
    frame = scene()
    loose, tight = Localizer(model, threshold=0.05), Localizer(model, threshold=0.95)
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
    assert area(loose(frame).boxes)[0] >= area(tight(frame).boxes)[0]
    only = Localizer(model, classes="green,blue")
    result = only(frame)
    assert result.class_name in ("green", "blue") and len(result.topk) == 2
    assert Localizer(model, classes=[2]).meta.class_names == CLASSES
    with pytest.raises(UserError, match="did you mean 'green'"):
        Localizer(model, classes="gren")
    assert len(Localizer(model, min_box_area=64 * 64)(frame).boxes) == 0
    with pytest.raises(UserError, match="threshold"):
        Localizer(model, threshold=1.5)


def test_static_batch_model(tmp_path):
    path = write_model(tmp_path / "static.onnx", static_batch=4)
    loc = Localizer(path, max_batch=8)
    assert loc.max_batch == 4 and loc.runner.fixed_batch == 4
    results = loc([scene()] * 6)
    assert len(results) == 6 and all(r.class_name == "red" for r in results)


def test_forward_maps_contract(model):
    loc = Localizer(model, max_batch=3)
    maps, logits = loc.forward_maps([scene(), scene(100, 50), scene(33, 99), scene()])
    assert maps.shape == (4, 8, 8) and maps.dtype == np.float32
    assert logits.shape == (4, 3) and logits.dtype == np.float32
    empty_maps, empty_logits = loc.forward_maps([])
    assert empty_maps.shape == (0, 8, 8) and empty_logits.shape == (0, 3)


def test_threads_share_one_localizer(model):
    loc = Localizer(model, max_batch=2)
    frames = [scene(box=(5 * i, 10, 100 + 5 * i, 120)) for i in range(8)]
    want = [loc(f).boxes for f in frames]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            got[i] = loc(frames[i]).boxes

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_array_equal(got[i], want[i])


def test_plot_draws_on_a_copy(model):
    loc = Localizer(model, return_map=True)
    frame = scene()
    result = loc(frame)
    drawn = result.plot(frame, heatmap=True)
    assert drawn.shape == frame.shape and not np.array_equal(drawn, frame)
    assert np.array_equal(frame, scene())  # the caller's frame is untouched


def test_model_file_errors(tmp_path, model):
    with pytest.raises(UserError, match="no such model file"):
        Localizer(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="cannot load this model"):
        Localizer(tmp_path / "garbage.onnx")
    with pytest.raises(BundleError, match="no 'tedloc' metadata"):
        Localizer(write_model(tmp_path / "nometa.onnx", metadata=False))
    with pytest.raises(BundleError, match="newer than this tedloc-edge reads"):
        Localizer(write_model(tmp_path / "newer.onnx", metadata=newer_format_metadata()))
    wrong = fixture_meta(size=32, grid=4)  # metadata that contradicts the graph
    with pytest.raises(UserError, match="metadata says 32x32"):
        Localizer(write_model(tmp_path / "wrongsize.onnx", metadata=wrong.to_json()))
    with pytest.raises(UserError, match="unknown backend 'onnxrt'"):
        Localizer(model, backend="onnxrt")
    with pytest.raises(UserError, match="native TensorRT runs a built engine"):
        Localizer(model, backend="tensorrt")


def test_cuda_without_onnxruntime_gpu_is_one_line():
    with pytest.raises(UserError, match="needs onnxruntime-gpu"):
        choose_providers("cuda", None, ["CPUExecutionProvider"])
    assert choose_providers("auto", None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("cuda", None, gpu, tensorrt_ok=True)[0] == "TensorrtExecutionProvider"
    # onnxruntime-gpu lists its TensorRT EP even without TensorRT: then it is not asked for (no 'EP Error' retry)
    assert choose_providers("cuda", None, gpu, tensorrt_ok=False) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_cuda_ep_that_does_not_start_is_an_error_not_a_silent_cpu_run(model, monkeypatch, caplog):
    """onnxruntime-gpu without its CUDA / cuDNN libraries drops the CUDA EP and runs on the CPU, silently;
    here the CPU build stands in for it (it lists CUDA, then drops it as ORT does)."""
    import onnxruntime as ort

    from tedloc_edge.runtime.ort_providers import preload_cuda_libraries

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a real CUDA EP, which would start")
    preload_cuda_libraries.cache_clear()  # a cached real preload would hide the stand-in's message
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "preload_dlls", lambda: print("Failed to load libcudnn.so.9: cannot open shared object file"),
                        raising=False)
    with pytest.raises(UserError, match=r"could not start its CUDA execution provider \(Failed to load libcudnn.so.9"):
        Localizer(model, device="cuda")
    with caplog.at_level("WARNING"):
        loc = Localizer(model, device="auto")
    assert loc.runner.name == "onnxruntime-cpu" and "did not start" in caplog.text
    assert loc(scene()).class_name == "red"
    preload_cuda_libraries.cache_clear()


def test_cuda_graph_options_are_checked_before_any_gpu_work(model, tmp_path):
    with pytest.raises(UserError, match="CUDA graphs run on the CUDA execution provider; use --device cuda"):
        Localizer(model, device="cpu", cuda_graph=True)
    providers = graph_providers(Path(model), "cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]  # TensorRT's EP left out
    assert with_cuda_options(providers, {"enable_cuda_graph": "1", "prefer_nhwc": 1}) == [
        ("CUDAExecutionProvider", {"enable_cuda_graph": "1", "prefer_nhwc": "1"}), "CPUExecutionProvider"]
    assert with_cuda_options(["CPUExecutionProvider"], {"prefer_nhwc": "1"}) == ["CPUExecutionProvider"]
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(UserError, match="--cuda-graph applies to ONNX Runtime's CUDA EP"):
        Localizer(plan, device="cuda", cuda_graph=True)


def test_graph_mode_io_binding_with_cpu_ortvalues_matches_the_plain_session(tmp_path):
    """The CUDA-graph path's binding (input and outputs as OrtValues allocated once, the input updated in
    place, outputs copied out) run with real ONNX Runtime, CPU OrtValues standing in for device ones."""
    path = write_model(tmp_path / "static.onnx", static_batch=2)
    plain = OnnxRuntimeRunner(path, device="cpu")
    graph_io = OnnxRuntimeRunner(path, device="cpu")
    graph_io.cuda_graph, graph_io.io_device = True, "cpu"
    rng = np.random.default_rng(0)
    for _ in range(3):  # each call must read the new frames through the same bound input
        images = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        for a, b in zip(graph_io.infer(images), plain.infer(images)):
            np.testing.assert_array_equal(a, b)
    assert list(graph_io._bindings) == [2] and set(graph_io._device_outputs) == {"fg_map", "logits"}


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engine_without_tensorrt_is_one_line(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\x00" * 64)
    write_plan_sidecar(plan, fixture_meta(), {"tensorrt_version": "10.13.3.9", "compute_capability": "8.7"})
    with pytest.raises(UserError, match=r"needs TensorRT and an NVIDIA GPU .*--backend onnxruntime"):
        Localizer(plan)
    with pytest.raises(UserError, match="onnxruntime runs the .onnx"):
        Localizer(plan, backend="onnxruntime")


@pytest.mark.gpu
def test_tensorrt_matches_onnxruntime(tmp_path, model):
    """On a GPU: build an engine from the fixture with TensorRT, record it, and compare with ONNX Runtime."""
    trt = pytest.importorskip("tensorrt")
    pytest.importorskip("cuda.bindings.runtime" if importlib.util.find_spec("cuda.bindings") else "pycuda.driver")
    from tedloc_edge.build_record import make_build_record
    from tedloc_edge.runtime.cuda_memory import open_cuda

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model.read_bytes())
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 64, 64, 3), (2, 64, 64, 3), (4, 64, 64, 3))
    config.add_optimization_profile(profile)
    plan = tmp_path / "tiny.plan"
    plan.write_bytes(bytes(builder.build_serialized_network(network, config)))
    cuda = open_cuda()
    record = make_build_record(
        tensorrt_version=trt.__version__, gpu_name=cuda.device_name(), compute_capability=cuda.compute_capability(),
        cuda_version="", precision="fp32", input_shapes={}, onnx_sha256="0" * 64, workspace_bytes=0,
        rebuild="tedloc-edge export RUN --format engine", built_at="test",
    )
    cuda.close()
    write_plan_sidecar(plan, fixture_meta(), record)
    frames = [scene(box=(10 * i, 20, 150 + 10 * i, 200)) for i in range(3)]
    want, got = Localizer(model, device="cpu")(frames), Localizer(plan, max_batch=4)(frames)
    for a, b in zip(want, got):
        assert a.class_id == b.class_id
        np.testing.assert_allclose(a.boxes, b.boxes, atol=2)


def test_outputs_that_contradict_the_metadata(tmp_path):
    wrong = fixture_meta().replace(patch_grid=(4, 4))
    with pytest.raises(UserError, match="output 'fg_map' has shape"):
        Localizer(write_model(tmp_path / "grid.onnx", metadata=wrong.to_json()))
    extra_class = fixture_meta().replace(class_names=("a", "b", "c", "d"))
    with pytest.raises(UserError, match="output 'logits' has shape"):
        Localizer(write_model(tmp_path / "classes.onnx", metadata=extra_class.to_json()))
