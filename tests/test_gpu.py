"""The GPU path on a real GPU: ONNX Runtime's CUDA EP with IO binding (fp32 / fp16 / int8 Q/DQ) against the
CPU path, CUDA graphs on a static-batch export, and the TensorRT runner's buffer code on a real device
through cuda-python and pycuda. Every test here is marked `gpu` (skipped where nvidia-smi finds no GPU,
tests/conftest.py) and skips itself when the library it needs is missing.

On the GPU machine:  python -m pytest -q -m gpu   (docs/performance.md, "Running the GPU suite").
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from exportkit import TinyTedLoc, real_photos, tiny_meta

from tedloc_edge.export.images import batch_hash
from tedloc_edge.export.onnx_export import export_onnx, save_model
from tedloc_edge.export.static_batch import make_static_batch
from tedloc_edge.runtime import Localizer
from tedloc_edge.runtime.preprocess import Preprocessor

pytestmark = pytest.mark.gpu

# Max abs error of the map (in [0, 1]) vs the CPU EP. fp32: the CUDA EP's convolutions and matmuls use TF32
# by default (its `use_tf32` option), about 1e-3 relative.
TOLERANCE = {"fp32": 2e-3, "fp16": 2e-2, "int8": 2e-2}


def _cuda_ep() -> None:
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu instead of onnxruntime)")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """fp32, fp16 and int8 (TensorRT-mode Q/DQ) exports of the contract-shaped tiny model."""
    from tedloc_edge.export.fp16 import convert_fp16
    from tedloc_edge.export.int8 import quantize_int8

    folder = tmp_path_factory.mktemp("gpu-models")
    meta = tiny_meta()
    fp32_path = export_onnx(TinyTedLoc().eval(), meta, folder / "model.onnx")
    fp32 = onnx.load(str(fp32_path))
    calib = Preprocessor(meta.input_size, 4)(real_photos()).copy()
    paths = {"fp32": fp32_path}
    paths["fp16"] = save_model(convert_fp16(fp32, meta), folder / "model_fp16.onnx")
    paths["int8"] = save_model(quantize_int8(fp32, meta, calib, batch_hash(calib, []), mode="tensorrt"), folder / "model_int8.onnx")
    return paths


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    photos = real_photos()
    return photos + [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_cuda_ep_matches_the_cpu_path(models, frames, precision):
    _cuda_ep()
    path = models[precision]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)  # what an engine build would consume
    with Localizer(path, device="cpu", return_map=True) as cpu, Localizer(path, device="cuda", return_map=True) as gpu:
        assert gpu.runner.on_cuda and "CUDAExecutionProvider" in gpu.runner.providers
        pairs = list(zip(cpu(frames), gpu(frames)))
    assert max(np.abs(a.fg_map - b.fg_map).max() for a, b in pairs) <= TOLERANCE[precision]
    assert all(a.class_id == b.class_id for a, b in pairs)
    same_boxes = sum(len(a.boxes) == len(b.boxes) and np.allclose(a.boxes, b.boxes, atol=1.0) for a, b in pairs)
    # int8: the CPU EP fuses some Q/DQ pairs into integer kernels, the CUDA EP runs them as float, so a
    # value on a rounding edge may move one quantization step and, on a flat map, a box edge by a patch
    assert same_boxes >= (len(pairs) - 1 if precision == "int8" else len(pairs))


def test_io_binding_allocates_once_per_batch_size(models, frames):
    _cuda_ep()
    with Localizer(models["fp32"], device="cuda", max_batch=4) as loc:
        for _ in range(3):
            loc(frames[:4])
            loc(frames[:1])
        assert sorted(loc.runner._device_inputs) == [1, 4]  # one device input per batch size, reused


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graph_replays_new_frames_like_the_plain_session(models, frames, tmp_path, precision):
    _cuda_ep()
    static = save_model(make_static_batch(onnx.load(str(models[precision])), 2), tmp_path / "model_b2.onnx")
    with Localizer(static, device="cuda", cuda_graph=True, return_map=True) as graph, \
            Localizer(static, device="cuda", return_map=True) as plain:
        assert graph.runner.name == "onnxruntime-cuda-graph"
        for start in range(0, len(frames) - 1, 2):  # every call changes the input the captured graph reads
            pair = frames[start : start + 2]
            for a, b in zip(graph(pair), plain(pair)):
                np.testing.assert_allclose(a.fg_map, b.fg_map, atol=1e-4)
                assert a.class_id == b.class_id and np.allclose(a.boxes, b.boxes, atol=1.0)


def test_cuda_graph_needs_a_static_batch(models):
    _cuda_ep()
    from tedloc_edge.errors import UserError

    with pytest.raises(UserError, match="--static-batch N"):
        Localizer(models["fp32"], device="cuda", cuda_graph=True)


@pytest.mark.parametrize("binding", ["cuda-python", "pycuda"])
def test_tensorrt_runner_buffers_round_trip_on_the_device(binding):
    from tedloc_edge.runtime import cuda_memory

    if binding == "cuda-python":
        cudart = cuda_memory._import_cudart()
        if cudart is None:
            pytest.skip("cuda-python (cuda.bindings) is not installed")
        memory = cuda_memory.CudaRuntimeMemory(cudart)
    else:
        memory = cuda_memory.PyCudaMemory(pytest.importorskip("pycuda.driver"))
    try:
        assert memory.compute_capability() >= (5, 0) and memory.device_name()
        frames = memory.pinned((4, 64, 64, 3), np.uint8)
        frames[:] = np.random.default_rng(0).integers(0, 256, frames.shape, dtype=np.uint8)
        back = memory.pinned(frames.shape, np.uint8)
        device = memory.alloc_like(frames)
        memory.htod(device, frames)
        memory.dtoh(back, device)
        memory.synchronize()
        assert np.array_equal(back, frames)
        floats = np.linspace(-1, 1, 1000, dtype=np.float32)
        out = np.zeros_like(floats)
        device2 = memory.alloc_like(floats)
        memory.htod(device2, floats)
        memory.dtoh(out, device2)
        memory.synchronize()
        assert np.array_equal(out, floats)
    finally:
        memory.close()


def test_open_cuda_finds_a_binding():
    if importlib.util.find_spec("cuda") is None and importlib.util.find_spec("pycuda") is None:
        pytest.skip("no CUDA Python binding installed")
    from tedloc_edge.runtime.cuda_memory import open_cuda

    memory = open_cuda()
    try:
        assert memory.binding in ("cuda-python", "pycuda") and isinstance(memory.stream_handle, int)
    finally:
        memory.close()


def test_nvdec_decodes_what_the_cpu_decodes(tmp_path):
    """`--hwaccel cuda`: FFmpeg decodes on NVDEC and the reader hands over the CPU decoder's RGB frames."""
    import ctypes

    pytest.importorskip("av")
    from runtime_media import make_clip

    from tedloc_edge.runtime.sources import open_source

    try:
        ctypes.CDLL("libnvcuvid.so.1")
    except OSError:
        pytest.skip("no libnvcuvid.so.1: this driver install has no NVDEC (a container needs the 'video' driver capability)")
    clip = make_clip(tmp_path / "clip.mp4", frames=24, size=(320, 240))
    with open_source(str(clip)) as cpu:
        want = [f.image for f in cpu]
    with open_source(str(clip), hwaccel="cuda") as gpu:
        got = [f.image for f in gpu]
        assert gpu.decoder == "h264 on cuda"
    assert len(got) == len(want) == 24
    diff = np.abs(np.stack(got).astype(np.int16) - np.stack(want))
    # H.264 decoding is exact by the standard; NVDEC hands NV12 where the CPU decoder hands yuv420p, so only
    # the RGB conversion's chroma handling may differ, by a level or two
    assert diff.mean() < 0.25 and np.percentile(diff, 99.9) <= 2
