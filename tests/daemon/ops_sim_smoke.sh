#!/usr/bin/env bash
# Operations as an operator does them, on `xenpath-sim blkback`: the daemon
# with a control socket and a metrics endpoint; xenpath-ctl list/show/stats/
# version against it; curl of /metrics; `promtool check metrics` on the
# scrape (Debian's prometheus package; without it every other check runs and
# the test reports SKIP, exit 77); SIGTERM: exit 0 and the socket removed.
set -euo pipefail
sim=$1   # xenpath-sim
ctl=$2   # xenpath-ctl
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"  # and $work, removed on exit

sock="$work/bb.sock"
"$sim" blkback --guests 2 --seconds 60 --image-mib 8 --log-level warn --image-dir "$work/img" \
  --ctl-socket "$sock" --metrics-listen 127.0.0.1:0 > "$work/out" 2>&1 &
pid=$!
fail() { cat "$work/out"; echo "FAIL: $*"; kill -TERM "$pid" 2>/dev/null || true; exit 1; }

for _ in $(seq 100); do
  if [ -S "$sock" ] && [ "$("$ctl" --socket "$sock" list 2>/dev/null | grep -c Connected)" -eq 2 ]; then break; fi
  sleep 0.1
done
"$ctl" --socket "$sock" list > "$work/list" || fail "list"
grep -q 'vbd/1/51712 .*Connected' "$work/list" && grep -q 'vbd/2/51712 .*Connected' "$work/list" \
  || { cat "$work/list"; fail "list does not show both guests' disks connected"; }
"$ctl" --socket "$sock" show vbd/1/51712 > "$work/show" || fail "show"
grep -q 'persistent_grants' "$work/show" || { cat "$work/show"; fail "show"; }
"$ctl" --socket "$sock" stats --watch --interval 0.5 --count 1 > "$work/stats" || fail "stats --watch"
grep -q 'vbd/2/51712' "$work/stats" || { cat "$work/stats"; fail "stats"; }
rc=0; "$ctl" --socket "$sock" show vbd/9/1 > /dev/null 2>&1 || rc=$?
[ "$rc" -eq 1 ] || fail "show of an absent device: exit $rc, want 1"
rc=0; "$ctl" --socket "$work/absent.sock" list > /dev/null 2>&1 || rc=$?
[ "$rc" -eq 3 ] || fail "absent socket: exit $rc, want 3"

addr=$("$ctl" --socket "$sock" --json version | sed -n 's/.*"metrics": "\([^"]*\)".*/\1/p')
[ -n "$addr" ] || fail "version names no metrics endpoint"
curl -sf "http://$addr/metrics" > "$work/metrics" || fail "curl http://$addr/metrics"
grep -q '^xenpath_vbd_read_bytes_total{device="51712",domain="1"} [1-9]' "$work/metrics" \
  || { cat "$work/metrics"; fail "no read bytes for guest 1"; }
grep -q '^xenpath_up{daemon="xenpath-blkback"} 1' "$work/metrics" || fail "xenpath_up"
# Latency histograms (on with the metrics endpoint): every family, with
# requests in the +Inf bucket of each queue that had any, and the totals.
for op in read write flush; do
  grep -q "^# TYPE xenpath_vbd_${op}_latency_seconds histogram" "$work/metrics" \
    || { cat "$work/metrics"; fail "no ${op} latency histogram family"; }
  grep -q "^xenpath_vbd_${op}_time_seconds_total{device=\"51712\",domain=\"1\"} " "$work/metrics" \
    || fail "no ${op} time total"
done
grep -q '^xenpath_vbd_read_latency_seconds_bucket{device="51712",domain="1",queue="0",le="+Inf"} [1-9]' \
  "$work/metrics" || { grep latency "$work/metrics"; fail "no timed reads on guest 1's queue 0"; }
"$ctl" --socket "$sock" set latency_histograms=off > /dev/null || fail "set latency_histograms=off"
"$ctl" --socket "$sock" --json stats > "$work/stats.json" || fail "stats --json"
grep -q '"latency_timing": false' "$work/stats.json" || fail "latency timing still on"

kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || fail "SIGTERM: exit $rc"
[ ! -e "$sock" ] || fail "the control socket outlived the daemon"

if ! command -v promtool > /dev/null; then
  echo "SKIP: promtool not installed (Debian: apt-get install prometheus); every other check passed"
  exit 77
fi
promtool check metrics < "$work/metrics" > "$work/promtool" 2>&1 || { cat "$work/promtool"; fail "promtool check metrics"; }
echo "PASS"
