#!/usr/bin/env bash
# What the pull tests need, never the internet: the pull account rxd pulls as (rxpull, a system
# account), and a local OCI registry (Debian's docker-registry) listening on 127.0.0.1 only, with
# small images built here from Debian packages (busybox-static, packed by umoci, pushed by skopeo):
#   rxslurm/busybox:1   a busybox tree (about 1 MB compressed)
#   rxslurm/big:1       the same plus a 24 MiB layer of random bytes (for the size cap)
# Safe to run again: a running registry and images already pushed are left alone. Run as root.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C

readonly REGISTRY=127.0.0.1:5055
readonly REGISTRY_HOME=/var/lib/rxslurm-test-registry
readonly REGISTRY_CONF=$REGISTRY_HOME/config.yml
readonly REGISTRY_LOG=/var/log/rxslurm-test-registry.log
readonly PULL_USER=rxpull

((EUID == 0)) || die "run as root (it installs packages, creates an account and starts a daemon)"

install_packages() {
  local -A wanted=(
    [/usr/bin/docker-registry]=docker-registry [/usr/bin/skopeo]=skopeo [/usr/bin/umoci]=umoci
    [/bin/busybox]=busybox-static [/usr/bin/prlimit]=util-linux [/usr/bin/curl]=curl
  )
  local path
  local -a missing=()
  for path in "${!wanted[@]}"; do
    [[ -e $path ]] || missing+=("${wanted[$path]}")
  done
  ((${#missing[@]} == 0)) && return 0
  step "packages: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The package's own service (all interfaces, port 5000) is not wanted: policy-rc.d keeps
  # maintainer scripts from starting it on machines that have an init system.
  local policy=/usr/sbin/policy-rc.d ours=""
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    ours=1
  fi
  local rc=0
  apt-get install -y -qq "${missing[@]}" >/dev/null || rc=$?
  [[ -z $ours ]] || rm -f "$policy"
  ((rc == 0)) || die "cannot install ${missing[*]}"
}

ensure_pull_account() {
  # A system account (uid below 1000): rxd refuses to pull as anyone a researcher could be.
  if ! getent passwd "$PULL_USER" >/dev/null; then
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin "$PULL_USER"
    step "pull account: created $PULL_USER"
  fi
}

write_config() {
  install -d -o docker-registry -g docker-registry -m 0750 "$REGISTRY_HOME" "$REGISTRY_HOME/data"
  local tmp
  tmp=$(mktemp "$REGISTRY_CONF.XXXXXX")
  cat >"$tmp" <<YAML
# Written by tests/cluster/registry.sh: the pull tests' registry, loopback only, no auth.
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_HOME/data
  delete:
    enabled: true
http:
  addr: $REGISTRY
YAML
  chmod 644 "$tmp"
  if cmp -s "$tmp" "$REGISTRY_CONF"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$REGISTRY_CONF"
    stop_daemon "registry (config changed)" docker-registry serve "$REGISTRY_CONF"
  fi
}

registry_ok() { curl -fsS --max-time 3 "http://$REGISTRY/v2/" >/dev/null 2>&1; }

start_registry() {
  if registry_ok; then
    step "registry: running on $REGISTRY"
    return 0
  fi
  [[ -z $(pids_of docker-registry serve "$REGISTRY_CONF") ]] ||
    stop_daemon "registry (not answering)" docker-registry serve "$REGISTRY_CONF"
  setsid -f runuser -u docker-registry -- /usr/bin/docker-registry serve "$REGISTRY_CONF" \
    </dev/null >>"$REGISTRY_LOG" 2>&1
  poll 30 registry_ok || die "the registry did not answer on $REGISTRY within 30s; see $REGISTRY_LOG"
  step "registry: started on $REGISTRY"
}

pushed() { skopeo inspect --tls-verify=false --raw "docker://$REGISTRY/$1" >/dev/null 2>&1; }

# push_image NAME:TAG EXTRA_MIB: a busybox tree (plus EXTRA_MIB of random bytes) as an OCI image.
push_image() {
  local ref=$1 extra_mib=$2
  if pushed "$ref"; then
    step "image: $REGISTRY/$ref present"
    return 0
  fi
  local work
  work=$(mktemp -d /var/tmp/rx-registry-image.XXXXXX)
  # shellcheck disable=SC2064  # expand now: $work is local
  trap "rm -rf '$work'" RETURN
  local tree=$work/tree
  mkdir -p "$tree"/{bin,etc,tmp,proc,sys,dev,home,root,var/tmp}
  chmod 1777 "$tree/tmp" "$tree/var/tmp"
  cp /bin/busybox "$tree/bin/busybox"
  local applet
  for applet in sh ls cat id echo sleep true false env mkdir rm touch uname; do
    ln -s busybox "$tree/bin/$applet"
  done
  printf 'rx-slurm test image %s\n' "$ref" >"$tree/etc/rx-test-image"
  if ((extra_mib > 0)); then
    head -c "$((extra_mib << 20))" /dev/urandom >"$tree/var/filler"
  fi
  umoci init --layout "$work/oci" >/dev/null
  umoci new --image "$work/oci:img" >/dev/null
  umoci insert --image "$work/oci:img" "$tree" / >/dev/null
  umoci config --image "$work/oci:img" --config.cmd /bin/sh \
    --config.env PATH=/bin >/dev/null
  skopeo copy --quiet --dest-tls-verify=false "oci:$work/oci:img" "docker://$REGISTRY/$ref"
  step "image: pushed $REGISTRY/$ref"
}

install_packages
ensure_pull_account
write_config
start_registry
push_image rxslurm/busybox:1 0
push_image rxslurm/big:1 24
