# shellcheck shell=bash
# Source me (from any folder):  source scripts/env.sh
#
# Activates .venv, sources install/setup.bash and sets private ROS defaults:
#   RMW_IMPLEMENTATION=rmw_fastrtps_cpp  (the one middleware the venv holds)
#   ROS_DOMAIN_ID         if unset: 1 + (cksum of this checkout's absolute path) % 100, so
#                         each checkout on a machine gets its own stable domain in 1..100
#                         and never the shared default 0; two checkouts rarely collide.
#   ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST   if unset
#   ROS_HOME=<repo>/.ros  if unset (node logs; gitignored)
# Run `bash scripts/setup.sh` first.

_svlm_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ ! -x "$_svlm_repo/.venv/bin/python" ] || [ ! -f "$_svlm_repo/install/setup.bash" ]; then
    echo "svlm_ros: no .venv or install/ in $_svlm_repo; run: bash scripts/setup.sh" >&2
    unset _svlm_repo
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

# The venv and colcon setup scripts read unset variables; allow that under `set -u`.
case $- in *u*) _svlm_had_nounset=1; set +u ;; *) _svlm_had_nounset= ;; esac

# shellcheck disable=SC1091
source "$_svlm_repo/.venv/bin/activate"
# The venv is the ROS underlay: keep it on both prefix paths, before and after sourcing
# install/setup.bash (which rebuilds AMENT_PREFIX_PATH from what it finds).
_svlm_path_append AMENT_PREFIX_PATH "$VIRTUAL_ENV"
_svlm_path_append CMAKE_PREFIX_PATH "$VIRTUAL_ENV"
# shellcheck disable=SC1091
source "$_svlm_repo/install/setup.bash"
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
unset _svlm_had_nounset _svlm_repo
unset -f _svlm_path_append
