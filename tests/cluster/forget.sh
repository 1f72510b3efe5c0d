#!/usr/bin/env bash
# Forgets what earlier, interrupted test runs left in the cluster's state, so a run starts clean:
# the test users' jobs, the per-partition associations rxd's QOS mirror gave them, and test
# daemons' QOS (named t-<tag>-...). slurmdbd keeps these across runs, and a test that compares a
# user's associations before and after would otherwise see another run's. Run by `make test`
# before pytest; never during a run (it cancels the test users' jobs). Run as root.
set -euo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

users=$(IFS=,; echo "${TEST_USERS[*]}")
jobs=$(squeue -h -u "$users" -o %i | wc -l)
if ((jobs)); then
  for user in "${TEST_USERS[@]}"; do scancel -u "$user"; done
  for _ in $(seq 60); do
    [[ -z $(squeue -h -u "$users" -t PD,R,CG,S -o %i) ]] && break
    sleep 0.5
  done
fi
assocs=$(sacctmgr -n -P show assoc where user="$users" format=account,user,partition | awk -F'|' '$3 != ""')
while IFS='|' read -r account user partition; do
  [[ -n $partition ]] || continue
  sacctmgr -i delete user name="$user" account="$account" partition="$partition" >/dev/null
done <<<"$assocs"
qos=$(sacctmgr -n -P show qos format=name | grep '^t-' || true)
for name in $qos; do
  sacctmgr -i delete qos "$name" >/dev/null
done
echo "forget.sh: cancelled $jobs test job(s), removed $(grep -c . <<<"$assocs" || true) partition association(s) and $(grep -c . <<<"$qos" || true) test QOS"
