#!/usr/bin/env bash
# Installs real Apptainer (MIN_VERSION or newer) for the test cluster, from Debian's own archive:
# Debian 12 has no Apptainer, Debian's unstable suite does, but its binaries need a newer glibc than
# Debian 12's. So the unstable package is fetched (never installed: apt-get install from unstable
# would replace the machine's glibc), unpacked at Debian's paths, and its two ELF programs are
# pointed at a private copy of unstable's glibc. See tests/cluster/README.md.
# Safe to run again: when a working install is there, it only checks it (well under a second).
# If the recipe ever breaks (a newer package in unstable), it says so in one line and exits 1:
# nothing falls back to a fake.
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

readonly MIN_VERSION=1.4.5
readonly SUITE=sid
readonly BIN=/usr/bin/apptainer
# Where the downloads, apt's lists for the unstable suite and the unpacked packages live.
readonly CACHE=$RX_CACHE/apptainer
# Programs Apptainer runs unprivileged, and the Debian 12 packages that have them: SIF images are
# squashfs (mounted with squashfuse), overlays ext3 (fuse2fs, made by mkfs.ext3 -d), the writable
# layer fuse-overlayfs, --fakeroot uses the setuid newuidmap/newgidmap; patchelf is for installing.
readonly -A RUNTIME=(
  [/usr/bin/mksquashfs]=squashfs-tools [/usr/bin/unsquashfs]=squashfs-tools
  [/usr/bin/squashfuse]=squashfuse [/usr/bin/fuse2fs]=fuse2fs [/usr/bin/fuse-overlayfs]=fuse-overlayfs
  [/usr/bin/newuidmap]=uidmap [/usr/sbin/mkfs.ext3]=e2fsprogs [/usr/bin/patchelf]=patchelf
)

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C
START=$EPOCHREALTIME
((EUID == 0)) || die "run as root (it installs packages into /usr)"

# Breakage of the recipe itself: one line naming the step, exit 1.
broken() { die "the real Apptainer install recipe broke at: $*"; }

# The multiarch folder of this machine (x86_64-linux-gnu), which Debian's package uses.
multiarch() {
  local arch
  arch=$(dpkg --print-architecture)
  case $arch in
  amd64) echo x86_64-linux-gnu ;;
  arm64) echo aarch64-linux-gnu ;;
  ppc64el) echo powerpc64le-linux-gnu ;;
  *) broken "no multiarch name known for architecture $arch" ;;
  esac
}
MULTIARCH=$(multiarch)
readonly LIBEXEC=/usr/lib/$MULTIARCH/apptainer
readonly GLIBC=$LIBEXEC/glibc

installed_version() { # prints the working binary's version; fails when it does not run
  "$BIN" version 2>/dev/null
}

is_recent() { dpkg --compare-versions "${1%%-*}" ge "$MIN_VERSION"; }

runtime_missing() {
  local path
  for path in "${!RUNTIME[@]}"; do
    [[ -e $path ]] || printf '%s\n' "${RUNTIME[$path]}"
  done | sort -u
}

