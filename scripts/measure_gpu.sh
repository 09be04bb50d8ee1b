#!/usr/bin/env bash
# The GPU figures of the README's GPU section, in one go, on a machine with a CUDA GPU.
# Needs torch with CUDA and transformers (scripts/constraints.txt); no ROS: the engine never
# imports rclpy, so a plain Python with those packages and this checkout will do.
#
#   bash scripts/measure_gpu.sh [OUT_DIR] [svlm-bench options for every run...]
#
# 1. the CUDA-only tests (test/engine/test_gpu_path_cuda.py; set SVLM_SKIP_CUDA_TESTS=1 to skip);
# 2. svlm-bench with Qwen2.5-VL-7B's shapes (random weights built on the GPU, bf16, 1280x720 at
#    30 Hz, 20 tokens every round):
#      shipped        1 camera, minute 1 and hour 2, the default paths (graphed decode)
#      batched_4      4 cameras decoded as one batch, hour 2
#      eager_decode   1 camera, hour 2, the eager decode (the engine before the GPU work)
#      prefill_compiled, vision_compiled   1 camera, hour 2, the compiled prefill / encoder
# 3. python -m svlm_ros.benchmarks.gpu_targets over the reports: a table to compare the runs,
#    each run's parts drawn to OUT_DIR/parts.png (when matplotlib is installed), and each
#    target met or missed, judged on shipped and batched_4 (the default paths; exit
#    status 1 if any is missed or not measured).
# Every run writes OUT_DIR/<name>.json and .txt. Options given after OUT_DIR go to every run
# and override the defaults (a dry run on the CPU:
# `bash scripts/measure_gpu.sh /tmp/dry --model-shape tiny --device cpu --warmup-seconds 2
# --measure-seconds 2`). Expect 10-20 minutes on an H100 (an estimate: never run on one yet).
# PYTHON names the interpreter (default python3).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-gpu-figures}
if [[ "$out" == -* ]]; then
    echo "usage: bash scripts/measure_gpu.sh [OUT_DIR] [svlm-bench options...]" \
        "(the folder comes first; got option '$out')" >&2
    exit 2
fi
shift || true
mkdir -p "$out" || exit 2
python=${PYTHON:-python3}
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
failed=0

# What this machine has, and whether transformers is the version the engine is tested with
# (offline GPU boxes: `pip download --no-deps transformers==<pin>` elsewhere, install the wheel).
"$python" - "$repo/scripts/constraints.txt" <<'PY' || exit 2
import sys
from pathlib import Path

import torch
import transformers

pins = dict(line.strip().split("==") for line in Path(sys.argv[1]).read_text().splitlines()
            if line.strip().startswith(("torch==", "transformers==")))
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, {gpu}",
      file=sys.stderr)
if transformers.__version__ != pins.get("transformers"):
    print(f"warning: transformers {transformers.__version__} is not the tested "
          f"{pins.get('transformers')} (scripts/constraints.txt)", file=sys.stderr)
PY

if [[ "${SVLM_SKIP_CUDA_TESTS:-0}" != 1 ]]; then
    echo "== CUDA tests" >&2
    (cd "$repo" && "$python" -m pytest -q -p no:cacheprovider test/engine/test_gpu_path_cuda.py) \
        2>&1 | tee "$out/cuda_tests.txt" || failed=1
fi

bench() {  # bench NAME [svlm-bench options]
    local name=$1
    shift
    echo "== $name" >&2
    # ${extra[@]+...}: an empty array is an unbound variable under set -u before bash 4.4.
    "$python" -m svlm_ros.engine.benchmark --model-shape qwen2.5-vl-7b --device cuda \
        "$@" ${extra[@]+"${extra[@]}"} --json "$out/$name.json" 2>&1 | tee "$out/$name.txt"
    if [[ ${PIPESTATUS[0]} != 0 ]]; then
        echo "svlm-bench run '$name' failed; see $out/$name.txt" >&2
        rm -f "$out/$name.json"  # no report that looks complete
        failed=1
    fi
}

extra=("$@")
bench shipped --cameras 1 --phases minute1,hour2
bench batched_4 --cameras 4 --batched --phases hour2
bench eager_decode --cameras 1 --phases hour2 --decode-path eager
bench prefill_compiled --cameras 1 --phases hour2 --prefill-path compiled
bench vision_compiled --cameras 1 --phases hour2 --compile-vision

judged=() compared=()
for name in shipped batched_4; do
    [[ -f "$out/$name.json" ]] && judged+=("$out/$name.json")
done
for name in eager_decode prefill_compiled vision_compiled; do
    [[ -f "$out/$name.json" ]] && compared+=("$out/$name.json")
done
if ((${#judged[@]} == 0)); then
    echo "no benchmark report of the shipped configuration was written" >&2
    exit 1
fi
echo "== targets" >&2
"$python" -m svlm_ros.benchmarks.gpu_targets "${judged[@]}" --plot "$out/parts.png" \
    --compare ${compared[@]+"${compared[@]}"} | tee "$out/targets.txt"
targets=${PIPESTATUS[0]}
((failed)) && exit 1
exit "$targets"
