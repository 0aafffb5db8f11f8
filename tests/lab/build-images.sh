#!/usr/bin/env bash
# Builds the lab's base images from Debian 12 packages only, into a cache keyed by a hash of this
# recipe (this file): the Xen hypervisor ELF, the Debian kernel, the dom0 root filesystem (a
# debootstrap minbase with xen-utils-4.17 and the runtime libraries the xenpath daemons link
# against) and the guest's small initramfs (busybox, fio, iperf3, xen-blkfront/netfront).
# Nothing of xenpath goes in here: run.sh appends it as a second cpio archive on every run, so a
# rebuilt daemon never invalidates these images.
#
#   tests/lab/build-images.sh [--cache DIR]     prints the image directory on stdout
#
# Needs root (debootstrap, chroot), debootstrap, cpio, dpkg-deb and apt-get on a Debian 12 host.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/build/lab-cache"
while [ $# -gt 0 ]; do
  case "$1" in
    --cache) cache="$2"; shift 2 ;;
    *) echo "build-images.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

SUITE=bookworm
# Taken from the host's apt configuration so the lab uses the same mirror (and snapshot) as the
# machine that builds the daemons; the images then hold exactly the library versions ldd saw here.
MIRROR="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

# Dom0: Xen toolstack, the daemons' runtime libraries (liburing2, libspdlog1.10, libfmt9, prometheus-cpp, the
# DPDK libraries xenpath-netback links and the PMDs it loads -- `dpdk` only recommends them --,
# libxen*), iperf3 (server side), QEMU's Xen device model for the qdisk column, and tools.
DOM0_PKGS=(
  xen-utils-4.17 xenstore-utils libxenstore4 libxengnttab1 libxenevtchn1 libxenmisc4.17
  liburing2 libspdlog1.10 libfmt9 dpdk libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0
  librte-eal23 librte-ethdev23 librte-gso23 librte-mbuf23 librte-mempool23 librte-net23 librte-ring23
  librte-kvargs23 librte-meter23 librte-pci23 librte-telemetry23 librte-bus-vdev23 librte-bus-pci23
  librte-gro23 librte-net-ring23 librte-net-tap23 librte-net-null23 librte-net-virtio23 librte-mempool-ring23
  qemu-system-xen
  iproute2 iperf3 fio kmod procps e2fsprogs util-linux mount
)
# Kernel modules each side loads (with their dependencies, resolved from modules.dep).
DOM0_MODS=(xen-evtchn xen-gntdev xen-gntalloc xenfs xen-privcmd xen-blkback xen-netback
           tun vhost_net brd loop ext4 crc32c_generic bridge)
GUEST_MODS=(xen-blkfront xen-netfront)

key="$(cat "$0" | sha256sum | cut -c1-16)"
out="$cache/images-$key"
if [ -f "$out/.done" ]; then echo "$out"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "build-images.sh: needs root (debootstrap)" >&2; exit 1; }
for t in debootstrap cpio dpkg-deb apt-get depmod; do
  command -v "$t" >/dev/null || { echo "build-images.sh: missing $t (apt-get install debootstrap cpio kmod)" >&2; exit 1; }
done

log() { echo "[build-images] $*" >&2; }
work="$cache/work-$key"
# The slow stage (debootstrap + apt, minutes) has its own key: only what it depends on.
rkey="$(echo "v1 $SUITE $MIRROR ${DOM0_PKGS[*]} $(cat /etc/apt/sources.list.d/debian.sources 2>/dev/null)" |
        sha256sum | cut -c1-16)"
root="$cache/dom0-root-$rkey"
rm -rf "$out" "$work"
mkdir -p "$work/debs" "$out"
t0=$(date +%s)

# --- Xen, kernel, busybox: unpacked from their .debs (not installed anywhere) ---
kpkg="$(apt-cache depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1)"
[ -n "$kpkg" ] || { echo "build-images.sh: cannot resolve linux-image-amd64 (apt-get update?)" >&2; exit 1; }
log "downloading xen-hypervisor-4.17-amd64 $kpkg busybox-static"
(cd "$work/debs" && apt-get download -q -o APT::Sandbox::User=root xen-hypervisor-4.17-amd64 "$kpkg" busybox-static >&2)
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/unpack"; done
xen_gz="$(ls "$work"/unpack/boot/xen-4.17*-amd64.gz 2>/dev/null | head -n1 || true)"
[ -n "$xen_gz" ] || xen_gz="$(ls "$work"/unpack/boot/xen-*.gz | head -n1)"
# QEMU's multiboot loader takes an ELF, not the gzipped image grub uses.
gzip -dc "$xen_gz" > "$out/xen"
kver="$(ls "$work/unpack/lib/modules" | head -n1)"
cp "$work/unpack/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" > "$out/kver"
modsrc="$work/unpack/lib/modules/$kver"
depmod -b "$work/unpack" "$kver"  # the .deb does not ship modules.dep: its postinst makes it