install_runtime() {
  local -a missing
  mapfile -t missing < <(runtime_missing)
  ((${#missing[@]})) || return 0
  step "installing ${missing[*]} (Debian $(. /etc/os-release && echo "$VERSION_ID"))"
  export DEBIAN_FRONTEND=noninteractive
  # Other work may be running apt at the same time: wait for its lock rather than fail.
  local out
  out=$(apt-get -o DPkg::Lock::Timeout=300 update -qq 2>&1 &&
    apt-get -o DPkg::Lock::Timeout=300 install -y -qq "${missing[@]}" 2>&1) ||
    die "apt-get install ${missing[*]} failed: $(tail -n 1 <<<"$out")"
}

# apt-get against the unstable suite only, with its own lists and downloads under $CACHE; the
# machine's apt state is not touched.
apt_unstable() {
  apt-get -o Dir::Etc::sourcelist="$CACHE/sources.list" -o Dir::Etc::sourceparts=- \
    -o Dir::State::Lists="$CACHE/lists" -o Dir::Cache="$CACHE" \
    -o Dir::Cache::archives="$CACHE/debs" -o APT::Get::List-Cleanup=0 "$@"
}

fetch_packages() {
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg uri
  uri=$(debian_uri)
  mkdir -p "$CACHE/lists/partial" "$CACHE/debs/partial"
  printf 'deb [signed-by=%s] %s %s main\n' "$keyring" "$uri" "$SUITE" >"$CACHE/sources.list"
  # apt downloads as _apt: it must be able to write there.
  chown _apt:root "$CACHE/debs" "$CACHE/debs/partial"
  rm -f "$CACHE/debs"/*.deb
  apt_unstable -qq update || broken "apt-get update of Debian $SUITE"
  (cd "$CACHE/debs" && apt_unstable -qq download apptainer "libc6/$SUITE") >/dev/null ||
    broken "apt-get download apptainer libc6/$SUITE"
}

unpack() {
  local root=$CACHE/root glibc=$CACHE/glibc deb version file
  rm -rf "$root" "$glibc"
  deb=$(echo "$CACHE"/debs/apptainer_*.deb)
  version=$(dpkg-deb -f "$deb" Version)
  is_recent "$version" || broken "Debian $SUITE has apptainer $version, older than $MIN_VERSION"
  dpkg -x "$deb" "$root"
  dpkg -x "$(echo "$CACHE"/debs/libc6_*.deb)" "$glibc"
  [[ -x $root/usr/bin/apptainer && -x $root$LIBEXEC/bin/starter ]] ||
    broken "apptainer $version no longer has usr/bin/apptainer and ${LIBEXEC#/}/bin/starter"
  # The private glibc: the libraries and the loader as files (the package's loader in /usr/lib64
  # is a symlink to the one copied here).
  mkdir -p "$root$GLIBC"
  for file in "$glibc/usr/lib/$MULTIARCH"/*.so*; do
    cp -L "$file" "$root$GLIBC/"
  done
  local loader
  loader=$(cd "$root$GLIBC" && echo ld-linux*.so.*)
  [[ -f $root$GLIBC/$loader ]] || broken "libc6/$SUITE has no loader in usr/lib/$MULTIARCH"
  # --force-rpath: an RPATH, not a RUNPATH. A RUNPATH loses to LD_LIBRARY_PATH, which 'apptainer
  # build' sets for a child, and the child then loads the system's older glibc and fails.
  for file in "$root/usr/bin/apptainer" "$root$LIBEXEC/bin/starter"; do
    patchelf --set-interpreter "$GLIBC/$loader" --force-rpath --set-rpath "$GLIBC" "$file" ||
      broken "patchelf on ${file#"$root"}"
  done
  printf '%s\n' "$version" >"$root/.version"
}

# Copies the unpacked tree over Debian's paths. The binary goes last: until it is in place the
# install counts as absent, so an interrupted run starts again.
install_tree() {
  local root=$CACHE/root
  rm -f "$BIN"
  cp -a "$root/etc/." /etc/
  mkdir -p /var/lib/apptainer/mnt/session /var/lib/apptainer/mnt/source
  rm -rf "$LIBEXEC"
  cp -a "$root$LIBEXEC" "$LIBEXEC"
  cp -a "$root/usr/share/." /usr/share/
  cp -a "$root/usr/bin/run-singularity.apptainer" /usr/bin/run-singularity
  cp -a "$root/usr/bin/apptainer" "$BIN.new"
  mv -f "$BIN.new" "$BIN"
}

# What a real install has besides the files: the 'singularity' name (spython only runs that) and a
# /dev/fuse that users may open (these VMs make it 0600; udev's usual mode is 0666).
finish() {
  ln -sfn apptainer /usr/bin/singularity
  [[ $(stat -c %a /dev/fuse 2>/dev/null) == 666 ]] || chmod 0666 /dev/fuse ||
    broken "chmod 0666 /dev/fuse"
}

install_runtime
version=$(installed_version || true)
if [[ -n $version ]] && is_recent "$version"; then
  finish
  step "Apptainer $version installed ($BIN), checked in $(elapsed_since "$START")"
  exit 0
fi
step "installing from Debian $SUITE (found: ${version:-none})"
fetch_packages
unpack
install_tree
finish
version=$(installed_version) || broken "$BIN does not run after the install"
is_recent "$version" || broken "$BIN reports $version after the install"
step "Apptainer $version installed ($BIN) in $(elapsed_since "$START")"
