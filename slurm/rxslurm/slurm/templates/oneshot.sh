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
#rx:param home
#rx:param private_tmp
#rx:words command
set -u
image={{image}}
overlay={{overlay}}
workspace={{workspace}}
binds={{binds}}
gpu_flag={{gpu_flag}}
apptainer={{apptainer}}
home={{home}}
private_tmp={{private_tmp}}
command=({{command}})
# Nothing in the job's environment may change how the container is built or what runs in it.
unset BASH_ENV ENV
for name in $(compgen -e); do [[ $name == APPTAINER* || $name == SINGULARITY* ]] && unset "$name"; done
PATH=/usr/local/bin:/usr/bin:/bin
# This run's own folder on the node, removed when it ends: Apptainer's records (kept out of
# $HOME, which may be small, shared or absent on compute nodes) and the container's /tmp.
work=$(mktemp -d "${TMPDIR:-/tmp}/rx-oneshot.XXXXXX") || exit 125
trap 'rm -rf "$work"' EXIT
mkdir -m 700 "$work/apptainer" "$work/tmp" || exit 125
export APPTAINER_CONFIGDIR="$work/apptainer"

# The newest overlay snapshot read-only (none: the bare image), as a member's batch step runs.
args=(--quiet exec --no-mount cwd --pwd /workspace -B "$workspace:/workspace")
[[ -n $overlay ]] && args+=(--overlay "$overlay:ro")
[[ -n $binds ]] && args+=(-B "$binds")
[[ -n $gpu_flag ]] && args+=("$gpu_flag")
# A home and a /tmp of its own when the container's instance gets them ([apptainer] settings).
if [[ -n $home ]]; then
  mkdir -p -m 700 "${home%%:*}" && args+=(--home "$home")
fi
# Its own /tmp and /var/tmp, not the node's: the snapshot is read-only, so not the overlay's.
[[ -n $private_tmp ]] && args+=(-B "$work/tmp:/tmp" -B "$work/tmp:/var/tmp")
"$apptainer" "${args[@]}" "$image" "${command[@]}" </dev/null
exit $?
