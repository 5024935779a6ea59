"""export/int8_search.py and the float-layer guard of export/int8.py: the ranking, the fewest-float-layers search,
the bundle record, and that a layer left float stays float in ONNX Runtime (whose optimizer would otherwise give
it per-tensor int8 weights). The contract-shaped TinyTedLoc on a tiny synthetic dataset: seconds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from exportkit import TinyTedLoc, tiny_meta

from tedloc_edge.bundle import read_onnx_meta
from tedloc_edge.datasets import open_split
from tedloc_edge.export import exporter, int8_search
from tedloc_edge.export.exporter import ExportOptions, export
from tedloc_edge.export.images import load_batch
from tedloc_edge.export.int8 import Int8Quantizer, keep_float_layers_float
from tedloc_edge.export.int8_gate import Int8AccuracyError, gate
from tedloc_edge.export.int8_search import output_errors, rank_layers, search
from tedloc_edge.export.onnx_export import export_to_proto
from tedloc_edge.train.synth import generate


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", classes=4, train=8, val=8, test=0, seed=3,
                    image_size=(64, 96), show_progress=False)


@pytest.fixture(scope="module")
def meta(dataset):
    return tiny_meta().replace(class_names=open_split(dataset, "val").class_names)


@pytest.fixture(scope="module")
def fp32(meta):
    return export_to_proto(TinyTedLoc().eval(), meta.replace(precision="fp32"))


@pytest.fixture(scope="module")
def calib(dataset, meta):
    return load_batch([s.path for s in open_split(dataset, "train").samples], meta)


def _session_weights_of(model: onnx.ModelProto, conv_name: str, tmp_path: Path) -> np.ndarray | None:
    """The weight values the named Conv gets in the graph ONNX Runtime actually runs (None: from a DequantizeLinear)."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # where WeightBiasQuantization runs
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(opts.optimized_model_filepath)
    conv = next(n for n in optimized.graph.node if n.op_type == "Conv" and n.name == conv_name)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in optimized.graph.initializer}
    return inits.get(conv.input[1])


@pytest.mark.parametrize("mode", ["cpu", "tensorrt"])
def test_a_layer_kept_float_runs_float_in_onnxruntime(fp32, meta, calib, mode, tmp_path):
    with Int8Quantizer(fp32, meta, calib, "h", mode) as quantizer:
        second = quantizer.units()[1]  # the second backbone Conv: its input comes from a quantized layer
        model = quantizer.quantize(keep_float=second)
    assert read_onnx_meta_of(model).extra["int8_kept_float"] == sorted(second)
    conv = next(n for n in fp32.graph.node if n.name == second[0])
    original = next(onnx.numpy_helper.to_array(t) for t in fp32.graph.initializer if t.name == conv.input[1])
    assert np.array_equal(_session_weights_of(model, second[0], tmp_path), original)  # float, not int8 in disguise


@pytest.mark.parametrize("calibrator", ["percentile", "entropy"])
def test_histogram_calibrators_collect_a_few_images_per_call(fp32, meta, calib, calibrator, monkeypatch):
    """ORT's histogram calibrators keep every activation of one collect_data call in memory (200 images at 448 px
    went over 20 GiB): the quantizer feeds them HISTOGRAM_CHUNK images per call, and the histograms merge."""
    from onnxruntime.quantization import calibrate

    from tedloc_edge.export import int8

    calls: list[int] = []
    original = calibrate.HistogramCalibrater.collect_data

    def counting(self, reader):
        seen, get_next = [0], reader.get_next

        def spy():
            item = get_next()
            seen[0] += 0 if item is None else len(item["images"])
            return item

        reader.get_next = spy
        result = original(self, reader)
        calls.append(seen[0])
        return result

    monkeypatch.setattr(int8, "HISTOGRAM_CHUNK", 2)
    monkeypatch.setattr(calibrate.HistogramCalibrater, "collect_data", counting)
    with Int8Quantizer(fp32, meta, calib, "h", "cpu", calibrator) as quantizer:
        model = quantizer.quantize()
    assert len(calib) > 2 and calls == [min(2, len(calib) - i) for i in range(0, len(calib), 2)]
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def read_onnx_meta_of(model: onnx.ModelProto):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "m.onnx")
        onnx.save_model(model, str(path))
        return read_onnx_meta(path)


