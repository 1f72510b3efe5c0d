#!/usr/bin/env bash
# The README's demo: rxd on the local test cluster, and a researcher's whole story with rxctl.
# Run as root after tests/cluster/setup.sh (`make demo` does both). Safe to run again.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$repo/.venv
conf_dir=/etc/rxslurm
config=$conf_dir/rxd.toml
run_dir=/run/rxslurm
log=/var/log/rxslurm/rxd.log
user=rxalice
project=demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
quietly_as_user() {
  runuser -u "$user" -- env PATH="$venv/bin:/usr/local/bin:/usr/bin:/bin" HOME="/home/$user" "$@"
}
# The command as it would be typed: arguments with spaces or shell characters single-quoted, so a
# line can be pasted back into a shell.
shell_words() {
  local words=() arg
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      words+=("$arg")
    else
      words+=("'${arg//\'/\'\\\'\'}'")
    fi
  done
  printf '%s' "${words[*]}"
}
as_user() {
  printf '%s$ %s\n' "$user" "$(shell_words "$@")"
  quietly_as_user "$@"
}

say "rxd: config $config, socket $run_dir/rxd.sock, log $log"
mkdir -p "$conf_dir" /var/log/rxslurm "$run_dir"
chmod 755 "$run_dir"
if [[ ! -e $config ]]; then
  cat >"$config" <<'EOF'
# Written by rx-slurm's demo (tests/cluster/demo.sh); see etc/rxd.toml for every setting.
[identity]
mode = "local"

[containers]
reconcile_interval = 2.0
stop_grace_s = 5
EOF
fi
"$venv/bin/rxd" migrate --config "$config"
if ! "$venv/bin/rxctl" whoami >/dev/null 2>&1; then
  nohup "$venv/bin/rxd" serve --config "$config" >>"$log" 2>&1 &
  echo $! >"$run_dir/rxd.pid"
  for _ in $(seq 1 100); do
    "$venv/bin/rxctl" whoami >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
"$venv/bin/rxctl" doctor

say "A researcher is bound automatically (identity mode \"local\")"
as_user rxctl whoami

say "A project with one GPU"
if quietly_as_user rxctl project show "$project" >/dev/null 2>&1; then
  quietly_as_user rxctl disable --project "$project" >/dev/null 2>&1 || true
  quietly_as_user rxctl project delete "$project" --yes
fi
as_user rxctl project create "$project" --gpus 1 --partition gpu --image docker://python:3.12-slim

say "Enable: overlay, image, first Slurm job"
as_user rxctl enable --project "$project"
as_user rxctl exec --project "$project" -- sh -c 'echo "hello from the container on $SLURMD_NODENAME as $(id -un)"; echo "GPUs: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'
as_user rxctl exec --project "$project" -- sh -c 'mkdir -p /opt/demo && date > /opt/demo/installed && echo "installed into the overlay: /opt/demo/installed"'
as_user rxctl exec --project "$project" -- sh -c 'echo "results" > /workspace/results.txt && ls -l /workspace'
squeue -o '%.8i %.12j %.8u %.10T %.6D %N %b' --name "rx-$project"

say "Stop: the job ends, the overlay and workspace stay"
as_user rxctl stop --project "$project"
for _ in $(seq 1 100); do
  state=$(quietly_as_user rxctl status --project "$project" --json | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  [[ $state == stopped ]] && break
  sleep 0.3
done
as_user rxctl status --project "$project"

say "Exec again: the container wakes (a new job), and what was installed is still there"
as_user rxctl exec --project "$project" -- cat /opt/demo/installed /workspace/results.txt

say "Status"
as_user rxctl status --project "$project"
as_user rxctl list
# rxctl on every user's PATH, as the README's examples call it; a link of ours or of another
# checkout's venv is re-pointed, anything else is left alone.
link=/usr/local/bin/rxctl
if [[ ! -e $link && ! -L $link ]] || [[ $(readlink "$link") == */.venv/bin/rxctl ]]; then
  ln -sfn "$venv/bin/rxctl" "$link"
fi
echo
echo "rxd keeps running (pid $(cat "$run_dir/rxd.pid" 2>/dev/null || echo '?'), log $log);"
echo "rxctl is $(command -v rxctl || echo "$venv/bin/rxctl"). Try:"
echo "  runuser -u $user -- rxctl shell --project $project"
echo "Tear it all down: see README.md, \"Try it: two commands\"."
