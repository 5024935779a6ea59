"""Issue 23, `infer`: nothing lost (an output never replaces an input; same-named images in two folders keep
their relative paths), nothing hangs (symlink loops, --timeout, Ctrl-C while a URL opens), one-line errors for
unwritable outputs, and a --stride video that lasts as long as its source."""

from __future__ import annotations

import hashlib
import math
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from faultkit import REPO, read_only, silent_server
from runtime_media import count_frames, make_clip, read_jsonl, write_photos
from runtime_models import write_model

from tedloc_edge.errors import UserError
from tedloc_edge.runtime.infer import InferOptions, run_infer


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def infer(source: Path | str, model: Path, out: Path, **kw) -> object:
    return run_infer(InferOptions(source=str(source), model=model, out=out, show_progress=False, **kw))


# -- data lost or overwritten ----------------------------------------------------------------------------------


@pytest.mark.parametrize("exist_ok", [False, True])
def test_output_video_over_its_own_source_is_refused(model, tmp_path, exist_ok):
    folder = tmp_path / "selfvid"
    folder.mkdir()
    make_clip(folder / "clip.mp4", frames=30)
    before = digest(folder)
    with pytest.raises(UserError, match=r"clip.mp4.*is an input of this run.*--exist-ok"):
        infer(folder / "clip.mp4", model, folder, exist_ok=exist_ok)
    assert digest(folder) == before  # not a byte written: no jsonl, no summary, the video intact


@pytest.mark.parametrize("exist_ok", [False, True])
def test_annotated_images_over_the_source_images_are_refused(model, tmp_path, exist_ok):
    write_photos(tmp_path / "photos")
    before = digest(tmp_path / "photos")
    with pytest.raises(UserError, match=r"is an input of this run"):
        infer(tmp_path / "photos", model, tmp_path / "photos", exist_ok=exist_ok)
    assert digest(tmp_path / "photos") == before


def test_output_over_an_input_through_a_link_is_refused(model, tmp_path):
    """The same file under another name (a hard link, a symlinked folder) is still the input."""
    make_clip(tmp_path / "clip.mp4", frames=5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip.mp4").hardlink_to(tmp_path / "clip.mp4")
    with pytest.raises(UserError, match="is an input of this run"):
        infer(tmp_path / "clip.mp4", model, tmp_path / "out", exist_ok=True)
    (tmp_path / "link").symlink_to(tmp_path / "photos", target_is_directory=True)
    write_photos(tmp_path / "photos")
    with pytest.raises(UserError, match="is an input of this run"):
        infer(tmp_path / "photos", model, tmp_path / "link", exist_ok=True)


def test_same_name_in_two_folders_keeps_relative_paths(model, tmp_path):
    photos = write_photos(tmp_path / "src")
    for sub, key in (("a", "astronaut"), ("b", "coffee")):
        (tmp_path / "in" / sub).mkdir(parents=True)
        (tmp_path / "in" / sub / "x.jpg").write_bytes(photos[key].read_bytes())
    for exist_ok in (False, True):  # a second run over the first one's outputs with --exist-ok
        summary = infer(str(tmp_path / "in" / "**" / "*"), model, tmp_path / "out", exist_ok=exist_ok)
        assert summary.frames_processed == 2
        lines = read_jsonl(tmp_path / "out" / "predictions.jsonl")
        assert sorted(line["image"] for line in lines) == ["a/x.jpg", "b/x.jpg"]
        assert sorted(line["annotated"] for line in lines) == ["a/x.jpg", "b/x.jpg"]
        a, b = (np.fromfile(tmp_path / "out" / s / "x.jpg", np.uint8) for s in "ab")
        assert a.size and b.size and not np.array_equal(a[:2000], b[:2000])


def test_converted_formats_never_collide_with_a_kept_name(model, tmp_path):
    """x.pgm is written as PNG; beside an x.png input, neither annotated copy replaces the other."""
    import cv2

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "x.png"), np.full((40, 40, 3), 200, np.uint8))
    cv2.imwrite(str(tmp_path / "in" / "x.pgm"), np.full((40, 40), 30, np.uint8))
    infer(tmp_path / "in", model, tmp_path / "out")
    lines = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert len({line["annotated"] for line in lines}) == 2
    assert all((tmp_path / "out" / line["annotated"]).is_file() for line in lines)


# -- hangs ----------------------------------------------------------------------------------------------------


def _loops(root: Path) -> Path:
    photos = write_photos(root / "src")
    (root / "in" / "sub").mkdir(parents=True)
    (root / "in" / "sub" / "a.jpg").write_bytes(photos["astronaut"].read_bytes())
    (root / "in" / "b.jpg").write_bytes(photos["coffee"].read_bytes())
    return root / "in"


