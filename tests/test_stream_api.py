"""`Localizer.stream` (infer's threaded reader as an iterator), `Result.to_supervision`, --smooth and --segment."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_media import count_frames, make_clip, read_jsonl
from runtime_models import write_model

from tedloc_edge.errors import UserError
from tedloc_edge.runtime import Localizer
from tedloc_edge.runtime.frames import Frame
from tedloc_edge.runtime.infer import InferOptions, run_infer
from tedloc_edge.runtime.reconnect import Reconnect
from tedloc_edge.runtime.result import Result
from tedloc_edge.runtime.segments import Segments, parse_duration, part_name
from tedloc_edge.runtime.smoothing import Smoother


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_stream_yields_what_a_call_per_frame_gives_in_either_channel_order(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=12)
    with Localizer(model) as loc:
        rgb = [(r, f.copy()) for r, f in loc.stream(str(clip), batch=4)]
        assert len(rgb) == 12
        for result, frame in rgb:
            alone = loc(frame, color="RGB")
            assert result.class_id == alone.class_id and np.array_equal(result.boxes, alone.boxes)
        bgr = [f for _, f in loc.stream(str(clip), color="BGR")]
        assert all(np.array_equal(b, f[..., ::-1]) for b, (_, f) in zip(bgr, rgb))
        early = loc.stream(str(clip))
        next(early)
        early.close()  # leaving the loop closes the reader thread


def test_result_to_supervision(model):
    sv = pytest.importorskip("supervision")
    frame = np.full((120, 160, 3), 20, np.uint8)
    frame[30:60, 40:80] = 230
    with Localizer(model) as loc:
        result = loc(frame)
    detections = result.to_supervision()
    assert isinstance(detections, sv.Detections) and len(detections) == len(result.boxes) >= 1
    assert np.allclose(detections.xyxy, result.boxes) and np.allclose(detections.confidence, result.box_scores)
    assert set(detections.class_id) == {result.class_id} and detections.data["class_name"][0] == result.class_name
    zone = sv.PolygonZone(np.array([[0, 0], [159, 0], [159, 119], [0, 119]]))  # supervision's zones and annotators take them
    assert zone.trigger(detections).all()
    drawn = sv.BoxAnnotator().annotate(frame.copy(), detections)
    assert drawn.shape == frame.shape and not np.array_equal(drawn, frame)
    empty = Result(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), 1, "b", 0.5, [(1, "b", 0.5)], (10, 10))
    assert len(empty.to_supervision()) == 0


def fake(class_id: int, box: list[float] | None, prob: float = 0.6) -> Result:
    other = 1 - class_id if class_id in (0, 1) else 0
    boxes = np.array([box] if box else np.zeros((0, 4)), np.float32)
    return Result(boxes, np.ones(len(boxes), np.float32), class_id, f"c{class_id}", prob,
                  [(class_id, f"c{class_id}", prob), (other, f"c{other}", 1 - prob)], (100, 100))


def test_smoothing_votes_the_class_and_averages_the_box():
    smooth = Smoother(3)
    r, line = smooth(fake(0, [0, 0, 10, 10], prob=0.9))
    assert r.class_id == 0 and r.boxes[0].tolist() == [0, 0, 10, 10] and line["smooth"]["k"] == 3
    r, line = smooth(fake(1, [20, 20, 30, 30]))  # one frame of another class: a tie, kept by summed probability
    assert r.class_id == 0 and line["smooth"]["raw_class_id"] == 1 and line["smooth"]["raw_box"] == [20, 20, 30, 30]
    assert r.boxes[0].tolist() == [10, 10, 20, 20]  # EMA, alpha 2 / (3 + 1): the foreground box is averaged in
    r, _ = smooth(fake(0, [30, 30, 40, 40]))
    assert r.class_id == 0 and r.boxes[0].tolist() == [20, 20, 30, 30]
    assert r.score == pytest.approx((0.9 + 0.4 + 0.6) / 3)
    r, _ = smooth(fake(1, [0, 0, 2, 2]))  # class 1 now has 2 of the last 3 frames: it wins, the box average restarts
    assert r.class_id == 1 and r.class_name == "c1" and r.boxes[0].tolist() == [0, 0, 2, 2]
    r, _ = smooth(fake(1, [40, 40, 50, 50]))
    assert r.class_id == 1 and r.boxes[0].tolist() == [20, 20, 26, 26]
    r, _ = smooth(fake(0, None), restart=True)  # a gap: the window starts again
    assert r.class_id == 0 and len(r.boxes) == 0 and len(smooth.window) == 1
    with pytest.raises(UserError, match="--smooth 1"):
        Smoother(1)


def test_smooth_is_stated_in_the_jsonl(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=8)
    run_infer(InferOptions(source=str(clip), model=model, out=tmp_path / "out", smooth=4, video=False, show_progress=False))
    lines = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len(lines) == 8 and all(line["smooth"]["k"] == 4 and "raw_class_id" in line["smooth"] for line in lines)


def test_segments_are_each_a_complete_mp4_and_jsonl(model, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", frames=60, fps=25)
    out = tmp_path / "out"
    summary = run_infer(InferOptions(source=str(clip), model=model, out=out, segment="1s", batch=4, show_progress=False))
    parts = summary.segments
    assert [p["frames"] for p in parts] == [25, 25, 10]  # a file is cut by its own timestamps
    for k, part in enumerate(parts):
        assert part["jsonl"] == f"predictions_{k:04d}.jsonl" and part["video"] == f"clip_{k:04d}.mp4"
        lines = read_jsonl(out / part["jsonl"])
        assert [line["frame"] for line in lines] == list(range(part["first_frame"], part["last_frame"] + 1))
        assert count_frames(out / part["video"]) == part["frames"]
    assert not (out / "predictions.jsonl").exists()
    (out / "summary.json").unlink()
    with pytest.raises(UserError, match="predictions_0000.jsonl: already exists"):
        run_infer(InferOptions(source=str(clip), model=model, out=out, segment="1s", show_progress=False))


def test_segment_clock_durations_and_reconnect_policy():
    assert [parse_duration(t) for t in ("10m", "90s", "1h", "45", "0.5m")] == [600, 90, 3600, 45, 30]
    for bad in ("0", "ten", "5d", "-1m"):
        with pytest.raises(UserError, match="--segment"):
            parse_duration(bad)
    assert part_name("predictions.jsonl", 12) == "predictions_0012.jsonl"
    live = Segments(10.0, live=True)  # a live source is cut by the wall clock, whatever its timestamps say
    first = Frame(0, np.zeros(1), time=0.0, wall=1000.0)
    live.begin(first, {})
    assert not live.due(Frame(1, np.zeros(1), time=50.0, wall=1009.0)) and live.due(Frame(2, np.zeros(1), time=0.1, wall=1010.0))
    assert str(Reconnect.parse(None)) == "forever" and Reconnect.parse("3").attempts == 3 and Reconnect.parse("off").attempts == 0
    assert [Reconnect().delay(k) for k in (1, 2, 3, 9)] == [0.5, 1.0, 2.0, 2.0]
    with pytest.raises(UserError, match="--reconnect 'often'"):
        Reconnect.parse("often")
