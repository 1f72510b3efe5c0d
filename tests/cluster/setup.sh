#!/usr/bin/env bash
# Brings up the local Slurm test cluster (munge, MariaDB, slurmdbd, slurmctld, slurmd n1..n3) on this
# machine, without systemd. Safe to run again: what already runs is checked and left alone, so a
# second run takes a second or two; a stale pid file or a half-started cluster is repaired.
# Changing a template here (or /etc/slurm/rxslurm-hooks.conf) and running it again restarts the
# daemons that read it. Run as root. See README.md.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO=$(cd -- "$HERE/../.." && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

START=$EPOCHREALTIME
HOST=$(uname -n)
HOST=${HOST%%.*}
# The apt-get and Slurm commands below must not depend on the caller's environment.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
unset SLURM_CONF

((EUID == 0)) || die "run as root (it installs packages, creates users and starts daemons)"

install_missing_packages() {
  # command (or file) -> Debian package providing it
  local -A wanted=(
    [/usr/sbin/slurmctld]=slurmctld [/usr/sbin/slurmd]=slurmd [/usr/bin/sbatch]=slurm-client
    [/usr/sbin/munged]=munge [/usr/include/slurm/spank.h]=libslurm-dev
    [/usr/sbin/slurmdbd]=slurmdbd [/usr/sbin/mariadbd]=mariadb-server
    [/usr/bin/fuse2fs]=fuse2fs [/usr/bin/setfacl]=acl
    [/usr/bin/gcc]=gcc [/usr/bin/make]=make
  )
  local path
  local -a missing=()
  for path in "${!wanted[@]}"; do
    [[ -e $path ]] || missing+=("${wanted[$path]}")
  done
  if ((${#missing[@]} == 0)); then
    step "packages: all installed"
    return 0
  fi
  step "packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

check_repo_access() {
  # Test users run files from this checkout (the venv, rxctl): a clone under a
  # 0700 home directory would make every job fail in a confusing way, so fail here instead.
  if runuser -u rxalice -- test -r "$HERE/setup.sh"; then
    step "repo: $REPO is readable by the test users"
    return 0
  fi
  local dir=/ part
  local -a parts
  IFS=/ read -ra parts <<<"${REPO#/}"
  for part in "${parts[@]}"; do
    dir=${dir%/}/$part
    runuser -u rxalice -- test -x "$dir" ||
      die "$dir (mode $(stat -c %A "$dir")) is not traversable by other users, so the test users" \
        "cannot use $REPO: run 'chmod o+x $dir' or clone the repo elsewhere"
  done
  die "files in $REPO are not readable by other users (cloned with umask 077?): chmod -R o+rX $REPO"
}

# Earlier versions of this script linked a stand-in for Apptainer into /usr/local/bin, ahead of
# the real one on PATH: such links (into any checkout's tests/standin/) are removed; anything else
# there is left alone.
remove_standin_links() {
  local name link
  for name in apptainer singularity; do
    link=/usr/local/bin/$name
    if [[ -L $link && $(readlink "$link") == */tests/standin/* ]]; then
      rm -f "$link"
      step "apptainer: removed the old stand-in link $link"
    fi
  done
}

render() { # TEMPLATE DEST MODE: (re)write DEST when it differs; CHANGED collects what changed
  local tmp
  tmp=$(mktemp "$2.XXXXXX")
  sed -e "s/@HOSTNAME@/$HOST/g" -e "s/@DB_PASSWORD@/$DB_PASSWORD/g" "$HERE/$1" >"$tmp"
  chmod "$3" "$tmp"
  if cmp -s "$tmp" "$2" && [[ $(stat -c %a "$2") == "$3" ]]; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$2"
    CHANGED+=("${2##*/}")
  fi
}

readonly HOOK_WRAPPER=/usr/local/lib/rxslurm/job-event
readonly EPILOG_WRAPPER=/usr/local/lib/rxslurm/node-epilog
# install_hook_wrapper WRAPPER PROGRAM WHO: WRAPPER runs the checkout's PROGRAM when installed.
install_hook_wrapper() {
  mkdir -p "${1%/*}"
  cat >"$1.tmp" <<WRAPPER
#!/bin/sh
# rx-slurm test cluster: $3 runs this for every job; it runs the checkout's $2 when that is
# installed, and always exits 0.
hook=$REPO/.venv/bin/$2
[ -x "\$hook" ] && "\$hook" >/dev/null 2>&1
exit 0
WRAPPER
  chmod 755 "$1.tmp"
  mv -f "$1.tmp" "$1"
}

write_configs() {
  mkdir -p "$SLURM_ETC"
  # Keep the password of an earlier run: MariaDB already knows it.
  DB_PASSWORD=$(sed -n 's/^StoragePass=\([0-9a-f]*\)$/\1/p' "$SLURM_ETC/slurmdbd.conf" 2>/dev/null || true)
  [[ -n $DB_PASSWORD ]] || DB_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  CHANGED=()
  render slurm.conf.in "$SLURM_ETC/slurm.conf" 644
  render gres.conf.in "$SLURM_ETC/gres.conf" 644
  render cgroup.conf.in "$SLURM_ETC/cgroup.conf" 644
  render slurmdbd.conf.in "$SLURM_ETC/slurmdbd.conf" 600
  # slurm.conf Includes this file (Slurm 22.05 retries a missing include for 60 s, then gives
  # up): rx-slurm's controller hooks, as etc/slurm/rxslurm-hooks.conf shows a site, but through a
  # wrapper that finds this checkout's venv and is a no-op without it, so no job ever fails on it.
  install_hook_wrapper "$HOOK_WRAPPER" rxslurm-job-event slurmctld
  install_hook_wrapper "$EPILOG_WRAPPER" rxslurm-node-epilog "slurmd (as root, on the node)"
  local hooks
  hooks=$(printf '# Written by tests/cluster/setup.sh: rx-slurm hooks.\n%s\n%s\n%s\n' \
    "PrologSlurmctld=$HOOK_WRAPPER" "EpilogSlurmctld=$HOOK_WRAPPER" "Epilog=$EPILOG_WRAPPER")
  if [[ ! -e $HOOKS_CONF || $(cat "$HOOKS_CONF") != "$hooks" ]]; then
    printf '%s\n' "$hooks" >"$HOOKS_CONF"
    CHANGED+=("${HOOKS_CONF##*/}")
  fi
  step "configs: ${CHANGED[*]:-unchanged} in $SLURM_ETC"
}

# The SPANK plugin (--rx-project), built from this checkout and loaded through plugstack.conf.
# srun, sbatch, salloc and slurmstepd read plugstack.conf for each job and step, so nothing is
# restarted; `optional`: a node without the file still runs jobs that do not ask for it.
readonly SPANK_PLUGIN=/usr/local/lib/rxslurm/rx_spank.so
readonly SPANK_CONF=$SLURM_ETC/plugstack.conf.d/rxslurm.conf
install_spank_plugin() {
  local build line state=unchanged
  build=$(mktemp -d)
  if ! make -s -C "$REPO/slurm/spank" OUT="$build/rx_spank.so"; then
    rm -rf "$build"
    die "the SPANK plugin (slurm/spank) does not build"
  fi
  if ! cmp -s "$build/rx_spank.so" "$SPANK_PLUGIN"; then
    # A new file, not an overwrite: running srun and slurmstepd processes keep the old one mapped.
    install -D -m 0755 "$build/rx_spank.so" "$SPANK_PLUGIN.new"
    mv -f "$SPANK_PLUGIN.new" "$SPANK_PLUGIN"
    state=installed
  fi
  rm -rf "$build"
  [[ -e $SLURM_ETC/plugstack.conf ]] ||
    printf 'include %s/plugstack.conf.d/*.conf\n' "$SLURM_ETC" >"$SLURM_ETC/plugstack.conf"
  grep -q "plugstack.conf.d/\*.conf" "$SLURM_ETC/plugstack.conf" ||
    die "$SLURM_ETC/plugstack.conf does not include $SLURM_ETC/plugstack.conf.d/*.conf"
  line="optional $SPANK_PLUGIN rxctl=$REPO/.venv/bin/rxctl"
  if [[ ! -e $SPANK_CONF || $(cat "$SPANK_CONF") != "$line" ]]; then
    mkdir -p "${SPANK_CONF%/*}"
    printf '%s\n' "$line" >"$SPANK_CONF.tmp" && mv -f "$SPANK_CONF.tmp" "$SPANK_CONF"
    state=installed
  fi
  step "spank: $state ($line)"
}

make_fake_gpus() {
  local n dev
  for n in 0 1; do
    dev=/dev/fakegpu$n
    # NVIDIA's device numbers (195:N), with no driver behind them: ConstrainDevices denies a job
    # the GPUs it was not granted by number, so copies of /dev/null would deny /dev/null itself.
    if [[ ! -c $dev || $(stat -c '%t:%T' "$dev") != "c3:$n" ]]; then
      rm -f "$dev"
      mknod -m 0666 "$dev" c 195 "$n"
    fi
  done
  step "gpus: /dev/fakegpu0 /dev/fakegpu1 present"
}

make_dirs() {
  local n
  mkdir -p /var/spool/slurmctld /var/log/slurm /var/log/mysql "$STAMP_DIR"
  for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n"; done
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
}

# ensure LABEL CHECK START LIMIT COMM [ARG...]: if CHECK fails, (re)start the daemon and poll CHECK.
# A daemon that runs but does not answer may still be starting: it gets LIMIT seconds, then a restart.
ensure() {
  local label=$1 check=$2 start=$3 limit=$4
  shift 4
  if $check; then
    step "$label: running"
    return 0
  fi
  local deadline=$((${EPOCHREALTIME/./} + limit * 1000000))
  while [[ -n $(pids_of "$@") ]]; do
    if $check; then
      step "$label: running (was starting)"
      return 0
    fi
    if ((${EPOCHREALTIME/./} > deadline)); then
      stop_daemon "$label (not answering after ${limit}s)" "$@"
      break
    fi
    sleep 0.1
  done
  $start
  poll "$limit" "$check" || die "$label did not answer within ${limit}s; see its log"
  step "$label: started"
}

munge_ok() { timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; }
start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0600 /etc/munge/munge.key
  fi
  # --force: take over a stale socket left by a killed munged.
  runuser -u munge -- /usr/sbin/munged --force </dev/null >/dev/null 2>&1
}

mariadb_ok() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
start_mariadb() {
  [[ -d /var/lib/mysql/mysql ]] ||
    mariadb-install-db --user=mysql --skip-test-db >/dev/null
  # setsid -f: mariadbd does not daemonize itself; its stdio must not hold our caller's pipes.
  setsid -f /usr/sbin/mariadbd --user=mysql --log-error="$MARIADB_LOG" \
    --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1
}

create_database() {
  mysql --batch <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurmdbd'@'localhost';
ALTER USER 'slurmdbd'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurmdbd'@'localhost';
SQL
  step "mariadb: database slurm_acct_db and user slurmdbd ready"
}

conf_sum() { cat "$@" | sha256sum | cut -d' ' -f1; }

# restart_if_changed NAME CONFIG...: stop NAME's daemons when they run with configs other than these.
# The stamp is written once the daemons are up again (mark_started), so an interrupted run retries.
restart_if_changed() {
  local name=$1
  shift
  local want
  want=$(conf_sum "$@")
  [[ $(cat "$STAMP_DIR/$name.sum" 2>/dev/null) == "$want" ]] && return 0
  case $name in
  slurmdbd)
    [[ -n $(pids_of slurmdbd) ]] || return 0
    step "slurmdbd: config changed, restarting"
    stop_daemon slurmdbd slurmdbd
    ;;
  slurm)
    [[ -n $(pids_of slurmctld)$(pids_of slurmd) ]] || return 0
    step "slurm: config changed, restarting slurmctld and slurmd"
    local n
    for n in "${NODES[@]}"; do stop_daemon "slurmd $n" slurmd -N "$n" & done
    wait
    stop_daemon slurmctld slurmctld
    ;;
  esac
}
mark_started() { # NAME CONFIG...
  local name=$1
  shift
  conf_sum "$@" >"$STAMP_DIR/$name.sum"
}

sacctmgr_q() { timeout "$CMD_TIMEOUT" sacctmgr "$@"; }
slurmdbd_ok() { sacctmgr_q -n -P show cluster format=cluster >/dev/null 2>&1; }
start_slurmdbd() {
  mariadb_ok && create_database
  slurmdbd </dev/null >/dev/null 2>&1
}

add_associations() {
  local assocs
  assocs=$(sacctmgr_q -n -P show assoc format=cluster,account,user)
  local -a added=() missing=()
  if ! grep -q "^$CLUSTER|" <<<"$assocs"; then
    sacctmgr_q -i add cluster "$CLUSTER" >/dev/null
    added+=("cluster $CLUSTER")
  fi
  if ! grep -qx "$CLUSTER|$ACCOUNT|" <<<"$assocs"; then
    sacctmgr_q -i add account "$ACCOUNT" cluster="$CLUSTER" \
      description="rx-slurm tests" organization=rx-slurm >/dev/null
    added+=("account $ACCOUNT")
  fi
  local user
  for user in "${TEST_USERS[@]}"; do
    grep -qx "$CLUSTER|$ACCOUNT|$user" <<<"$assocs" || missing+=("$user")
  done
  if ((${#missing[@]})); then
    local names
    printf -v names '%s,' "${missing[@]}"
    sacctmgr_q -i add user "${names%,}" account="$ACCOUNT" cluster="$CLUSTER" >/dev/null
    added+=("users ${missing[*]}")
  fi
  if ((${#added[@]})); then
    local list
    printf -v list '%s, ' "${added[@]}"
    step "accounting: added ${list%, }"
  else
    step "accounting: cluster $CLUSTER, account $ACCOUNT and its users present"
  fi
}

slurmctld_ok() { timeout "$CMD_TIMEOUT" scontrol ping 2>/dev/null | grep -q ' is UP$'; }
start_slurmctld() { slurmctld </dev/null >/dev/null 2>&1; }

# A compute node has no rxd: each slurmd (and so every job and step it starts) runs in a mount
# namespace of its own in which rxd's socket and ledger folders are empty tmpfs mounts. These are a
# service host's defaults and where every test rxd keeps its sockets and ledger (PRIVATE_ROOT in
# tests/support/daemon.py: the same literal). Everything else is the host's: shared storage
# (workspaces, container state, images), /etc/slurm and munged's socket, and, with slave
# propagation, mounts made on the host later. So a job reaches rxd only through its network door,
# as on a real cluster. `unshare` without --fork: slurmd itself is the namespace's first process.
# A service host's folders are hidden where they exist (one made later makes the next run of this
# script restart the slurmds); the tests' is made here.
readonly TEST_RXD_FOLDERS=/run/rxslurm-tests
readonly NODE_HIDDEN=(/run/rxslurm /var/lib/rxslurm "$TEST_RXD_FOLDERS")
readonly HIDDEN_SOURCE=rxslurm-hidden # the tmpfs mounts' source name, as mountinfo shows it

start_slurmd() { # NODE
  # shellcheck disable=SC2016  # expanded by the inner shell
  unshare --mount --propagation slave -- /bin/sh -c '
    node=$1 source=$2
    shift 2
    for dir; do
      mount -t tmpfs -o mode=0755,size=1m "$source" "$dir" || exit 1
    done
    exec slurmd -N "$node"' sh "$1" "$HIDDEN_SOURCE" "${HIDE[@]}" </dev/null >/dev/null 2>&1
}

# node_hides_rxd PID: the process runs in a mount namespace other than ours in which every
# folder to hide is one of our tmpfs mounts.
node_hides_rxd() {
  local pid=$1 dir
  [[ $(readlink "/proc/$pid/ns/mnt") != "$(readlink /proc/self/ns/mnt)" ]] || return 1
  for dir in "${HIDE[@]}"; do
    # mountinfo: ID PARENT DEV ROOT MOUNTPOINT OPTIONS [TAGS...] - FSTYPE SOURCE SUPEROPTIONS
    awk -v dir="$dir" -v tail=" - tmpfs $HIDDEN_SOURCE " \
      '$5 == dir && index($0, tail) { found = 1 } END { exit !found }' "/proc/$pid/mountinfo" ||
      return 1
  done
}

node_back() { # NODE SINCE: its slurmd registered at or after SINCE (ISO time) and takes jobs
  local info started state
  info=$(timeout "$CMD_TIMEOUT" scontrol -o show node "$1") || return 1
  started=$(grep -o 'SlurmdStartTime=[^ ]*' <<<"$info") || return 1
  [[ ! ${started#*=} < $2 ]] || return 1
  state=$(timeout "$CMD_TIMEOUT" sinfo -h -N -n "$1" -p cpu -o '%t') || return 1
  [[ $state == idle || $state == mix || $state == alloc ]]
}

start_slurmds() {
  local n dir since
  local -a pids
  local -a started=() moved=()
  install -d -m 0755 "$TEST_RXD_FOLDERS"
  HIDE=()
  for dir in "${NODE_HIDDEN[@]}"; do
    [[ -d $dir ]] && HIDE+=("$dir")
  done
  for n in "${NODES[@]}"; do
    mapfile -t pids < <(pids_of slurmd -N "$n")
    if ((${#pids[@]} == 0)); then
      start_slurmd "$n"
      started+=("$n")
    elif ! node_hides_rxd "${pids[0]}"; then
      # A slurmd from before nodes hid rxd: restarted one node at a time, each back up before
      # the next goes (running steps live on under their slurmstepd; others share the cluster).
      since=$(date +%Y-%m-%dT%H:%M:%S)
      stop_daemon "slurmd $n (into its own mount namespace)" slurmd -N "$n"
      start_slurmd "$n"
      poll 60 node_back "$n" "$since" || die "node $n not up within 60s after its slurmd restarted"
      moved+=("$n")
    fi
  done
  if ((${#started[@]} + ${#moved[@]})); then
    step "slurmd: started ${started[*]:-none}, restarted hiding rxd ${moved[*]:-none}"
  else
    step "slurmd: ${NODES[*]} running, each hiding rxd's folders"
  fi
}

# Ready: every node responds and can take jobs. A responding node that is down or drained (an admin
# or an earlier failure left it so) is resumed, since ReturnToService does not undo that.
nodes_ready() {
  local out node state ready=0
  out=$(timeout "$CMD_TIMEOUT" sinfo -h -N -p cpu -o '%N %t') || return 1
  while read -r node state; do
    case $state in
    idle | mix | alloc | comp) ready=$((ready + 1)) ;;
    down | drain | drng | fail)
      timeout "$CMD_TIMEOUT" scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
      ;;
    esac
  done <<<"$out"
  ((ready == ${#NODES[@]}))
}

install_missing_packages
bash "$HERE/users.sh"
step "users: test users present"
check_repo_access
remove_standin_links
bash "$HERE/apptainer.sh"
step "runtime: $(apptainer --version)" # the real binary's own words, for the CI log
bash "$HERE/images.sh"
bash "$HERE/registry.sh" # the pull account and a loopback OCI registry for the pull tests
make_dirs
write_configs
make_fake_gpus
install_spank_plugin

readonly SLURM_CONFS=("$SLURM_ETC/slurm.conf" "$SLURM_ETC/gres.conf" "$SLURM_ETC/cgroup.conf" "$HOOKS_CONF")
ensure munge munge_ok start_munge 30 munged
ensure mariadb mariadb_ok start_mariadb 60 mariadbd
restart_if_changed slurmdbd "$SLURM_ETC/slurmdbd.conf"
ensure slurmdbd slurmdbd_ok start_slurmdbd 60 slurmdbd
mark_started slurmdbd "$SLURM_ETC/slurmdbd.conf"
add_associations
restart_if_changed slurm "${SLURM_CONFS[@]}"
ensure slurmctld slurmctld_ok start_slurmctld 60 slurmctld
start_slurmds
poll 60 nodes_ready ||
  die "nodes not idle after 60s: $(sinfo -h -N -p cpu -o '%N=%T(%E)' | tr '\n' ' ')"
mark_started slurm "${SLURM_CONFS[@]}"
step "nodes: $(sinfo -h -N -p cpu -o '%N=%t' | paste -sd' ')"
step "cluster $CLUSTER up in $(elapsed_since "$START")"
