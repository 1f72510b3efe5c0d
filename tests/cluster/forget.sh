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
# A daemon on the default socket (`make demo` leaves one running) is asked to put the test users'
# containers to sleep first: cancelling their jobs behind its back would leave them in error.
rxctl=$HERE/../../.venv/bin/rxctl
stopped=0
if [[ -x $rxctl ]] && "$rxctl" whoami >/dev/null 2>&1; then
  for user in "${TEST_USERS[@]}"; do
    awake=$(runuser -u "$user" -- "$rxctl" list --noheader --format project,state 2>/dev/null |
      awk '$2 != "stopped" && $2 != "disabled" && $2 != "error" {print $1}' || true)
    for project in $awake; do
      runuser -u "$user" -- "$rxctl" stop --project "$project" >/dev/null 2>&1 && stopped=$((stopped + 1))
    done
  done
fi
# Their jobs end within the daemon's stop grace; what is still there after that is cancelled.
for _ in $(seq $((stopped ? 120 : 0))); do
  [[ -z $(squeue -h -u "$users" -o %i) ]] && break
  sleep 0.5
done
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
echo "forget.sh: put $stopped container(s) of a running rxd to sleep, cancelled $jobs test job(s), removed $(grep -c . <<<"$assocs" || true) partition association(s) and $(grep -c . <<<"$qos" || true) test QOS"
