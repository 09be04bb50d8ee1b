#!/usr/bin/env bash
# The demo: a simulated camera, the narrator node with the tiny narrator trained on the
# simulated world, and the live narration printed beside the ground truth.
#
#   bash scripts/demo.sh [--seconds 60] [--seed 424242] [--out demo_output] [--question "..."]
#                        [--model DIR]
#
# It starts three processes in this checkout's private ROS domain (scripts/env.sh):
#   sim_camera        the procedural world on /svlm/camera/image_raw (30 Hz, 224x168 rgb8),
#                     its ground truth on /svlm/ground_truth;
#   narrator          /svlm/narrator with config/sim_demo.yaml and config/sim_narrator;
#   svlm-demo-monitor prints narration | truth, asks one question through /svlm/ask, records
#                     the run as an mcap bag and writes narration.gif (and .mp4) into --out.
# It judges the first --seconds narrated seconds and stops (or at Ctrl-C), nodes included.
# If config/sim_narrator is missing, it is trained first (scripts/make_sim_narrator.sh, ~185 min).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
seconds=60
seed=424242
out="$repo/demo_output"
question="What colour was the last shape that left?"
model="$repo/config/sim_narrator"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --question) question="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$seconds" in
    ''|*[!0-9.]*) echo "demo.sh: --seconds needs a number, got '$seconds'" >&2; exit 2 ;;
esac

# shellcheck disable=SC1091
source "$repo/scripts/env.sh"
if ! command -v narrator >/dev/null 2>&1; then
    echo "demo.sh: the package is not built; run: bash scripts/setup.sh" >&2
    exit 1
fi

if [ ! -f "$model/config.json" ]; then
    echo "[demo] no trained narrator in $model: training it now (one time, about 185 minutes on 2 CPU cores)"
    bash "$repo/scripts/make_sim_narrator.sh" "$model"
fi

mkdir -p "$out"
pids=()
stop_nodes() {
    for pid in "${pids[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # A node that does not stop within 10 s is killed.
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    pids=()
}
trap stop_nodes EXIT
trap 'echo; echo "[demo] interrupted"; exit 130' INT TERM

echo "[demo] world seed $seed, $seconds s; logs in $out"
# The world waits for two subscribers (the narrator and the monitor) before its first frame.
sim_camera --ros-args -r __ns:=/svlm -p seed:="$seed" -p reliable:=true \
    -p wait_for_subscribers:=2 >"$out/sim_camera.log" 2>&1 &
pids+=($!)
narrator --ros-args --params-file "$repo/config/sim_demo.yaml" -p model_path:="$model" \
    >"$out/narrator.log" 2>&1 &
pids+=($!)

status=0
svlm-demo-monitor --seconds "$seconds" --out "$out" --question "$question" \
    --ros-args -r __ns:=/svlm || status=$?
if [ "$status" -ne 0 ]; then
    echo "[demo] the monitor failed (status $status); last lines of the narrator's log:" >&2
    tail -n 20 "$out/narrator.log" >&2 || true
fi
exit "$status"
