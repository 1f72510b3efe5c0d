#!/usr/bin/env bash
# Run a command (make unit's pytest) as an unprivileged user when started as root, so that a test
# which needs root fails in the unit tier instead of passing there by accident. HOME, TMPDIR and
# every cache (bytecode, Hypothesis) go to a fresh folder of that user's, removed afterwards;
# the checkout itself is only read. Started by anyone else, the command runs as they are.
set -euo pipefail
export RXSLURM_TEST_TIER=unit
if [[ $(id -u) -ne 0 ]]; then
  exec "$@"
fi
user=${RXSLURM_UNIT_USER:-nobody}
group=$(id -gn "$user")
scratch=$(mktemp -d /tmp/rxslurm-unit.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
chown "$user:$group" "$scratch"
setpriv --reuid="$user" --regid="$group" --clear-groups -- \
  env -i PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 HOME="$scratch" TMPDIR="$scratch" \
  PYTHONPYCACHEPREFIX="$scratch/pycache" HYPOTHESIS_STORAGE_DIRECTORY="$scratch/hypothesis" \
  RXSLURM_TEST_TIER=unit ${CI:+CI="$CI"} "$@"
