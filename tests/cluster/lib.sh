# shellcheck shell=bash disable=SC2034  # (the constants are used by the scripts that source this)
# Shared by setup.sh and teardown.sh (sourced, not run). Bash 5.
# Daemons are found by their /proc comm and arguments, not by pid files: a pid file may be stale
# (left by a killed daemon) or missing (removed while the daemon ran), the process table is not.

readonly CLUSTER=rxcluster
readonly ACCOUNT=rxtest
readonly NODES=(n1 n2 n3)
readonly TEST_USERS=(rxalice rxbob rxcarol rxdave rxop rxsvc)
readonly SLURM_ETC=/etc/slurm
readonly HOOKS_CONF=$SLURM_ETC/rxslurm-hooks.conf
# Checksums of the configs the running daemons were started with; see restart_if_changed.
readonly STAMP_DIR=/run/rxslurm-test-cluster
readonly MARIADB_LOG=/var/log/mysql/rxslurm-mariadbd.log
# A Slurm command must never hang this script: a controller that does not answer is "down".
readonly CMD_TIMEOUT=15
# What the harness builds or downloads once and keeps between runs (Apptainer, images).
readonly RX_CACHE=/var/cache/rxslurm

PROG=${0##*/}

step() { printf '%s: %s\n' "$PROG" "$*"; }

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

# pids_of COMM [ARG...]: pids of live (not zombie) processes named COMM whose argv contains
# ARG... as consecutive words. A killed daemon stays a zombie until init reaps it.
pids_of() {
  local comm=$1 want=" ${*:2} " dir stat name state
  local -a argv
  for dir in /proc/[0-9]*; do
    # The process may exit between the glob and the read.
    read -r stat 2>/dev/null <"$dir/stat" || continue
    name=${stat#*\(}
    name=${name%\)*}
    [[ $name == "$comm" ]] || continue
    state=${stat##*\) }
    [[ ${state%% *} != Z ]] || continue
    if (($# > 1)); then
      mapfile -d '' argv 2>/dev/null <"$dir/cmdline" || continue
      [[ " ${argv[*]} " == *"$want"* ]] || continue
    fi
    printf '%s\n' "${dir#/proc/}"
  done
}

# poll SECONDS COMMAND...: run COMMAND until it succeeds; return 1 if it has not after SECONDS.
poll() {
  local deadline=$((${EPOCHREALTIME/./} + $1 * 1000000))
  shift
  until "$@" >/dev/null 2>&1; do
    ((${EPOCHREALTIME/./} < deadline)) || return 1
    sleep 0.1
  done
}

# stop_daemon LABEL COMM [ARG...]: SIGTERM the matching processes, wait for them, SIGKILL leftovers.
stop_daemon() {
  local label=$1
  shift
  local -a pids
  mapfile -t pids < <(pids_of "$@")
  if ((${#pids[@]} == 0)); then
    step "$label: not running"
    return 0
  fi
  kill -TERM "${pids[@]}" 2>/dev/null || true
  local deadline=$((${EPOCHREALTIME/./} + 30 * 1000000))
  while [[ -n $(pids_of "$@") ]]; do
    if ((${EPOCHREALTIME/./} > deadline)); then
      kill -KILL "${pids[@]}" 2>/dev/null || true
      step "$label: killed (pid ${pids[*]}) after 30s"
      return 0
    fi
    sleep 0.1
  done
  step "$label: stopped (pid ${pids[*]})"
}

elapsed_since() { # START (an $EPOCHREALTIME value)
  local now=${EPOCHREALTIME/./} start=${1/./}
  printf '%d.%02ds' $(((now - start) / 1000000)) $(((now - start) % 1000000 / 10000))
}

# The URI of this machine's own Debian archive (deb822 sources first, then sources.list), so that
# nothing committed names a host and the machine's mirror or proxy is used.
debian_uri() {
  local codename file uri
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  for file in /etc/apt/sources.list.d/*.sources; do
    [[ -f $file ]] || continue
    # The stanza whose Suites list the release itself (not -security or -updates).
    uri=$(awk -v want="$codename" '
      /^[[:space:]]*$/ { if (uris != "" && hit) exit; uris = ""; hit = 0; next }
      tolower($1) == "uris:" { uris = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
      END { if (uris != "" && hit) print uris }' "$file")
    [[ -n $uri ]] && break
  done
  if [[ -z $uri ]]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v want="$codename" '$1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i + 1) == want) { print $i; exit } }')
  fi
  [[ -n $uri ]] || die "no Debian source for '$codename' in /etc/apt"
  printf '%s\n' "$uri"
}
