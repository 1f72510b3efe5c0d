#!/bin/bash -p
# oneshot.sh: runs one command once in a project's image (`rxctl run-once`), then the job ends.
# Rendered by rxslurm.slurm.script: every value below arrives as one quoted shell word, and the
# command as a list of quoted words, never a shell line. The command's stdout and stderr are the
# job's output (job-<id>.out in the container's folder), which rxd reads as this user and streams
# to the caller; the job's exit code is the command's. No instance is started: `apptainer exec`
# ends with the command, and Slurm's cgroup ends whatever it left running.
#rx:param image
#rx:param overlay
#rx:param workspace
#rx:param binds
#rx:param gpu_flag
#rx:param apptainer
#rx:words command
set -u
image={{image}}
overlay={{overlay}}
workspace={{workspace}}
binds={{binds}}
gpu_flag={{gpu_flag}}
apptainer={{apptainer}}
command=({{command}})
# Nothing in the job's environment may change how the container is built or what runs in it.
unset BASH_ENV ENV
for name in $(compgen -e); do [[ $name == APPTAINER* || $name == SINGULARITY* ]] && unset "$name"; done
PATH=/usr/local/bin:/usr/bin:/bin
# Apptainer's records of this run stay out of $HOME (small, shared or absent on compute nodes).
APPTAINER_CONFIGDIR=$(mktemp -d "${TMPDIR:-/tmp}/rx-oneshot.XXXXXX") || exit 125
export APPTAINER_CONFIGDIR
trap 'rm -rf "$APPTAINER_CONFIGDIR"' EXIT

# The newest overlay snapshot read-only (none: the bare image), as a member's batch step runs.
args=(--quiet exec --no-mount cwd --pwd /workspace -B "$workspace:/workspace")
[[ -n $overlay ]] && args+=(--overlay "$overlay:ro")
[[ -n $binds ]] && args+=(-B "$binds")
[[ -n $gpu_flag ]] && args+=("$gpu_flag")
"$apptainer" "${args[@]}" "$image" "${command[@]}" </dev/null
exit $?
