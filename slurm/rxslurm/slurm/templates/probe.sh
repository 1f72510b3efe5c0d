#!/bin/bash
# probe.sh: a small batch script for rx-slurm's own tests. It prints its message back, the
# identity and GPUs Slurm gave it, then waits until the file wait_for exists (so the test, not
# a timer, decides when the job ends; "" means do not wait) for at most max_wait_s seconds,
# and exits with exit_code.
#rx:param message
#rx:param wait_for
#rx:param max_wait_s
#rx:param exit_code
set -u
message={{message}}
release={{wait_for}}
max_wait={{max_wait_s}}
status={{exit_code}}
# Numbers are checked before arithmetic: bash evaluates a variable's text inside $(( )).
[[ $max_wait =~ ^[0-9]+$ ]] || max_wait=60
[[ $status =~ ^[0-9]+$ ]] || status=0
printf 'message=%s\n' "$message"
printf 'user=%s uid=%s groups=%s\n' "$(id -un)" "$(id -u)" "$(id -Gn)"
printf 'job=%s\n' "${SLURM_JOB_ID:-none}"
printf 'cuda_visible_devices=%s\n' "${CUDA_VISIBLE_DEVICES:-}"
printf 'slurm_job_gpus=%s\n' "${SLURM_JOB_GPUS:-}"
deadline=$((SECONDS + max_wait))
while [[ -n $release && ! -e $release ]] && ((SECONDS < deadline)); do
  sleep 0.2
done
printf 'done\n'
exit "$status"
