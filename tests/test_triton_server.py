"""Against a REAL Triton Inference Server (the `tritonserver` binary of the nvidia-pytriton wheel, set up by
tests/triton_server.py on 127.0.0.1 with free ports; stopped in every case by the fixtures).

What runs where: ``tedloc_python`` (the exported all-Python variant, unchanged) and ``tedloc_decode`` (the
exported decoder, unchanged) are served as written. This server has no onnxruntime backend, so for the
``tedloc`` ensemble the exported ``tedloc_model`` folder is served through a Python stand-in that runs the
same model.onnx with ONNX Runtime (its config differs only in the backend and device lines); the
ensemble's own config.pbtxt and the decoder are the exported ones.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tedloc_edge.errors import UserError
from tedloc_edge.export.triton_repo import TritonOptions, write_repository

import triton_server as ts

pytestmark = pytest.mark.slow

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def install() -> ts.TritonInstall:
    try:
        return ts.triton_install()
    except ts.TritonUnavailable as exc:
        pytest.skip(f"real Triton server unavailable here: {exc}")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("triton-model") / "model.onnx"
    ts.tiny_onnx(path)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory, model: Path) -> Path:
    from tedloc_edge.bundle import read_onnx_meta

    root = tmp_path_factory.mktemp("triton-repo") / "repo"
    opts = TritonOptions(max_batch_size=8, instances=1, decode_instances=1, max_queue_delay_us=1000)
    write_repository(root, model, read_onnx_meta(model), options=opts)
    ts.python_standin(root / "tedloc_model")
    return root


@pytest.fixture(scope="module")
def server(install, repo: Path, tmp_path_factory):
    log = tmp_path_factory.mktemp("triton-log") / "server.log"
    srv = ts.TritonServer(install, repo, log, models=["tedloc_python", "tedloc_decode", "tedloc_model", "tedloc"])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
    assert not srv.alive()


@pytest.fixture(scope="module")
def local(model: Path):
    from tedloc_edge.runtime import Localizer

    with Localizer(model) as loc:
        yield loc


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(1)
    frames = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    frames.append(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))  # a noise frame of another size
    gray = skimage_data.camera()
    frames.append(np.repeat(gray[:, :, None], 3, axis=2))
    return frames


def remote_localizer(address: str, max_batch: int = 8, **kw):
    """The Localizer over a TritonRunner: runner arguments to the runner, the rest to the Localizer."""
    from tedloc_edge.runtime import Localizer
    from tedloc_edge.runtime.triton_client import TritonRunner

    runner_kw = {k: kw.pop(k) for k in ("timeout", "retry_s", "give_up_s") if k in kw}
    return Localizer(TritonRunner(address, max_batch=max_batch, **runner_kw), **kw)


def assert_same(local_result, remote_result):
    assert remote_result.orig_shape == local_result.orig_shape
    assert np.array_equal(remote_result.boxes, local_result.boxes)
    np.testing.assert_allclose(remote_result.box_scores, local_result.box_scores, rtol=1e-5, atol=1e-6)
    assert remote_result.class_id == local_result.class_id
    assert remote_result.class_name == local_result.class_name
    assert [t[0] for t in remote_result.topk] == [t[0] for t in local_result.topk]
    assert remote_result.score == pytest.approx(local_result.score, rel=1e-5)
    a, b = local_result.summary(), remote_result.summary()
    a.pop("speed"), b.pop("speed")
    # The server's decoding models send boxes and logits, not the map: no presence score comes back, and every
    # frame is present (docs/triton.md); everything else in the JSONL is the same.
    assert b.pop("presence") is None and b["present"] is True
    a.pop("presence")
    assert a == b


def url(server, protocol: str, model: str) -> str:
    address = server.http_url if protocol == "http" else server.grpc_url
    return f"{protocol}://{address}/{model}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model_name", ["tedloc_python", "tedloc"])
def test_same_results_as_local_localizer(server, local, photos, protocol, model_name):
    with remote_localizer(url(server, protocol, model_name), timeout=10) as remote:
        assert remote.meta == local.meta  # the bundle travels in the config parameters
        for frame in photos:
            assert_same(local(frame), remote(frame))
        # a batch in one request (boxes padded per request on the wire), BGR frames
        bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in photos[:4]]
        for a, b in zip(local(bgr, color="BGR"), remote(bgr, color="BGR")):
            assert_same(a, b)
        assert remote.runner.stats["errors"] == 0


def test_request_overrides_and_class_subset(server, model, local, photos):
    from tedloc_edge.runtime import Localizer

    kw = dict(threshold=0.6, contour_mode="all", min_box_area=20, classes="cat,rocket", topk=2)
    with Localizer(model, **kw) as loc, remote_localizer(url(server, "http", "tedloc_python"), timeout=10, **kw) as remote:
        for frame in photos:
            assert_same(loc(frame), remote(frame))
    # a client batch larger than the server's max_batch_size is split into requests the server takes
    with remote_localizer(url(server, "grpc", "tedloc_python"), timeout=10, max_batch=64) as remote:
        assert remote.max_batch == 8
        many = (photos * 3)[:13]
        for a, b in zip(local(many), remote(many)):
            assert_same(a, b)


def test_decode_alone_equals_runtime_decoder(server, local, photos):
    from tedloc_edge.runtime.postprocess import DecodeConfig, decode_one

    maps, logits = local.forward_maps(photos[:4])
    sizes = np.array([p.shape[:2] for p in photos[:4]], dtype=np.int32)
    client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    inputs = []
    for name, array, dtype in (("fg_map", maps, "FP32"), ("logits", logits, "FP32"), ("frame_size", sizes, "INT32")):
        tensor = tritonclient_grpc.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    out = client.infer("tedloc_decode", inputs, client_timeout=10)
    cfg = DecodeConfig(threshold=local.meta.threshold, contour_mode=local.meta.contour_mode)
    for i in range(4):
        d = decode_one(maps[i], logits[i], tuple(sizes[i]), local.meta.input_size, cfg)
        k = int(out.as_numpy("num_boxes")[i, 0])
        assert np.array_equal(out.as_numpy("boxes")[i, :k], d.boxes)
        assert int(out.as_numpy("classes")[i, 0]) == int(d.topk[0])
    client.close()


def good_request_works(server) -> None:
    assert server.ready()
    client = tritonclient_http.InferenceServerClient(server.http_url, network_timeout=10)
    images = np.zeros((1, 64, 64, 3), np.uint8)
    a = tritonclient_http.InferInput("images", list(images.shape), "UINT8")
    a.set_data_from_numpy(images)
    b = tritonclient_http.InferInput("frame_size", [1, 2], "INT32")
    b.set_data_from_numpy(np.array([[64, 64]], np.int32))
    assert client.infer("tedloc_python", [a, b]).as_numpy("num_boxes").shape == (1, 1)
    client.close()


def raw_post(server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("model_name", ["tedloc_python", "tedloc"])
def test_bad_requests_get_triton_errors_and_server_keeps_serving(server, model_name):
    infer = f"/v2/models/{model_name}/infer"

    def tensor(name, datatype, shape, data):
        return {"name": name, "datatype": datatype, "shape": shape, "data": data}

    frame = tensor("frame_size", "INT32", [1, 2], [480, 640])
    cases = {
        "wrong shape": [tensor("images", "UINT8", [1, 32, 32, 3], [0] * 32 * 32 * 3), frame],
        "wrong dtype": [tensor("images", "FP32", [1, 64, 64, 3], [0.0] * 64 * 64 * 3), frame],
        "missing input": [frame],
        "bad frame size": [tensor("images", "UINT8", [1, 64, 64, 3], [0] * 64 * 64 * 3), tensor("frame_size", "INT32", [1, 2], [0, -5])],
        "too few values": [tensor("images", "UINT8", [1, 64, 64, 3], [0] * 100), frame],
    }
    for case, inputs in cases.items():
        status, text = raw_post(server, infer, json.dumps({"inputs": inputs}).encode(), {"Content-Type": "application/json"})
        # Triton answers its own parse failures with 400 or 500; the model's own checks say INVALID_ARG (400)
        assert status in (400, 500) and json.loads(text)["error"], (case, status, text)
        if case == "bad frame size":
            assert status == 400 and "frame_size must be" in text
        good_request_works(server)
    # a corrupt image payload: binary tensor data shorter than its header says (a truncated upload)
    header = json.dumps({"inputs": [
        {"name": "images", "datatype": "UINT8", "shape": [1, 64, 64, 3], "parameters": {"binary_data_size": 64 * 64 * 3}},
        {"name": "frame_size", "datatype": "INT32", "shape": [1, 2], "parameters": {"binary_data_size": 8}},
    ]}).encode()
    body = header + b"\x07" * 1000  # 12,296 bytes promised, 1,000 sent
    status, text = raw_post(server, infer, body, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
    assert status in (400, 500) and json.loads(text)["error"], text
    status, text = raw_post(server, infer, b"{not json", {"Content-Type": "application/json"})
    assert status in (400, 500) and json.loads(text)["error"], text
    good_request_works(server)


def test_client_disconnects_mid_request_leave_server_healthy(server, photos):
    from tedloc_edge.runtime.triton_client import TritonFrameError

    # 1. HTTP: send headers and half a body, then hang up
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=5) as sock:
            sock.sendall(
                b"POST /v2/models/tedloc_python/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{\"inputs\": [{\"name\": \"images\", "
            )
    # 2. gRPC: requests cancelled by a client deadline far shorter than the work
    client = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    images = np.zeros((8, 64, 64, 3), np.uint8)
    a = tritonclient_grpc.InferInput("images", list(images.shape), "UINT8")
    a.set_data_from_numpy(images)
    b = tritonclient_grpc.InferInput("frame_size", [8, 2], "INT32")
    b.set_data_from_numpy(np.full((8, 2), 64, np.int32))
    cut_off = 0
    for _ in range(10):
        try:
            client.infer("tedloc", [a, b], client_timeout=0.0005)
        except tritonclient_grpc.InferenceServerException:
            cut_off += 1
    # nearly every call is cut off; on a heavily loaded machine gRPC has been seen to let one through
    assert cut_off >= 5, cut_off
    client.close()
    # 3. streams whose clients are closed while requests are in flight
    stop = time.monotonic() + 2.0
    errors: list[str] = []

    def camera() -> None:
        loc = remote_localizer(f"grpc://{server.grpc_url}/tedloc_python", timeout=10)
        closer = threading.Timer(0.5, loc.close)  # drops its connections while a request is in flight
        closer.start()
        while time.monotonic() < stop:
            try:
                loc(photos[0])
            except TritonFrameError as exc:
                errors.append(str(exc))
        closer.cancel()

    threads = [threading.Thread(target=camera) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    good_request_works(server)
    assert server.alive()


def test_server_down_is_one_line_within_seconds():
    port = ts.free_ports(1)[0]
    for protocol in ("http", "grpc"):
        start = time.monotonic()
        with pytest.raises(UserError) as info:
            remote_localizer(f"{protocol}://127.0.0.1:{port}/tedloc", timeout=3)
        took = time.monotonic() - start
        message = str(info.value)
        assert took < 5, took
        assert "\n" not in message and f"127.0.0.1:{port}" in message and "not reachable" in message


def test_restart_mid_stream_reconnects_and_counts_errors(install, repo: Path, model, photos, tmp_path):
    """An HTTP and a gRPC camera stream through a server restart (same ports): failed frames are counted,
    the clients reconnect by themselves, and every answered frame equals local inference."""
    from tedloc_edge.runtime import Localizer
    from tedloc_edge.runtime.triton_client import TritonFrameError

    srv = ts.TritonServer(install, repo, tmp_path / "server.log", models=["tedloc_python"])
    with srv, Localizer(model) as loc:
        remotes = {p: remote_localizer(url(srv, p, "tedloc_python"), timeout=10, retry_s=0.2, give_up_s=60) for p in ("http", "grpc")}
        restarter = threading.Thread(target=srv.restart, kwargs={"down_s": 1.0})
        outcomes: dict[str, list[str]] = {p: [] for p in remotes}
        deadline = time.monotonic() + 40
        i = 0
        while time.monotonic() < deadline:
            frame = photos[i % len(photos)]
            i += 1
            for protocol, remote in remotes.items():
                try:
                    result = remote(frame)
                except TritonFrameError:
                    outcomes[protocol].append("error")
                    continue
                assert_same(loc(frame), result)  # frames around the restart are still right
                outcomes[protocol].append("ok")
            if restarter.ident is None and outcomes["http"].count("ok") >= 10:
                restarter.start()
            elif restarter.ident is not None and not restarter.is_alive() and all(o[-5:] == ["ok"] * 5 for o in outcomes.values()):
                break
            time.sleep(0.02)
        restarter.join(60)
        for remote in remotes.values():
            remote.close()
    for protocol, remote in remotes.items():
        seen = outcomes[protocol]
        assert "error" in seen and seen[-5:] == ["ok"] * 5, (protocol, seen[-20:])
        stats = remote.runner.stats
        assert stats["errors"] == seen.count("error") and stats["frames"] == seen.count("ok")
        assert stats["reconnects"] >= 1
    assert not srv.alive()


def test_bench_against_the_server(server, model):
    from tedloc_edge.runtime import triton_bench

    report = triton_bench.run(
        f"http://{server.http_url}/tedloc_python", streams=2, seconds=1.5, model=model,
        metrics_url=server.metrics_url, frame_size=(120, 160), timeout=10,
    )
    rows = {r["mode"]: r for r in report["rows"]}
    assert rows["triton"]["frames"] > 0 and rows["triton"]["errors"] == 0
    assert rows["in-process"]["frames"] > 0
    assert rows["triton"]["p99_ms"] >= rows["triton"]["p50_ms"] > 0
    assert report["server"]["tedloc_python"]["requests"] > 0


def test_infer_triton_outputs_stay_valid_across_a_restart(install, repo: Path, model, tmp_path, monkeypatch):
    """`tedloc-edge infer SOURCE --triton URL` through a server restart: frames lost meanwhile are counted, the
    stream goes on after it, and the mp4 and JSONL hold exactly the answered frames, equal to local inference."""
    import dataclasses

    from tedloc_edge.runtime.infer import InferOptions, run_infer
    from tedloc_edge.runtime.triton_client import TritonRunner

    assert "triton" in {f.name for f in dataclasses.fields(InferOptions)}, "the `infer --triton` hook is gone"
    runtime_media = pytest.importorskip("runtime_media")
    frames = 400
    clip = runtime_media.make_clip(tmp_path / "clip.mp4", frames=frames)
    srv = ts.TritonServer(install, repo, tmp_path / "server.log", models=["tedloc_python"])
    restarter = threading.Thread(target=srv.restart, kwargs={"down_s": 0.5})
    calls = [0]
    original = TritonRunner.infer_boxes

    def camera_paced(self, *args):  # a 50 fps camera; the server restarts at the 30th call
        calls[0] += 1
        if calls[0] == 30:
            restarter.start()
        time.sleep(0.02)
        return original(self, *args)

    with srv:
        local = run_infer(InferOptions(source=str(clip), model=model, out=tmp_path / "local", show_progress=False))
        monkeypatch.setattr(TritonRunner, "infer_boxes", camera_paced)
        try:
            remote = run_infer(InferOptions(source=str(clip), model=model, triton=f"http://{srv.http_url}/tedloc_python",
                                            out=tmp_path / "remote", queue=True, show_progress=False))
        finally:
            if restarter.ident is not None:
                restarter.join(60)
    assert remote.frame_errors > 0  # the restart hit the stream
    assert remote.frames_processed + remote.frame_errors == local.frames_processed == frames
    lines = runtime_media.read_jsonl(Path(remote.outputs["jsonl"]))
    assert len(lines) == remote.frames_processed
    assert runtime_media.count_frames(Path(remote.outputs["video"])) == remote.frames_processed
    answered = [line["frame"] for line in lines]
    first_lost = next(i for i in range(frames) if i not in set(answered))
    assert max(answered) > first_lost  # frames after the outage were answered again
    reference = {line["frame"]: line for line in runtime_media.read_jsonl(Path(local.outputs["jsonl"]))}
    for line in lines:
        ref = reference[line["frame"]]
        assert (line["boxes"], line["class_id"], line["topk"]) == (ref["boxes"], ref["class_id"], ref["topk"])


def test_parse_url():
    from tedloc_edge.runtime.triton_client import parse_url

    assert str(parse_url("127.0.0.1")) == "http://127.0.0.1:8000/tedloc"
    assert str(parse_url("grpc://host/tedloc_python")) == "grpc://host:8001/tedloc_python"
    assert str(parse_url("http://host:9000/m", model="other")) == "http://host:9000/other"
    assert str(parse_url("host:9001", protocol="grpc")) == "grpc://host:9001/tedloc"
    for bad in ("https://host", "ftp://host", "http://:80", "http://host:port"):
        with pytest.raises(UserError):
            parse_url(bad)
