#!/usr/bin/env bash
# The README's demo: rxd on the local test cluster, and a researcher's whole story with rxctl.
# Run as root after tests/cluster/setup.sh (`make demo` does both), which installs the real Apptainer
# and builds the image. Safe to run again.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=$repo/.venv
conf_dir=/etc/rxslurm
config=$conf_dir/rxd.toml
run_dir=/run/rxslurm
log=/var/log/rxslurm/rxd.log
user=rxalice
project=demo
# Built by tests/cluster/images.sh (setup.sh runs it): Debian minbase with python3 and pip.
image=/var/cache/rxslurm/images/rx-base.sif

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

say "A project with one GPU, on an image built locally from Debian packages (tests/cluster/images.sh)"
if quietly_as_user rxctl project show --project "$project" >/dev/null 2>&1; then
  quietly_as_user rxctl disable --project "$project" >/dev/null 2>&1 || true
  quietly_as_user rxctl project delete --project "$project" --yes
fi
as_user rxctl project create "$project" --gpus 1 --partition gpu --image "$image"
workspace=$(quietly_as_user rxctl project show --project "$project" --json |
  "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["workspace"])')

say "Enable: overlay, image, first Slurm job (the real Apptainer: $(apptainer --version))"
as_user rxctl enable --project "$project"
as_user rxctl exec --project "$project" -- sh -c 'echo "hello from the container on $SLURMD_NODENAME, root inside: $(id -un) (mapped to '"$user"' outside)"; echo "GPUs: CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"'

say "Install a package with the container's own apt-get (a local .deb, no network)"
# The researcher builds it in the project's workspace, as themself.
pkg=$workspace/rx-demo-pkg
quietly_as_user mkdir -p "$pkg/DEBIAN" "$pkg/usr/local/bin"
# The workspace's default ACL makes new folders 0770; dpkg-deb wants a 0755 control folder.
quietly_as_user chmod 755 "$pkg/DEBIAN"
printf 'Package: rx-demo\nVersion: 1.0\nArchitecture: all\nMaintainer: rx-slurm demo <demo@localhost>\nDescription: rx-slurm demo tool\n' |
  quietly_as_user tee "$pkg/DEBIAN/control" >/dev/null
printf '#!/bin/sh\necho "rx-demo 1.0, installed with apt-get into the overlay"\n' |
  quietly_as_user tee "$pkg/usr/local/bin/rx-demo" >/dev/null
quietly_as_user chmod 755 "$pkg/usr/local/bin/rx-demo"
quietly_as_user dpkg-deb --root-owner-group --build "$pkg" "$workspace/rx-demo_1.0_all.deb" >/dev/null
as_user rxctl exec --project "$project" -- apt-get install -y /workspace/rx-demo_1.0_all.deb
as_user rxctl exec --project "$project" -- sh -c 'echo "results" > /workspace/results.txt'
echo "on the host, the workspace file belongs to the runtime user:"
ls -l "$workspace/results.txt"
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
as_user rxctl exec --project "$project" -- sh -c 'rx-demo; dpkg-query -W -f "dpkg: \${Package} \${Version} \${Status}\n" rx-demo; cat /workspace/results.txt'
if [[ ! -e /usr/local/bin/rx-demo ]]; then
  echo "(the node has no /usr/local/bin/rx-demo: the package lives in the container's overlay)"
fi

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