def test_the_guard_is_exact_and_names_what_it_guarded():
    """A float Conv between a per-tensor DequantizeLinear and a QuantizeLinear: ONNX Runtime quantizes its weights
    (per tensor) unless it reads its own per-channel DequantizeLinear with the same values (cpu mode) or the float
    tensor itself (tensorrt mode)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z"),
             numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),  # a float layer between
             helper.make_node("QuantizeLinear", ["c", "s", "z"], ["cq"], name="q2"),  # quantized ones
             helper.make_node("DequantizeLinear", ["cq", "s", "z"], ["y"], name="dq2")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    feed = {"x": rng.normal(size=(1, 3, 5, 5)).astype(np.float32)}
    no_opt = ort.SessionOptions()
    no_opt.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    exact = ort.InferenceSession(model.SerializeToString(), no_opt, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    if tuple(int(v) for v in ort.__version__.split(".")[:2]) >= (1, 21):  # ORT's optimizer quantizes the float Conv
        plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        assert not np.allclose(plain, exact, atol=1e-4)
    guarded = onnx.ModelProto()
    guarded.CopyFrom(model)
    assert keep_float_layers_float(guarded, "cpu") == 1
    got = ort.InferenceSession(guarded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    assert np.allclose(got, exact, atol=1e-5)
    rewired = onnx.ModelProto()
    rewired.CopyFrom(model)
    assert keep_float_layers_float(rewired, "tensorrt") == 1  # reads the float tensor itself
    assert next(n for n in rewired.graph.node if n.op_type == "Conv").input[0] == "x"
    assert [n.name for n in rewired.graph.node] == ["conv", "q2", "dq2"]  # the unread Q/DQ pair is gone


def test_output_errors_are_zero_for_equal_outputs_and_scale_free_for_maps():
    maps, logits = np.random.default_rng(1).random((3, 4, 4)), np.random.default_rng(2).normal(size=(3, 5))
    assert output_errors((maps, logits), (maps, logits)) == (0.0, 0.0)
    assert output_errors((maps, logits), (maps * 3 + 1, logits))[0] == pytest.approx(0.0)  # the protocol min-max normalizes


def test_ranking_is_worst_first_and_groups_when_there_are_many_units():
    units = [(f"n{i}",) for i in range(10)]
    truth = {f"n{i}": (i % 4) / 10 for i in range(10)}
    calls: list[list[str]] = []

    def damage(nodes):
        calls.append(nodes)
        return sum(truth[n] for n in nodes), 0.0

    ranked = rank_layers(units, damage, {}, max_evals=64)
    assert [s.nodes[0] for s in ranked][:2] == ["n3", "n7"] and len(calls) == 10
    calls.clear()
    ranked = rank_layers(units, damage, {}, max_evals=8)  # 4 groups of 3, then the layers of the worst that fit
    assert len(calls) == 8 and calls[:4] == [["n0", "n1", "n2"], ["n3", "n4", "n5"], ["n6", "n7", "n8"], ["n9"]]
    assert ranked[0].nodes == ("n7",) and ranked[0].score == pytest.approx(0.3)  # found inside the worst group


class _FakeQuantizer:
    """Stands in for Int8Quantizer: records what it was asked to keep float; its models are empty graphs."""

    def __init__(self, folder: Path, units, calibrator: str = "minmax-mean"):
        self.folder, self._units, self.pre_model, self.kept, self.calibrator = folder, units, None, [], calibrator
        self.fp32 = self.meta = self.images = self.calibration_hash = self.mode = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def units(self):
        return self._units

    def quantize(self, keep_float=(), only=None):
        self.kept.append(list(keep_float))
        graph = onnx.helper.make_graph([], "g", [], [])
        return onnx.helper.make_model(graph)


def _gate_passing_from(k_needed: int, calibrator_needed: str = "minmax-mean"):
    def score(fp32_scores, path, split, max_drop):
        k = int(Path(path).stem.split("_")[1])
        drop = 0.0 if k >= k_needed and Path(path).parent.name == calibrator_needed else 5.0
        return gate({"maxboxacc": 50.0, "top1_loc": 40.0}, {"maxboxacc": 50.0, "top1_loc": 40.0 - drop}, max_drop, 80)
    return score


def _search(tmp_path, monkeypatch, needed: int, calibrator_needed: str = "minmax-mean", alternatives=()):
    units = [(f"n{i}",) for i in range(12)]
    folders = {name: tmp_path / name for name in ("minmax-mean", "minmax", "percentile")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setattr(int8_search, "run_model", lambda model, images: (np.zeros((1, 2, 2)), np.zeros((1, 3))))
    monkeypatch.setattr(int8_search, "output_errors", lambda ref, got: (1.0, 1.0))
    monkeypatch.setattr(int8_search, "score_gate", _gate_passing_from(needed, calibrator_needed))
    monkeypatch.setattr(int8_search, "images_per_second", lambda models, batch: [100.0, 90.0])
    monkeypatch.setattr(int8_search, "Int8Quantizer", lambda *args: _FakeQuantizer(folders[args[-1]], units, args[-1]))
    full = gate({"maxboxacc": 50.0, "top1_loc": 40.0}, {"maxboxacc": 50.0, "top1_loc": 35.0}, 1.0, 80)
    return search(_FakeQuantizer(folders["minmax-mean"], units), tmp_path / "fp32.onnx", None, np.zeros((1, 8, 8, 3), np.uint8),
                  None, 1.0, 10, full, alternatives)


@pytest.mark.parametrize("needed, tried", [(3, [0, 1, 2, 4, 3]), (1, [0, 1]), (9, [0, 1, 2, 4, 8, 10, 9]), (11, [0, 1, 2, 4, 8, 10])])
def test_search_doubles_then_bisects_to_the_fewest_float_layers(tmp_path, monkeypatch, needed, tried):
    model, report = _search(tmp_path, monkeypatch, needed)
    assert [s.kept for s in report.steps] == tried
    if needed <= 10:
        assert model is not None and report.kept == needed and report.passed and report.speed == (100.0, 90.0)
        assert report.to_dict()["img_per_s"] == {"full_int8": 100.0, "chosen": 90.0}
        assert report.to_dict()["calibrator"] == "minmax-mean" and len(report.kept_float) == needed
    else:
        assert model is None and not report.passed and report.to_dict()["calibrator"] is None


def test_search_tries_the_other_calibrators_when_the_budget_is_spent(tmp_path, monkeypatch):
    model, report = _search(tmp_path, monkeypatch, 2, calibrator_needed="percentile", alternatives=("minmax", "percentile"))
    assert [(s.calibrator, s.kept) for s in report.steps] == (
        [("minmax-mean", k) for k in (0, 1, 2, 4, 8, 10)] + [("minmax", k) for k in (0, 1, 2, 4, 8, 10)]
        + [("percentile", k) for k in (0, 1, 2)])
    assert model is not None and report.chosen.calibrator == "percentile" and report.kept == 2 and report.passed
    assert "percentile calibration, 2 layers kept float (n0, n1)" in report.summary()


def test_export_searches_when_the_gate_fails_and_records_it(tmp_path, dataset, meta, monkeypatch):
    run = _tiny_run(tmp_path, dataset, meta, monkeypatch)
    ranked_on, real_search = [], int8_search.search
    monkeypatch.setattr(int8_search, "RANK_IMAGES", 5)  # the ranking runs on the first 5 val images, the gate on all 8
    monkeypatch.setattr(int8_search, "search", lambda q, f, s, images, *a: ranked_on.append(len(images)) or real_search(q, f, s, images, *a))
    res = export(run, ExportOptions(precision="int8", calib_images=8, int8_search=True, int8_max_float=2))
    record = read_onnx_meta(res.final.path).extra["int8_gate"]
    assert record["search"]["layers"] >= 3 and record["search"]["sensitivity"][0]["layer"] and ranked_on == [5]
    assert len(record["fp32_hits"]["top1_loc"]) == 8  # what an engine built from this file is gated against
    with pytest.raises(Int8AccuracyError, match=r"keeping up to 2 of \d+ layers float did not pass"):
        export(run, ExportOptions(precision="int8", calib_images=8, int8_max_drop=-100.0, int8_max_float=2, exist_ok=True))


def _tiny_run(tmp_path: Path, dataset: Path, meta, monkeypatch) -> Path:
    (tmp_path / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"data": str(dataset)}), encoding="utf-8")
    monkeypatch.setattr(exporter, "load_model", lambda source: (TinyTedLoc().eval(), meta))
    return tmp_path / "run"


def test_the_engine_gate_scores_the_plan_against_the_onnx_record(tmp_path, dataset, meta, monkeypatch):
    """The engine half of the gate without a GPU: the plan's scores (here stubbed where the runtime would run
    TensorRT) are gated against the fp32 figures the int8 ONNX recorded, and kept in the plan's sidecar."""
    from types import SimpleNamespace

    from tedloc_edge.bundle import read_plan_sidecar, write_plan_sidecar
    from tedloc_edge.export import int8_gate

    run = _tiny_run(tmp_path, dataset, meta, monkeypatch)
    onnx_path = export(run, ExportOptions(precision="int8", calib_images=8, int8_max_drop=100.0, int8_mode="tensorrt", exist_ok=True)).final.path
    record = read_onnx_meta(onnx_path).extra["int8_gate"]
    plan = tmp_path / "model_int8.plan"
    plan.write_bytes(b"plan")
    write_plan_sidecar(plan, read_onnx_meta(onnx_path), {"precision": "int8"})
    lost_one = {k: np.array([c == "1" for c in v]) for k, v in record["fp32_hits"].items()}
    first = int(np.flatnonzero(lost_one["top1_loc"])[0]) if lost_one["top1_loc"].any() else None
    if first is not None:
        lost_one["top1_loc"][first] = False
    scores = {k: 100.0 * v.mean() for k, v in lost_one.items()}
    seen = []
    monkeypatch.setattr(int8_gate, "evaluate_model", lambda path, split, backend="onnxruntime": seen.append(backend) or (scores, lost_one))
    opts = SimpleNamespace(int8_max_drop=100.0, int8_allow_drop=False)
    result = int8_gate.gate_plan(onnx_path, plan, SimpleNamespace(run_dir=run), opts, plan)
    assert seen == ["tensorrt"] and result is not None and result.passed
    assert result.flips["top1_loc"] == ((1, 0) if first is not None else (0, 0))
    assert read_plan_sidecar(plan)[0].extra["int8_engine_gate"]["flips"]["top1_loc"]["lost"] == result.flips["top1_loc"][0]
    with pytest.raises(Int8AccuracyError):
        int8_gate.gate_plan(onnx_path, plan, SimpleNamespace(run_dir=run), SimpleNamespace(int8_max_drop=-1.0, int8_allow_drop=False), plan)
    assert int8_gate.gate_plan(onnx_path, plan, SimpleNamespace(run_dir=None), opts, plan) is None  # an ONNX source: warned


@pytest.mark.gpu
def test_int8_engine_export_is_gated_on_gpu(tmp_path, dataset, meta, monkeypatch):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA GPU")
    from tedloc_edge.bundle import read_plan_sidecar

    run = _tiny_run(tmp_path, dataset, meta, monkeypatch)
    res = export(run, ExportOptions(format="engine", precision="int8", calib_images=8, int8_max_drop=100.0, batch_max=4))
    plan = res.final.path
    assert res.gate is not None and res.gate.passed and "gate passed" in res.final.verified
    stored = read_plan_sidecar(plan)[0].extra["int8_engine_gate"]
    assert stored["images"] == 8 and set(stored["flips"]) == {"maxboxacc", "top1_loc"}


def test_a_negative_float_budget_is_refused_before_quantizing(tmp_path, dataset, meta, monkeypatch):
    from tedloc_edge.errors import UserError

    run = _tiny_run(tmp_path, dataset, meta, monkeypatch)
    with pytest.raises(UserError, match="--int8-max-float -1 must be >= 0"):
        export(run, ExportOptions(precision="int8", calib_images=8, int8_max_float=-1))
