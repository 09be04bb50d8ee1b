#!/usr/bin/env bash
# Reproduce config/sim_narrator: the two stages of svlm-make-sim-narrator it was made with
# (its svlm_recipe.json lists them). About 75 minutes on a 2-core CPU.
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
# 1: from a fresh tiny model: event seconds from quiet ones, and colours.
[ -d "$work/stage1" ] || stage "$work/stage1" --bags 96 --steps 10000 --seed 0
# 2: twice the bags, continuing stage 1: shapes, kinds of event and directions.
stage "$out" --bags 192 --steps 10000 --seed 2 --init-from "$work/stage1"
