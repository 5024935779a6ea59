"""The Triton repository writer: every config.pbtxt (the ensemble's included) parsed with Triton's own
model-config protobuf (tritonclient's model_config_pb2), the ensemble's tensors chained step to step, the
bundle metadata round-tripped through the config parameters, variant picking and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tedloc_edge.bundle import METADATA_KEY, BundleMeta
from tedloc_edge.errors import UserError
from tedloc_edge.export.triton_repo import (
    MODEL_NAMES,
    TritonOptions,
    check_variants,
    pbtxt_string,
    write_repository,
)

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] carries Triton's model-config schema")
text_format = pytest.importorskip("google.protobuf.text_format")

META = BundleMeta(
    class_names=("cat", 'say "hi"', "back\\slash", "ünïcode"),
    input_size=(64, 48),
    patch_grid=(8, 6),
    threshold=0.42,
    contour_mode="all",
    run_id="repo-test",
    extra={"note": "line one\nline two"},
)
DT = model_config_pb2.DataType


def parse(folder: Path):
    config = model_config_pb2.ModelConfig()
    text_format.Parse((folder / "config.pbtxt").read_text(encoding="utf-8"), config)
    return config


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not parsed by the writer")
    return path


def io(config, which: str) -> dict[str, tuple[int, tuple[int, ...]]]:
    return {t.name: (t.data_type, tuple(t.dims)) for t in getattr(config, which)}


def test_every_config_parses_with_tritons_schema(tmp_path: Path, onnx_file: Path):
    opts = TritonOptions(max_batch_size=16, instances=2, instance_kind="KIND_GPU", max_queue_delay_us=500)
    repo = write_repository(tmp_path / "repo", onnx_file, META, options=opts)
    assert sorted(repo.models) == sorted(MODEL_NAMES.values())
    configs = {name: parse(folder) for name, folder in repo.models.items()}
    for name, config in configs.items():
        assert config.name == name
        assert config.max_batch_size == 16
        meta = BundleMeta.from_json(config.parameters[METADATA_KEY].string_value)
        assert meta == META  # quotes, backslashes, non-ASCII and newlines survive the text format

    model = configs["tedloc_model"]
    assert model.platform == "onnxruntime_onnx"
    assert (repo.models["tedloc_model"] / "1" / "model.onnx").read_bytes() == onnx_file.read_bytes()
    assert io(model, "input") == {"images": (DT.TYPE_UINT8, (64, 48, 3))}
    assert io(model, "output") == {"fg_map": (DT.TYPE_FP32, (8, 6)), "logits": (DT.TYPE_FP32, (4,))}
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert list(model.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [(g.count, g.kind) for g in model.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]

    decode, python, ensemble = configs["tedloc_decode"], configs["tedloc_python"], configs["tedloc"]
    assert decode.backend == python.backend == "python"
    assert (repo.models["tedloc_decode"] / "1" / "model.py").is_file()
    assert (repo.models["tedloc_python"] / "1" / "model.py").is_file()
    assert (repo.models["tedloc_python"] / "1" / "model.onnx").is_file()
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in decode.instance_group)
    assert all(g.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU for g in python.instance_group)
    # tedloc_python and the ensemble are interchangeable for a client
    assert io(python, "input") == io(ensemble, "input") == {"images": (DT.TYPE_UINT8, (64, 48, 3)), "frame_size": (DT.TYPE_INT32, (2,))}
    assert io(python, "output") == io(ensemble, "output") == io(decode, "output")
    assert set(io(ensemble, "output")) == {"boxes", "scores", "num_boxes", "classes", "probs", "logits"}


def test_ensemble_steps_chain(tmp_path: Path, onnx_file: Path):
    repo = write_repository(tmp_path / "repo", onnx_file, META)
    configs = {name: parse(folder) for name, folder in repo.models.items()}
    ensemble = configs["tedloc"]
    assert ensemble.platform == "ensemble"
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tedloc_model", "tedloc_decode"]
    available = dict(io(ensemble, "input"))  # tensor name -> (dtype, dims) as the ensemble sees it
    for step in steps:
        member = configs[step.model_name]
        member_in, member_out = io(member, "input"), io(member, "output")
        assert set(step.input_map) == set(member_in), step.model_name  # every input fed
        for member_name, ensemble_name in step.input_map.items():
            assert available[ensemble_name] == member_in[member_name], (step.model_name, member_name)
        for member_name, ensemble_name in step.output_map.items():
            available[ensemble_name] = member_out[member_name]
    for name, spec in io(ensemble, "output").items():
        assert available[name] == spec


def test_plan_and_variants(tmp_path: Path, onnx_file: Path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan bytes")
    repo = write_repository(tmp_path / "gpu", plan, META, variants=["ensemble"])
    assert sorted(repo.models) == ["tedloc", "tedloc_decode", "tedloc_model"]  # the ensemble pulls in its steps
    assert parse(repo.models["tedloc_model"]).platform == "tensorrt_plan"
    assert parse(repo.models["tedloc_model"]).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo.models["tedloc_model"] / "1" / "model.plan").read_bytes() == b"plan bytes"
    assert list(repo.load_on().values()) == [["tedloc"]]

    onnx_repo = write_repository(tmp_path / "onnx", onnx_file, META, variants=["model"])
    assert parse(onnx_repo.models["tedloc_model"]).instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_AUTO
    cpu = write_repository(tmp_path / "cpu", onnx_file, META, variants=["tedloc_python"])
    assert list(cpu.models) == ["tedloc_python"]
    assert list(cpu.load_on().values()) == [["tedloc_python"]]
    both = write_repository(tmp_path / "both", plan, META, onnx=onnx_file)
    assert sorted(both.models) == sorted(MODEL_NAMES.values())
    assert check_variants(None) == ("model", "decode", "ensemble", "python")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"variants": ["tedloc_pyton"]}, "unknown Triton variant"),
        ({"options": TritonOptions(max_batch_size=0)}, "max batch size"),
        ({"options": TritonOptions(instance_kind="GPU")}, "instance kind"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, onnx_file: Path, kwargs, match):
    with pytest.raises(UserError, match=match) as info:
        write_repository(tmp_path / "repo", onnx_file, META, **kwargs)
    assert "\n" not in str(info.value)


def test_refuses_overwrite_and_python_without_onnx(tmp_path: Path, onnx_file: Path):
    write_repository(tmp_path / "repo", onnx_file, META, variants=["python"])
    with pytest.raises(UserError, match="exists; pass --exist-ok"):
        write_repository(tmp_path / "repo", onnx_file, META, variants=["python"])
    write_repository(tmp_path / "repo", onnx_file, META, variants=["python"], exist_ok=True)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"x")
    with pytest.raises(UserError, match="tedloc_python variant runs ONNX Runtime"):
        write_repository(tmp_path / "r2", plan, META)
    with pytest.raises(UserError, match="no such model file"):
        write_repository(tmp_path / "r3", tmp_path / "missing.onnx", META)


def test_pbtxt_string_round_trip():
    config = model_config_pb2.ModelConfig()
    value = 'a "b" \\ c\nd ü'
    text_format.Parse(f"name: {pbtxt_string(value)}", config)
    assert config.name == value
