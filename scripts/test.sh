#!/usr/bin/env bash
# Lint and test the built package: ruff, then pytest on test/.
# Extra arguments go to pytest, e.g.:
#   bash scripts/test.sh --run-slow          # also the slow (tiny-model end-to-end) tests
#   bash scripts/test.sh -m slow             # only the slow tests
#   bash scripts/test.sh -k narrator -x
# The ROS 2 distro (the build scripts/setup.sh made for it) comes first, else from
# $SVLM_ROS_DISTRO, else kilted:
#   bash scripts/test.sh --distro jazzy test/node test/engine
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in
    --distro) [ $# -ge 2 ] || { echo "[test] error: --distro needs a value" >&2; exit 2; }
              export SVLM_ROS_DISTRO="$2"; shift 2 ;;
    --distro=*) export SVLM_ROS_DISTRO="${1#--distro=}"; shift ;;
esac
# shellcheck disable=SC1091
source "$repo/scripts/env.sh"
cd "$repo"

# Lint failures do not hide test results: both run, and either fails the script.
echo "[test] ruff check"
lint_status=0
ruff check . || lint_status=$?

# Plain `pytest`, never `python -m pytest`: the latter puts the repo root on sys.path and
# the source svlm_ros/ (without the generated msg/srv) shadows the installed package.
echo "[test] pytest (ROS 2 ${SVLM_ROS_DISTRO:-kilted}, ROS_DOMAIN_ID=$ROS_DOMAIN_ID)"
status=0
pytest "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "[test] error: pytest collected no tests" >&2
    status=1
fi
if [ "$lint_status" -ne 0 ]; then
    echo "[test] error: ruff check failed (see above)" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
