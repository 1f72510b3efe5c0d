#!/bin/bash -p
# holder.sh: keeps a project's persistent Apptainer instance alive for the life of this Slurm job.
# Rendered by rxslurm.slurm.script (every value below arrives as one quoted shell word); sbatch
# options come on sbatch's command line. Progress goes to $state_dir/job-$SLURM_JOB_ID.status,
# one line, which rxd reads: "starting", "running <instance>" (with a service: "... service <port>",
# then "... service-exited <status>" if it ends for good, "... service-restarting <status>" while
# it waits to be started again; once restarted, " restarts <n> <last status>" after each of
# these), "stopping", "stopped", "error: ...".
# Its own lines ("rx-holder: ...") and Apptainer's messages go to the job's output, job-<id>.out,
# which members read with `rxctl logs`: a few lines of the holder's and the last 64 KiB at most
# of Apptainer's start messages (the instance's own output goes to Apptainer's instance logs).
# The project's service's output, if it has one, goes to job-<id>.service, capped
# (docs/services.md); `rxctl logs --service` reads it.
# Once the instance runs, the exec agent (rxslurm.agent, docs/exec.md "The agent") is started in
# it, if the container has python3: it writes job-<id>.agent (where it listens and the job's
# key, readable by this user only) and job-<id>.sessions (its open sessions, for the idle timer).
#rx:param instance
#rx:param image
#rx:param overlay
#rx:param workspace
#rx:param binds
#rx:param gpu_flag
#rx:param state_dir
#rx:param grace_s
#rx:param apptainer
#rx:param fakeroot
#rx:param home
#rx:param private_tmp
#rx:param env
#rx:param agent_path
#rx:param libmunge
#rx:param munge_socket
#rx:param service
#rx:param port
#rx:param output_cap
#rx:param restarts
set -u
instance={{instance}}
image={{image}}
overlay={{overlay}}
workspace={{workspace}}
binds={{binds}}
gpu_flag={{gpu_flag}}
state_dir={{state_dir}}
grace={{grace_s}}
apptainer={{apptainer}}
fakeroot={{fakeroot}}
home={{home}}
private_tmp={{private_tmp}}
env={{env}}
agent_path={{agent_path}}
libmunge={{libmunge}}
munge_socket={{munge_socket}}
service={{service}}
port={{port}}
output_cap={{output_cap}}
restarts={{restarts}}
# Nothing in the job's environment (a shared account's login profile, say) may change how the
# instance is built or what runs in it; `bash -p` above already ignored BASH_ENV for this script.
unset BASH_ENV ENV
for name in $(compgen -e); do [[ $name == APPTAINER* || $name == SINGULARITY* ]] && unset "$name"; done
# The project's variables (rxctl env), after the unset above: APPTAINERENV_NAME=value entries,
# NUL-ended, base64 in one word. Apptainer sets each NAME in the instance.
while IFS= read -r -d '' entry; do
  [[ $entry == APPTAINERENV_* ]] && export "$entry"
done < <(printf '%s' "$env" | base64 -d)
[[ $grace =~ ^[0-9]+$ ]] || grace=10
PATH=/usr/local/bin:/usr/bin:/bin
# Instance records and logs live with the container's state, not in $HOME (which may be small,
# shared or absent on compute nodes); exec steps set the same folder to find the instance.
export APPTAINER_CONFIGDIR="$state_dir/apptainer"
instance="$instance-$SLURM_JOB_ID"
status_file="$state_dir/job-$SLURM_JOB_ID.status"
agent_file="$state_dir/job-$SLURM_JOB_ID.agent"
sessions_file="$state_dir/job-$SLURM_JOB_ID.sessions"

report() {
  printf '%s\n' "$*" >"$status_file.tmp" && mv -f "$status_file.tmp" "$status_file"
}
started=0
stop_instance() {
  rm -f "$agent_file" "$sessions_file"
  if ((started)); then
    "$apptainer" instance stop -t "$grace" "$instance" >/dev/null 2>&1 || true
    started=0
  fi
}
say() {
  printf 'rx-holder: %s\n' "$*"
}
on_signal() {
  say "stopping $instance"
  report "stopping"
  stop_instance
  report "stopped"
  exit 0
}
trap on_signal TERM INT
# Whatever ends this script, no instance outlives the job.
trap stop_instance EXIT

# Only one job at a time may mount the overlay writable. rxd's overlay snapshot (a copy made as
# this user, runtime/overlay_snapshot.py) holds the same lock while it reads the overlay: wait for
# it rather than fail; its deadline (600 s) is shorter than this wait.
exec 9>"$state_dir/overlay.lock"
if ! flock -n 9; then
  say "waiting for the overlay's lock (a snapshot being copied, or another job)"
  if ! flock -w 900 9; then
    report "error: the overlay is in use by another job"
    say "the overlay is in use by another job"
    exit 1
  fi
