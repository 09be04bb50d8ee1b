# shellcheck shell=bash
# Source me (from any folder):  source scripts/env.sh
#                 ROS 2 Jazzy:  SVLM_ROS_DISTRO=jazzy source scripts/env.sh
#
# SVLM_ROS_DISTRO picks the build that scripts/setup.sh made (default kilted):
#   kilted  .venv/ and install/          jazzy  .venv-jazzy/ and install-jazzy/
# `export SVLM_ROS_DISTRO=jazzy` first keeps the whole shell on Jazzy (scripts/setup.sh and
# scripts/test.sh read it too). Switching distro in one shell: this checkout's other venv
# and install folder are taken off the paths first (a fresh shell is still the cleanest).
#
# Activates the venv, sources its install/setup.bash and sets private ROS defaults:
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp  (the one middleware the venv holds)
#   ROS_DOMAIN_ID         if unset: 1 + (cksum of this checkout's absolute path) % 100, so
#                         each checkout on a machine gets its own stable domain in 1..100
#                         and never the shared default 0; two checkouts rarely collide.
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   if unset
#   ROS_HOME=<repo>/.ros  if unset (node logs; gitignored)
# Run `bash scripts/setup.sh [--distro jazzy]` first.

_svlm_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

case "${SVLM_ROS_DISTRO:-kilted}" in
    kilted) _svlm_suffix="" ;;
    jazzy) _svlm_suffix="-jazzy" ;;
    *)
        echo "svlm_ros: unknown SVLM_ROS_DISTRO '$SVLM_ROS_DISTRO' (kilted or jazzy)" >&2
        unset _svlm_repo
        return 1
        ;;
esac
_svlm_venv="$_svlm_repo/.venv$_svlm_suffix"
_svlm_install="$_svlm_repo/install$_svlm_suffix"

if [ ! -x "$_svlm_venv/bin/python" ] || [ ! -f "$_svlm_install/setup.bash" ]; then
    echo "svlm_ros: no ${_svlm_venv##*/} or ${_svlm_install##*/}/ in $_svlm_repo; run:" \
        "bash scripts/setup.sh --distro ${SVLM_ROS_DISTRO:-kilted}" >&2
    unset _svlm_repo _svlm_suffix _svlm_venv _svlm_install
    return 1
fi

# Appends $2 to the colon-separated variable named $1 unless it is already there.
_svlm_path_append() {
    local current="${!1:-}"
    case ":$current:" in
        *":$2:"*) ;;
        *) export "$1=${current:+$current:}$2" ;;
    esac
}

# Removes from the colon-separated variable named $1 every entry equal to $2 or under $2/.
_svlm_path_remove() {
    local current="${!1:-}" kept="" part
    local IFS=:
    for part in $current; do
        case "$part" in "$2"|"$2"/*|"") ;; *) kept="${kept:+$kept:}$part" ;; esac
    done
    if [ -n "$kept" ]; then export "$1=$kept"; else unset "$1"; fi
}

# The venv and colcon setup scripts read unset variables; allow that under `set -u`.
case $- in *u*) _svlm_had_nounset=1; set +u ;; *) _svlm_had_nounset= ;; esac

# Another distro of this checkout sourced before (in this shell or the one that started
# this script): take its venv and install folder off every path, so nothing of it loads.
for _svlm_other in "$_svlm_repo/.venv" "$_svlm_repo/install" \
        "$_svlm_repo/.venv-jazzy" "$_svlm_repo/install-jazzy"; do
    [ "$_svlm_other" = "$_svlm_venv" ] || [ "$_svlm_other" = "$_svlm_install" ] && continue
    case ":${AMENT_PREFIX_PATH:-}:${PATH:-}:${LD_LIBRARY_PATH:-}:${PYTHONPATH:-}:" in
        *":$_svlm_other"[:/]*) ;;
        *) continue ;;
    esac
    if [ "${VIRTUAL_ENV:-}" = "$_svlm_other" ] && declare -F deactivate >/dev/null; then
        deactivate
    fi
    for _svlm_var in AMENT_PREFIX_PATH CMAKE_PREFIX_PATH COLCON_PREFIX_PATH PATH \
            LD_LIBRARY_PATH PYTHONPATH PKG_CONFIG_PATH; do
        _svlm_path_remove "$_svlm_var" "$_svlm_other"
    done
    # The ROS wheels' bootstrapper sets LD_LIBRARY_PATH once per process tree.
    unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
done
unset _svlm_other _svlm_var

# shellcheck disable=SC1091
source "$_svlm_venv/bin/activate"
# The venv is the ROS underlay: keep it on both prefix paths, before and after sourcing
# install/setup.bash (which rebuilds AMENT_PREFIX_PATH from what it finds).
_svlm_path_append AMENT_PREFIX_PATH "$VIRTUAL_ENV"
_svlm_path_append CMAKE_PREFIX_PATH "$VIRTUAL_ENV"
# shellcheck disable=SC1091
source "$_svlm_install/setup.bash"
_svlm_path_append AMENT_PREFIX_PATH "$VIRTUAL_ENV"
_svlm_path_append CMAKE_PREFIX_PATH "$VIRTUAL_ENV"

export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
if [ -z "${ROS_DOMAIN_ID:-}" ]; then
    ROS_DOMAIN_ID=$(( 1 + $(printf '%s' "$_svlm_repo" | cksum | cut -d' ' -f1) % 100 ))
    export ROS_DOMAIN_ID
fi
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_HOME="${ROS_HOME:-$_svlm_repo/.ros}"

[ -n "$_svlm_had_nounset" ] && set -u
unset _svlm_had_nounset _svlm_repo _svlm_suffix _svlm_venv _svlm_install
unset -f _svlm_path_append _svlm_path_remove
