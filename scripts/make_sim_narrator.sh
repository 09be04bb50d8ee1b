#!/usr/bin/env bash
# Reproduce config/sim_narrator: the stages of svlm-make-sim-narrator it was made with (its
# svlm_recipe.json lists them), each continuing the last. About 185 minutes on a 2-core CPU:
# four on the basic world (two long ones, then two on frames up to 0.1 s late, as a live
# camera's), then the stages on the world with memory events and memory questions.
#   bash scripts/make_sim_narrator.sh OUT [WORK]
# OUT is written only at the end; WORK (default: a temporary folder) keeps the stages.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: bash scripts/make_sim_narrator.sh OUT [WORK]" >&2
    exit 2
fi
out="$1"
if [ -e "$out" ]; then
    echo "make_sim_narrator.sh: $out exists; remove it first" >&2
    exit 1
fi
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/env.sh"
work="${2:-$(mktemp -d)}"
mkdir -p "$work"

stage() { python -m svlm_training.sim_narrator "$@"; }
# Stages 1-4 were made before the world had memory events; --world basic has the same kinds
# of event (each seed's timeline differs from the one they saw).
# 1: from a fresh tiny model: event seconds from quiet ones, and colours.
[ -d "$work/stage1" ] || stage "$work/stage1" --bags 96 --steps 10000 --seed 0 \
    --world basic --question-share 0
# 2: twice the bags, continuing stage 1: shapes, kinds of event and directions.
[ -d "$work/stage2" ] || stage "$work/stage2" --bags 192 --steps 10000 --seed 2 \
    --world basic --question-share 0 --init-from "$work/stage1"
# 3, 4: new worlds each, frames up to 0.1 s after the world's seconds, lower rate: a live
# camera's first frame comes anywhere in a frame interval (the demo's: one frame late), and a
# narrator that only saw frames exactly on the seconds lost two of 60 seconds to that.
[ -d "$work/stage3" ] || stage "$work/stage3" --bags 192 --first-world 193 --phase-jitter 0.1 \
    --steps 4000 --lr 1e-4 --seed 3 --world basic --question-share 0 --init-from "$work/stage2"
[ -d "$work/stage4" ] || stage "$work/stage4" --bags 192 --first-world 385 --phase-jitter 0.1 \
    --steps 4000 --lr 1e-4 --seed 4 --world basic --question-share 0 --init-from "$work/stage3"
# 5-7: the memory world, memory questions on 5 % of seconds (answered first in that second's
# text; 25 % in stage 7); stages 6 and 7 on 12 s chunks, so that more seconds have the 6 s of
# frames a still shape needs behind them.
[ -d "$work/stage5" ] || stage "$work/stage5" --bags 192 --first-world 577 --phase-jitter 0.1 \
    --steps 6000 --lr 2e-4 --seed 5 --world memory --question-share 0.05 --init-from "$work/stage4"
[ -d "$work/stage6" ] || stage "$work/stage6" --bags 192 --first-world 769 --phase-jitter 0.1 \
    --steps 7000 --lr 2e-4 --seed 6 --world memory --question-share 0.05 --chunk-seconds 12 \
    --overlap-seconds 8 --init-from "$work/stage5"
[ -d "$work/stage7" ] || stage "$work/stage7" --bags 192 --first-world 961 --phase-jitter 0.1 \
    --steps 7000 --lr 2e-4 --seed 7 --world memory --question-share 0.25 --chunk-seconds 12 \
    --overlap-seconds 8 --init-from "$work/stage6"
# 8: the same on new worlds at half the rate: fewer new shapes called "is back", more returning
# ones right, memory questions above a constant guess (docs/sim_world.md).
stage "$out" --bags 192 --first-world 1153 --phase-jitter 0.1 --steps 8000 --lr 1e-4 --seed 8 \
    --world memory --question-share 0.25 --chunk-seconds 12 --overlap-seconds 8 \
    --init-from "$work/stage7"