fi

report "starting"
say "starting $instance from $image on ${SLURMD_NODENAME:-this node}"
args=(instance start --overlay "$overlay" -B "$workspace:/workspace")
[[ -n $binds ]] && args+=(-B "$binds")
[[ -n $gpu_flag ]] && args+=("$gpu_flag")
# How contained the container is, from rxd's [apptainer] settings (README, "Apptainer"): root
# inside mapped to this user, so package managers write into the overlay; a home of its own; its
# own /tmp and /var/tmp. Never the job's folder (this script's cwd) or host paths beyond binds.
[[ -n $fakeroot ]] && args+=("$fakeroot")
if [[ -n $home ]]; then
  mkdir -p -m 700 "${home%%:*}" && args+=(--home "$home")
fi
[[ -n $private_tmp ]] && args+=(--no-mount tmp)
args+=(--no-mount cwd)
# Counted as started before it returns: a SIGTERM during the start runs the trap only once the
# start is done, and the instance it made (daemonized, out of Slurm's reach) must be stopped.
started=1
# 9>&-: the instance must not inherit the job's lock (Apptainer locks the overlay itself).
if ! out=$("$apptainer" "${args[@]}" "$image" "$instance" 2>&1 9>&-); then
  last=$(printf '%s\n' "$out" | grep -E '^(FATAL|ERROR)' | tail -n 1)
  report "error: ${last:-apptainer instance start failed}"
  printf '%s\n' "$out" | tail -c 65536 >&2
  say "apptainer instance start failed"
  exit 1
fi
[[ -n $out ]] && printf '%s\n' "$out" | tail -c 65536

# The agent's code, libmunge and munged's folder reach it as open descriptors: nothing of the
# host is mounted into the container for it. No secret is on its command line: it draws the job's
# key itself and tells it to this script through its stdout.
run_agent() {
  local dir dirs fd lib sock paths=""
  IFS=: read -r -a dirs <<<"$agent_path"
  for dir in "${dirs[@]}"; do
    exec {fd}<"$dir" || exit 1
    paths+="${paths:+:}/proc/self/fd/$fd"
  done
  exec {lib}<"$libmunge" {sock}<"${munge_socket%/*}" || exit 1
  # Its commands get the environment an exec step gets: who, where, the job's Slurm variables
  # and devices, a fixed PATH and locale; nothing else of the job's.
  local name env=()
  for name in $(compgen -e); do
    case $name in
      HOME | USER | LOGNAME | TMPDIR | APPTAINER_CONFIGDIR | SLURM_CONF | SLURMD_NODENAME | \
        SLURM_JOB_* | SLURM_JOBID | SLURM_CLUSTER_NAME | SLURM_NODELIST | SLURM_NNODES | \
        SLURM_NODEID | SLURM_CPUS_ON_NODE | SLURM_TOPOLOGY_* | SLURM_WORKING_CLUSTER | \
        CUDA_VISIBLE_DEVICES | GPU_DEVICE_ORDINAL | ROCR_VISIBLE_DEVICES)
        env+=("$name=${!name}") ;;
    esac
  done
  exec env -i "${env[@]}" PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$apptainer" exec "instance://$instance" python3 -I -S -B -c \
    'import sys; sys.path += sys.argv.pop(1).split(":"); from rxslurm.agent.main import main; sys.exit(main(sys.argv[1:]))' \
    "$paths" --job "$SLURM_JOB_ID" --uid "$(id -u)" --libmunge "/proc/self/fd/$lib" \
    --munge-socket "/proc/self/fd/$sock/${munge_socket##*/}" 2>/dev/null
}
agent=0
if [[ -n $agent_path && -r $libmunge && -S $munge_socket ]]; then
  coproc AGENT { run_agent; }
  if read -r -t 30 -u "${AGENT[0]}" word agent_host agent_port key && [[ $word == listening ]]; then
    (umask 077 && printf '%s %s %s\n' "$agent_host" "$agent_port" "$key" >"$agent_file.tmp" &&
      mv -f "$agent_file.tmp" "$agent_file")
    agent=1
    say "exec agent listening on $agent_host:$agent_port"
  else
    say "no exec agent in this container (exec uses Slurm steps)"
  fi
fi
sessions() {
  printf -v now '%(%s)T' -1
  printf '%s %s\n' "$1" "$now" >"$sessions_file.tmp" && mv -f "$sessions_file.tmp" "$sessions_file"
}
say "$instance is running"
report "running $instance"

