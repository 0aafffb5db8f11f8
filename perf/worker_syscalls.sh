#!/usr/bin/env bash
# System calls per request (blkback) or per packet (netback) of the daemon's
# worker thread, by name, on the simulated host: what a worker's reactor and
# its pollers cost in calls, which is what a PV dom0 pays ~50 us each for
# (issues 13, 14). Counted in the kernel with `perf stat` on the syscall
# tracepoints of the worker thread only (the simulated guests run in the same
# process and are not counted), next to the reactor's own counters from the
# stats file (`clock_reads` are CLOCK_MONOTONIC_COARSE: never a system call,
# on a PV dom0 neither). A second window counts libc's clock_gettime calls,
# whatever the clock, with a uprobe: on this machine the vDSO hides them
# from the tracepoints, on a PV dom0 without a vDSO clock every
# CLOCK_MONOTONIC one is a system call. The uprobe traps on each call, which
# slows the loop and changes its iterations per item: compare that window's
# calls with its own reactor counters, not with the first window's.
#
# Usage: perf/worker_syscalls.sh blkback|netback [build dir (default build/dbg)]
#            [seconds measured (default 4)] [-- extra xenpath-sim options]
# Prints one line per call: name, count, calls per item; and the reactor's
# own counters per item from the stats file. Needs root (perf) or
# perf_event_paranoid <= -1; without perf it says so and exits 0.
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:?blkback or netback}
build=${2:-$here/build/dbg}
secs=${3:-4}
shift $(($# < 3 ? $# : 3))
[ "${1:-}" = "--" ] && shift
extra=("$@")
sim=$build/tools/xenpath-sim
tmp=$(mktemp -d /tmp/xenpath-wsys.XXXXXX)
sim_pid=
probe=

skip() { echo "worker_syscalls: SKIP: $*"; exit 0; }
cleanup() {
  [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  [ -n "$probe" ] && perf probe -q -d "$probe" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v perf >/dev/null || skip "perf not installed"
command -v jq >/dev/null || skip "jq not installed"
[ -x "$sim" ] || { echo "no $sim: build xenpath-sim first" >&2; exit 2; }
libc=$(ldd "$sim" | awk '/libc\.so/ {print $3}')
# A probe of our own name, removed on exit.
if perf probe -q -x "$libc" --add "xpclock=clock_gettime" 2>/dev/null; then
  probe=probe_libc:xpclock
fi
# The calls a worker makes (a few hundred tracepoints take perf seconds to
# open); whatever else it calls shows as the gap to "ALL system calls".
names="clock_gettime epoll_wait epoll_pwait io_uring_enter read write readv writev ioctl futex
  timerfd_settime pread64 pwrite64 fdatasync fsync mmap munmap madvise sched_yield nanosleep
  rt_sigreturn rt_sigtimedwait sendmsg recvmsg sendto recvfrom poll ppoll eventfd2 openat close"
syscall_events=
for c in $names; do
  [ -e "/sys/kernel/tracing/events/syscalls/sys_enter_$c" ] || [ -e "/sys/kernel/debug/tracing/events/syscalls/sys_enter_$c" ] ||
    continue
  syscall_events=${syscall_events:+$syscall_events,}syscalls:sys_enter_$c
done
[ -n "$syscall_events" ] || skip "no syscall tracepoints (tracefs not mounted?)"

case "$mode" in
  blkback) args=(blkback --workers 1 --guests 1 --seconds $((2 * secs + 8))) ;;
  netback) args=(netback --workers 1 --guests 1 --seconds $((2 * secs + 8))) ;;
  *) echo "blkback or netback" >&2; exit 2 ;;
esac
stats=$tmp/stats.json
"$sim" "${args[@]}" --stats-file "$stats" --stats-interval-ms 50 --ctl-socket none "${extra[@]}" >"$tmp/sim.log" 2>&1 &
sim_pid=$!
sleep 3  # connected and warm
tid=
for t in /proc/"$sim_pid"/task/*; do
  [ "$(cat "$t/comm" 2>/dev/null)" = "xenpath--w0" ] && tid=$(basename "$t")
done
[ -n "$tid" ] || { echo "no worker thread"; cat "$tmp/sim.log"; exit 1; }

items() {  # requests (blkback) or packets both ways (netback) so far, and the reactor's counters
  if [ "$mode" = blkback ]; then
    jq -c '[([.devices[].per_queue[].requests] | add // 0), .workers[0]]' "$stats"
  else
    jq -c '[([.vifs[].queues[] | .tx_packets + .rx_packets] | add // 0), .workers[0]]' "$stats"
  fi
}
# Pass 1: the system calls. Pass 2: libc's clock_gettime through a uprobe,
# alone (a uprobe traps on every call, which slows the thread as a PV dom0
# does, so it gets a window of its own).
measure() {  # events label
  local before after n
  # The window's ends are read by perf's own workload, once the counters
  # are open (opening them takes a while).
  export -f items
  export mode stats
  perf stat -x, -t "$tid" -e "$1" -o "$tmp/perf.csv" -- \
    bash -c "items > $tmp/before; sleep $secs; sleep 0.06; items > $tmp/after" 2>/dev/null
  before=$(cat "$tmp/before")
  after=$(cat "$tmp/after")
  n=$(jq -n --argjson a "$before" --argjson b "$after" '$b[0] - $a[0]')
  echo "$mode, $2: $n items (requests, or packets both ways) in ${secs}s on worker thread $tid"
  [ "$n" -gt 0 ] || { echo "no items counted"; return 1; }
  awk -F, -v n="$n" '
    $1 ~ /^[0-9]+$/ && $1 > 0 {
      name = $3; sub(/^syscalls:sys_enter_/, "", name); sub(/^probe_libc:xpclock$/, "clock_gettime (libc: vDSO or not)", name)
      sub(/^raw_syscalls:sys_enter$/, "ALL system calls", name)
      printf "  %-36s %10d  %8.3f /item\n", name, $1, $1 / n
    }' "$tmp/perf.csv" | sort -k2 -n -r
  jq -r -n --argjson a "$before" --argjson b "$after" --argjson n "$n" '
    $b[1] | to_entries | map(select(.value | type == "number")) |
    map("  reactor \(.key): \((.value - ($a[1][.key] // 0)) / $n * 1000 | round / 1000) /item") | .[]'
}
measure "$syscall_events,raw_syscalls:sys_enter" "system calls" || exit 1
[ -n "$probe" ] && measure "$probe" "clock reads"
exit 0
