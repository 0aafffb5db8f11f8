#!/usr/bin/env bash
# The real-Xen lab: Xen 4.17 nested in QEMU (TCG), Debian dom0 running xenpath's daemons and, in
# the same run, the kernel backends (and QEMU qdisk), a stock Debian PV guest running fio and
# iperf3 against each. Prints a side-by-side table, writes JSON, exits non-zero on any failure.
#
#   tests/lab/run.sh [--plan short|full|crossover] [--backends xenpath,kernel,qdisk] [--secs N]
#                    [--timeout S] [--json PATH] [--no-build]
#
# See tests/lab/README.md. Needs root, qemu-system-x86, debootstrap, cpio (installed if missing).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$repo/build/lab-cache"
plan=short backends="" secs="" tmo="" json="" build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) plan="$2"; shift 2 ;;
    --backends) backends="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --timeout) tmo="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$plan" in
  short) backends="${backends:-xenpath,kernel}"; tmo="${tmo:-1200}" ;;
  full) backends="${backends:-xenpath,kernel,qdisk}"; tmo="${tmo:-2400}" ;;
  crossover) backends=xenpath; tmo="${tmo:-1200}" ;;
  *) echo "run.sh: --plan short|full|crossover" >&2; exit 2 ;;
esac
for b in ${backends//,/ }; do
  case "$b" in xenpath|kernel|qdisk) ;; *) echo "run.sh: unknown backend $b" >&2; exit 2 ;; esac
done
mkdir -p "$cache/run"
json="${json:-$cache/run/result.json}"
log="$cache/run/console.log"
pidfile="$cache/run/qemu.pid"
t_start=$(date +%s)
say() { echo "[lab] $*"; }

# A QEMU left over from an interrupted run of this lab (only that one: the pid it recorded).
kill_leftover() {
  local pid
  [ -f "$pidfile" ] || return 0
  pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q "lab-cache/run/dom0-full.cpio"; then
    say "killing leftover QEMU $pid"
    kill "$pid" 2>/dev/null || true; sleep 1; kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}
kill_leftover

if [ "$(id -u)" -ne 0 ]; then echo "run.sh: needs root (debootstrap, chroot)" >&2; exit 1; fi
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 1. The daemons, in a release build (dom0 is Debian 12 like this machine), packaged: dom0 gets
# the .deb's files at their installed paths (units, modprobe.d snippet, hotplug script included).
# The kernel column keeps its own scripts (block, vif-bridge).
deb=""
if [[ ",$backends," == *",xenpath,"* || ",$backends," == *",kernel,"* ]] && [ $build = 1 ]; then
  say "building the package (build-rel, cpack -G DEB)"
  export CCACHE_BASEDIR="$repo" CCACHE_NOHASHDIR=1
  [ -f "$repo/build-rel/build.ninja" ] ||
    cmake -S "$repo" -B "$repo/build-rel" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DXENPATH_BUILD_TESTS=OFF -DXENPATH_BUILD_PERF=OFF > "$cache/run/cmake.log"
  ninja -C "$repo/build-rel" -j"${LAB_JOBS:-1}" > "$cache/run/ninja.log" || { tail -n 30 "$cache/run/ninja.log"; exit 1; }
  rm -f "$repo"/build-rel/xenpath_*.deb
  (cd "$repo/build-rel" && cpack -G DEB > "$cache/run/cpack.log" 2>&1) || { tail -n 30 "$cache/run/cpack.log"; exit 1; }
fi
deb="$(ls "$repo"/build-rel/xenpath_*.deb 2>/dev/null | head -n1 || true)"
[[ ",$backends," == *",xenpath,"* || ",$backends," == *",kernel,"* ]] && [ -z "$deb" ] &&
  say "no xenpath package built: the xenpath column and the kernel column's vif will fail"

# 2. The images (cached, keyed by the recipe).
t_img=$(date +%s)
images="$("$here/build-images.sh" --cache "$cache")"
say "images: $images ($(( $(date +%s) - t_img )) s)"

# 3. The per-run overlay: init scripts, plan, the package's files, the guest's kernel and initramfs.
ov="$cache/run/overlay"
rm -rf "$ov"; mkdir -p "$ov/lab" "$ov/guest"
if [ -n "$deb" ]; then
  dpkg-deb -x "$deb" "$ov"
  # dom0 is merged-/usr: a real lib/ in the overlay would replace its /lib -> usr/lib symlink
  # when Linux unpacks the archive (and with it the dynamic loader's path).
  if [ -d "$ov/lib" ]; then mkdir -p "$ov/usr/lib" && cp -a "$ov/lib/." "$ov/usr/lib/" && rm -rf "$ov/lib"; fi
fi
install -m 755 "$here/dom0/init" "$ov/init"
install -m 755 "$here/dom0/plan.sh" "$ov/lab/plan.sh"
cp "$images/vmlinuz" "$ov/lab/vmlinuz"
install -m 755 "$here/guest/init" "$ov/guest/init"
{ cat "$images/guest-base.cpio"; (cd "$ov/guest" && echo init | cpio -o -H newc --quiet); } > "$ov/lab/guest.cpio"
rm -rf "$ov/guest"
{ cat "$images/dom0.cpio"; (cd "$ov" && find . | LC_ALL=C sort | cpio -o -H newc --quiet); } > "$cache/run/dom0-full.cpio"

# 4. Boot. Multiboot modules are separated by commas, so the dom0 command line uses '+'.
dom0_cmd="console=hvc0 loglevel=4 lab.plan=$plan lab.backends=${backends//,/+}"
[ -n "$secs" ] && dom0_cmd+=" lab.secs=$secs"
say "booting Xen (plan $plan, backends $backends, timeout ${tmo}s); console log: $log"
: > "$log"
t_boot=$(date +%s)
set +e
timeout -k 15 "$tmo" qemu-system-x86_64 \
  -accel tcg,thread=multi,tb-size=512 -cpu Nehalem -smp 2 -m 3072 \
  -display none -monitor none -nic none -no-reboot -serial "file:$log" \
  -kernel "$images/xen" -append "console=com1 dom0_mem=1280M,max:1280M smap=0 smep=0" \
  -initrd "$images/vmlinuz $dom0_cmd,$cache/run/dom0-full.cpio" </dev/null > "$cache/run/qemu.out" 2>&1 &
qpid=$!
# timeout's child is QEMU; record it so a later run can end it if this one is interrupted.
sleep 1; pgrep -P "$qpid" > "$pidfile" || true
trap 'kill "$qpid" 2>/dev/null; kill_leftover' INT TERM
# Progress: the plan's LAB lines as they come (tail ends with QEMU's timeout process).
tail -n +1 -F --pid="$qpid" "$log" 2>/dev/null | grep --line-buffered -aE '^LAB\|' | sed -u 's/^/  /' &
tpid=$!
wait "$qpid"; qrc=$?
wait "$tpid" 2>/dev/null
set -e
rm -f "$pidfile"
t_end=$(date +%s)
[ $qrc -eq 124 ] && say "TIMEOUT after ${tmo}s"
[ $qrc -ne 0 ] && [ $qrc -ne 124 ] && { say "QEMU exited with $qrc"; tail -n 5 "$cache/run/qemu.out"; }

python3 "$here/report.py" --log "$log" --json "$json" --plan "$plan" --backends "$backends" \
  --qemu-rc "$qrc" --boot-s $((t_end - t_boot)) --total-s $((t_end - t_start))