# The project's service (docs/services.md): its words, NUL-ended, base64 in one word, read into
# an array, so no word is ever parsed by a shell. The status line says where it listens, and that
# it ended if it does. A service that fails is started again up to $restarts times, after 5 s,
# then twice as long each time (at most 5 min).
service_pid=0
restarted=0
restart_at=0
last_code=0
[[ $port =~ ^[0-9]+$ ]] || port=0
[[ $restarts =~ ^[0-9]+$ ]] || restarts=0
[[ $output_cap =~ ^[0-9]+$ ]] && ((output_cap >= 4096)) || output_cap=8388608
service_log="$state_dir/job-$SLURM_JOB_ID.service"
# Its output (and the holder's lines about it), capped: split cuts the stream into pieces of
# $output_cap bytes, and each new piece first moves the last one to .service.1 (an older .1 goes,
# and .service.dropped says so). At most twice the cap on disk, for the job's whole life. A piece
# that cannot be written (a full disk) is read on and lost: the service never blocks or dies of it.
# The marker is made once: anything already at its name (a FIFO would block here) is left alone.
keep_piece='f=$RX_SERVICE_LOG; if [ -e "$f" ]; then if [ -e "$f.1" ] && [ ! -e "$f.dropped" ] && [ ! -L "$f.dropped" ]; then : >"$f.dropped"; fi; mv -f "$f" "$f.1"; fi; cat >"$f" || exec cat >/dev/null'
service_status() {
  local line="running $instance $1"
  ((restarted)) && line+=" restarts $restarted $last_code"
  report "$line"
}
say_service() {
  say "$*"
  # In a subshell: should the writer be gone, the broken pipe ends that, never the holder.
  (printf 'rx-holder: %s\n' "$*" >&"$service_out") 2>/dev/null
}
run_service() {
  "$apptainer" exec --pwd /workspace "instance://$instance" "${cmd[@]}" </dev/null >&"$service_out" 2>&1 9>&- {service_out}>&- &
  service_pid=$!
  service_status "service $port"
}
if [[ -n $service ]]; then
  cmd=()
  while IFS= read -r -d '' word; do cmd+=("$word"); done < <(printf '%s' "$service" | base64 -d)
  exec {service_out}> >(RX_SERVICE_LOG="$service_log" SHELL=/bin/sh exec split -a 9 -b "$output_cap" --filter="$keep_piece" - "$service_log.piece" 9>&-)
  say_service "starting the service (port $port)"
  run_service
fi

# Wait for Slurm to end the job; notice an instance that died on its own, and a service. While
# the agent runs, waiting is reading its reports.
checked=$SECONDS
while true; do
  if ((agent)); then
    if read -r -t 5 -u "${AGENT[0]}" word count; then
      [[ $word == sessions && $count =~ ^[0-9]+$ ]] && sessions "$count"
    elif (($? <= 128)); then
      agent=0
      rm -f "$agent_file"
      say "the exec agent exited"
    fi
    ((SECONDS - checked < 5)) && continue
  else
    sleep 5 &
    wait $!
  fi
  checked=$SECONDS
  if ((service_pid)) && ! kill -0 "$service_pid" 2>/dev/null; then
    wait "$service_pid"
    code=$?
    service_pid=0
    if ((code != 0 && restarted < restarts)); then
      delay=$((restarted < 6 ? 5 << restarted : 300))
      ((delay > 300)) && delay=300
      restart_at=$((SECONDS + delay))
      say_service "the service exited with status $code; restarting it in $delay s (restart $((restarted + 1)) of $restarts)"
      service_state="service-restarting $code"
    else
      ((code != 0 && restarts)) && how=" (restarted $restarted of $restarts times)" || how=""
      say_service "the service exited with status $code$how"
      # Its last words in the job's output too, where `rxctl logs` looks first.
      say "its last lines (\`rxctl logs --service\` shows more):"
      tail -n 20 "$service_log" 2>/dev/null | sed 's/^/  /'
      service_state="service-exited $code"
    fi
    last_code=$code
    service_status "$service_state"
  fi
  if ((restart_at && SECONDS >= restart_at)); then
    restart_at=0
    restarted=$((restarted + 1))
    say_service "restarting the service (restart $restarted of $restarts)"
    run_service
  fi
  if ! "$apptainer" instance list --json "$instance" 2>/dev/null | grep -q "\"$instance\""; then
    started=0
    say "the container instance exited"
    report "error: the container instance exited"
    exit 1
  fi
done
