#!/usr/bin/env bash
# Creates the test cluster's Linux users and groups; running it again changes nothing.
# Ids are fixed so that tests, Slurm associations and file ownership agree across machines.
set -euo pipefail

ensure_group() { # name gid
  getent group "$1" >/dev/null || groupadd --gid "$2" "$1"
}

ensure_user() { # name uid shell [extra groups]
  local name=$1 uid=$2 shell=$3 extra=${4:-}
  ensure_group "$name" "$uid"
  if ! getent passwd "$name" >/dev/null; then
    useradd --uid "$uid" --gid "$uid" --create-home --shell "$shell" ${extra:+--groups "$extra"} "$name"
  elif [[ -n $extra ]]; then
    usermod --append --groups "$extra" "$name"
  fi
}

ensure_group rxusers 2000
ensure_group rxadmin 2099
ensure_user rxalice 2001 /bin/bash rxusers
ensure_user rxbob 2002 /bin/bash rxusers
ensure_user rxcarol 2003 /bin/bash rxusers
ensure_user rxdave 2004 /bin/bash rxusers
ensure_user rxop 2010 /bin/bash rxusers,rxadmin
ensure_user rxsvc 2100 /bin/bash
# A system account: rx-slurm must refuse to bind it.
getent group rxsys >/dev/null || groupadd --system --gid 990 rxsys
getent passwd rxsys >/dev/null ||
  useradd --system --uid 990 --gid 990 --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin rxsys
