"""`tedloc-edge export --format triton`: the repository around the exported model, every config.pbtxt parsed
with Triton's own ModelConfig protobuf (tritonclient), the exported model's config checked against the ONNX
itself, and the bundle recoverable from the config alone. (The repository writer's own tests, ensemble wiring
and a real server: tests/test_triton_repo.py, tests/test_triton_server.py.)"""

from __future__ import annotations


import onnxruntime as ort
import pytest
from exportkit import TinyTedLoc, tiny_meta
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.export import exporter
from tedloc_edge.export.exporter import ExportOptions, export

TYPES = {"TYPE_UINT8": "tensor(uint8)", "TYPE_FP32": "tensor(float)"}


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "load_model", lambda source: (TinyTedLoc().eval(), tiny_meta()))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    return tmp_path / "run"


def parse(path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), mc.ModelConfig())


def test_repository_configs_parse_and_match_the_model(run, tmp_path):
    repo = tmp_path / "repo"
    res = export(run, ExportOptions(format="triton", output=repo, batch_max=16, verify=False))
    assert res.final.kind == "triton" and res.final.path == repo
    configs = {p.parent.name: parse(p) for p in repo.glob("*/config.pbtxt")}
    assert set(configs) == {"tedloc_model", "tedloc_decode", "tedloc", "tedloc_python"}
    for name, cfg in configs.items():
        assert cfg.name == name and cfg.max_batch_size == 16
        assert BundleMeta.from_json(cfg.parameters[METADATA_KEY].string_value) == tiny_meta().replace(precision="fp32")

    cfg = configs["tedloc_model"]
    assert cfg.platform == "onnxruntime_onnx" and cfg.HasField("dynamic_batching")
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_AUTO
    session = ort.InferenceSession(str(repo / "tedloc_model" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for declared, actual in ((cfg.input, session.get_inputs()), (cfg.output, session.get_outputs())):
        assert [t.name for t in declared] == [t.name for t in actual]
        for t, a in zip(declared, actual):
            assert list(t.dims) == list(a.shape[1:]) and TYPES[mc.DataType.Name(t.data_type)] == a.type
    ensemble = configs["tedloc"]
    assert ensemble.platform == "ensemble" and [s.model_name for s in ensemble.ensemble_scheduling.step] == ["tedloc_model", "tedloc_decode"]


def test_variants_and_existing_folders(run, tmp_path):
    repo = tmp_path / "repo"
    export(run, ExportOptions(format="triton", output=repo, triton_variants=("model",), verify=False))
    assert sorted(p.name for p in repo.iterdir()) == ["tedloc_model"]
    with pytest.raises(UserError, match="exists; pass --exist-ok"):
        export(run, ExportOptions(format="triton", output=repo, triton_variants=("model",), verify=False))
    export(run, ExportOptions(format="triton", output=repo, triton_variants=("model",), verify=False, exist_ok=True))
    with pytest.raises(UserError, match="unknown Triton variant 'ensemblee'"):
        export(run, ExportOptions(format="triton", output=repo, triton_variants=("ensemblee",)))
    with pytest.raises(UserError, match="unknown --triton-backend 'onnxrt'.*did you mean 'onnxruntime'"):
        export(run, ExportOptions(format="triton", triton_backend="onnxrt"))


def test_metadata_parameter_survives_awkward_class_names(run, tmp_path, monkeypatch):
    meta = tiny_meta().replace(class_names=('say "hi"', "back\\slash", "é,comma", "new\nline"))
    monkeypatch.setattr(exporter, "load_model", lambda source: (TinyTedLoc().eval(), meta))
    export(run, ExportOptions(format="triton", output=tmp_path / "repo", triton_variants=("model",), verify=False))
    cfg = parse(tmp_path / "repo" / "tedloc_model" / "config.pbtxt")
    got = BundleMeta.from_json(cfg.parameters[METADATA_KEY].string_value)
    assert got.class_names == meta.class_names
