#!/usr/bin/env bash
# Stops the local Slurm test cluster's daemons (slurmd n1..n3, slurmctld, slurmdbd, MariaDB, munged)
# that setup.sh started. Cancels no job and deletes no state: setup.sh brings the same cluster back.
# Running it when nothing runs changes nothing. Run as root.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

((EUID == 0)) || die "run as root"
START=$EPOCHREALTIME

# In parallel: a busy slurmd can take several seconds to finish its threads.
for node in "${NODES[@]}"; do
  stop_daemon "slurmd $node" slurmd -N "$node" &
done
wait
stop_daemon slurmctld slurmctld
stop_daemon slurmdbd slurmdbd
stop_daemon mariadb mariadbd
stop_daemon munged munged
# The daemons are gone, so no config is "in use" any more.
rm -rf "$STAMP_DIR"
step "cluster $CLUSTER stopped in $(elapsed_since "$START")"
