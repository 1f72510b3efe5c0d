#!/usr/bin/env bash
# Builds the container images the tests and the demo use, with the real Apptainer, from Debian
# packages only: a `debootstrap --variant=minbase` tree of this machine's own release (from the
# machine's own apt source) with the packages below, made into a SIF. Kept in $RX_CACHE/images
# between runs and rebuilt only when this recipe changes. Run as root after apptainer.sh.
#
#   tests/cluster/images.sh          # build what is missing or stale; print each image's path
#
# Images: rx-base.sif, the image every container test and the demo start (python3 and pip for the
# wheel install test; dpkg and apt come with minbase).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
START=$EPOCHREALTIME
((EUID == 0)) || die "run as root (debootstrap needs it)"

readonly APPTAINER=/usr/bin/apptainer
readonly IMAGES=$RX_CACHE/images
readonly PACKAGES=python3,python3-pip
[[ -x $APPTAINER ]] || die "$APPTAINER is missing: run tests/cluster/apptainer.sh first"
command -v debootstrap >/dev/null || {
  step "installing debootstrap"
  out=$(DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
    debootstrap 2>&1) || die "apt-get install debootstrap failed: $(tail -n 1 <<<"$out")"
}

# The recipe an image was built from: the build function (not comments elsewhere here), the
# packages, the release and the Apptainer version. An image whose recipe differs is rebuilt.
recipe() {
  local codename
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  {
    declare -f build_base
    printf '%s %s %s\n' "$codename" "$("$APPTAINER" version)" "$PACKAGES"
  } | sha256sum | cut -d' ' -f1
}

build_base() { # DEST
  local dest=$1 work codename uri
  codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
  uri=$(debian_uri)
  work=$(mktemp -d "$IMAGES/.build.XXXXXX")
  # A failed build leaves nothing behind but the download cache.
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$RX_CACHE/debootstrap"
  step "debootstrap $codename (minbase + $PACKAGES)"
  debootstrap --variant=minbase --include="$PACKAGES" --cache-dir="$RX_CACHE/debootstrap" \
    "$codename" "$work/rootfs" "$uri" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap failed: $(tail -n 1 "$work/debootstrap.log")"
  chroot "$work/rootfs" apt-get clean
  rm -rf "$work/rootfs/var/lib/apt/lists/"*
  step "apptainer build $(basename "$dest")"
  "$APPTAINER" -s build "$work/image.sif" "$work/rootfs" ||
    die "apptainer build of $(basename "$dest") failed"
  chmod 0644 "$work/image.sif"
  mv -f "$work/image.sif" "$dest"
  rm -rf "$work"
  trap - EXIT
}

mkdir -p "$IMAGES"
chmod 0755 "$RX_CACHE" "$IMAGES"
want=$(recipe)
base=$IMAGES/rx-base.sif
if [[ -f $base && $(cat "$base.recipe" 2>/dev/null) == "$want" ]]; then
  step "$base up to date"
else
  rm -f "$base.recipe"
  build_base "$base"
  printf '%s\n' "$want" >"$base.recipe"
  step "$base built in $(elapsed_since "$START")"
fi