@pytest.mark.parametrize("links", [("self",), ("self", "up")])
def test_recursive_glob_through_symlink_loops_ends_and_lists_each_image_once(tmp_path, links):
    folder = _loops(tmp_path)
    for name in links:
        (folder / "sub" / name).symlink_to("." if name == "self" else "..")
    code = ("import sys; from tedloc_edge.images import list_images; "
            "print('\\n'.join(p.as_posix() for p in list_images(sys.argv[1])))")
    try:  # a subprocess: the old lister recursed through the loops for minutes (and never returned with two)
        proc = subprocess.run([sys.executable, "-c", code, str(folder / "**" / "*.jpg")], capture_output=True,
                              text=True, timeout=60, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail("listing a folder with symlink loops did not end within 60 s")
    assert proc.returncode == 0, proc.stderr
    found = [Path(line).resolve() for line in proc.stdout.splitlines()]
    assert sorted(found) == sorted([(folder / "b.jpg").resolve(), (folder / "sub" / "a.jpg").resolve()])


def test_an_image_linked_twice_runs_once(model, tmp_path):
    folder = _loops(tmp_path)
    (folder / "sub" / "self").symlink_to(".")
    (folder / "again.jpg").symlink_to(folder / "b.jpg")
    assert infer(str(folder / "**" / "*"), model, tmp_path / "out").frames_processed == 2


@pytest.mark.parametrize("timeout", [-1.0, 0.0, math.nan, math.inf])
def test_timeout_must_be_positive_and_finite(model, tmp_path, timeout):
    raised: list[BaseException] = []

    def run() -> None:
        try:
            infer(f"http://127.0.0.1:{port}/stream", model, tmp_path / "out", timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - looked at below
            raised.append(exc)

    with silent_server() as port:  # a thread: the old code waited on this server for ever (no timeout at all)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(10)
        assert not thread.is_alive(), f"--timeout {timeout} against a silent server hung"
    assert len(raised) == 1 and isinstance(raised[0], UserError), raised
    assert re.search(r"--timeout .* must be a positive number of seconds", str(raised[0])), raised[0]
    assert not (tmp_path / "out").exists()


def test_ctrl_c_while_a_url_opens_is_an_interrupt(model, tmp_path):
    with silent_server() as port:
        proc = subprocess.Popen([sys.executable, "-m", "tedloc_edge.app.cli", "infer", f"http://127.0.0.1:{port}/x",
                                 "--model", str(model), "--out", str(tmp_path / "out"), "--timeout", "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        time.sleep(4)  # the model is loaded and av.open is waiting on the silent server
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        try:
            output = proc.communicate(timeout=15)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("Ctrl-C while a URL was opening was ignored for 15 s")
    assert time.monotonic() - sent < 5, output
    assert proc.returncode == 130, output
    assert "interrupted" in output and "no answer" not in output and "Traceback" not in output


# -- one-line errors for outputs that cannot be written, and what a late failure leaves -------------------------


def test_out_folder_that_cannot_be_written_is_one_line_error_before_any_frame(model, tmp_path):
    make_clip(tmp_path / "clip.mp4", frames=5)
    (tmp_path / "out").mkdir()
    with read_only(tmp_path / "out"):
        with pytest.raises(UserError, match=r"out: output folder is not writable"):
            infer(tmp_path / "clip.mp4", model, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_output_file_that_cannot_be_replaced_stops_the_run_before_it_starts(model, tmp_path):
    make_clip(tmp_path / "clip.mp4", frames=5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "clip.mp4").write_bytes(b"")
    with read_only(tmp_path / "out" / "clip.mp4"):
        with pytest.raises(UserError, match=r"clip.mp4: output file is not writable"):
            infer(tmp_path / "clip.mp4", model, tmp_path / "out", exist_ok=True)
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_a_late_write_failure_says_what_is_on_disk(monkeypatch, tmp_path):
    """The disk fills up as the first packet is written: the old message said 'the file holds 4 frames' of 0 bytes."""
    import errno

    from tedloc_edge.runtime import sinks

    real_open = sinks.av.open

    class FullDisk:
        def __init__(self, container) -> None:
            self.container = container

        def __getattr__(self, name: str):
            return getattr(self.container, name)

        def mux(self, packet) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sinks.av, "open", lambda *a, **k: FullDisk(real_open(*a, **k)))
    sink = sinks.VideoSink(tmp_path / "v.mp4", fps=25)
    for _ in range(12):
        sink.write(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(UserError) as caught:
        sink.close()
    message = str(caught.value)
    assert "No space left on device" in message and "nothing was written" in message
    assert "holds" not in message


@pytest.mark.parametrize("stride, kept", [(1000, 1), (7, 13), (3, 30)])
def test_a_strided_video_lasts_no_longer_than_its_source(model, tmp_path, stride, kept):
    clip = make_clip(tmp_path / "clip.mp4", frames=90, fps=30)  # 3 s
    infer(clip, model, tmp_path / "out", stride=stride)
    import av

    with av.open(str(tmp_path / "out" / "clip.mp4")) as container:
        seconds = container.duration / 1e6
    assert count_frames(tmp_path / "out" / "clip.mp4") == kept
    assert 3.0 - 3 * stride / 30 <= seconds <= 3.0 + 1e-3


def test_the_cli_exits_past_an_open_still_inside_ffmpeg(monkeypatch):
    """Ctrl-C while a URL opens leaves the open thread waiting in FFmpeg; interpreter shutdown around it ended once
    in SIGSEGV (-11) instead of 130, so the entry point exits at once when such a thread is alive."""
    import threading

    from tedloc_edge.app import cli
    from tedloc_edge.runtime import video_source

    exits: list[int] = []
    monkeypatch.setattr(cli.os, "_exit", exits.append)
    cli._exit_past_abandoned_opens(130)
    assert exits == []  # nothing abandoned: the normal exit
    release = threading.Event()
    stuck = threading.Thread(target=release.wait, daemon=True)
    stuck.start()
    monkeypatch.setattr(video_source, "_ABANDONED", {stuck})
    try:
        cli._exit_past_abandoned_opens(130)
        cli._exit_past_abandoned_opens(None)
    finally:
        release.set()
    assert exits == [130, 0]