# Copies the named modules and everything they depend on into ROOT/lib/modules/KVER, prints the
# load order (dependencies first) on stdout. A module built into the kernel is skipped.
copy_mods() {
  local root="$1"; shift
  local -A seen=()
  local order=()
  visit() {
    local name="$1" rel deps d
    rel="$(awk -F: -v n="/$name.ko" -v m="/${name//-/_}.ko" \
          'index($1, n) == length($1) - length(n) + 1 || index($1, m) == length($1) - length(m) + 1 {print $1; exit}' \
          "$modsrc/modules.dep")"
    if [ -z "$rel" ]; then
      if grep -qE "/(${name}|${name//-/_})\.ko$" "$modsrc/modules.builtin"; then return 0; fi
      echo "build-images.sh: module $name not found" >&2; return 1
    fi
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    deps="$(grep "^$rel:" "$modsrc/modules.dep" | cut -d: -f2)"
    for d in $deps; do visit "$(basename "$d" .ko)"; done
    mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
    cp "$modsrc/$rel" "$root/lib/modules/$kver/$rel"
    order+=("$rel")
  }
  for m in "$@"; do visit "$m"; done
  cp "$modsrc"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/" 2>/dev/null || true
  depmod -b "$root" "$kver"
  printf '%s\n' "${order[@]}"
}

# --- dom0 root filesystem ---
if [ ! -f "$root/.stage-done" ]; then
rm -rf "$root"
log "debootstrap $SUITE minbase from $MIRROR"
debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" > "$work/debootstrap.log" 2>&1 ||
  { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
# The same suites as the host (security and updates too), so versions match the build machine.
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
rm -f "$root/etc/apt/sources.list"
mount -t proc proc "$root/proc"
trap 'umount "$root/proc" 2>/dev/null || true' EXIT
log "installing ${#DOM0_PKGS[@]} packages into dom0"
chroot "$root" apt-get update -q > "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
# policy-rc.d: no service may start inside the build chroot.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends "${DOM0_PKGS[@]}" \
  >> "$work/apt.log" 2>&1 || { tail -n 30 "$work/apt.log" >&2; exit 1; }
umount "$root/proc"; trap - EXIT
rm -f "$root/usr/sbin/policy-rc.d"
touch "$root/.stage-done"
fi
rm -rf "$root/lib/modules" "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/{doc,man,info,locale}/* \
       "$root"/usr/share/qemu/{edk2*,openbios*,skiboot*,u-boot*,opensbi*,hppa*,palcode*,s390*,slof*,QEMU*} 2>/dev/null || true
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' > "$out/dom0-packages.txt"
copy_mods "$root" "${DOM0_MODS[@]}" > /dev/null
log "packing dom0.cpio"
(cd "$root" && find . -xdev ! -name .stage-done | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/dom0.cpio"

# --- guest initramfs: busybox + fio + iperf3 (with their libraries, taken from the dom0 tree) ---
g="$work/guest"
mkdir -p "$g"/{bin,sbin,dev,proc,sys,tmp,lib64,etc,mnt}
cp "$work/unpack/bin/busybox" "$g/bin/busybox"
for b in fio iperf3; do
  cp "$root/usr/bin/$b" "$g/bin/$b"
  chroot "$root" ldd "/usr/bin/$b" | awk '/=> \//{print $3} /^\t\/lib64/{print $1}' | while read -r lib; do
    mkdir -p "$g$(dirname "$lib")"
    cp -L "$root$lib" "$g$lib"
  done
done
copy_mods "$g" "${GUEST_MODS[@]}" > "$g/etc/modules.order"
sed -i "s|^|/lib/modules/$kver/|" "$g/etc/modules.order"
# The guest's /init comes from tests/lab/guest/init via run.sh's overlay; nothing else here.
(cd "$g" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > "$out/guest-base.cpio"

du -sh "$out"/* >&2
rm -rf "$work"
touch "$out/.done"
# Images of older recipes are dead weight (about 400 MB each).
for d in "$cache"/images-* "$cache"/work-* "$cache"/dom0-root-*; do
  [ "$d" = "$out" ] || [ "$d" = "$root" ] || rm -rf "$d"
done
log "done in $(( $(date +%s) - t0 )) s"
echo "$out"
