#!/usr/bin/env bash
# xenpath-blkback's daemon on the simulated host (`xenpath-sim blkback`), as an
# operator runs it, and the production binary xenpath-blkback:
# (1) a timed run must end with its self-check OK and a stats file showing
#     nothing left mapped; (2) SIGTERM in the middle of I/O must stop it
#     cleanly (exit 0, self-check OK); (3) --platform xen without /dev/xen
#     must refuse with a clear message and exit 2; (4) the production
#     binary contains no part of the simulated host.
set -euo pipefail
bin=$1   # the production daemon
sim=$2   # xenpath-sim
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$sim" blkback --guests 2 --vbds 2 --queues 2 --seconds 1.5 --image-mib 8 --log-level warn \
  --stats-file "$work/stats.json" --stats-interval-ms 200 --json "$work/summary.json" > "$work/out1" 2>&1 \
  || { cat "$work/out1"; echo "FAIL: timed run"; exit 1; }
grep -q 'self-check: .* -> OK' "$work/out1" || { cat "$work/out1"; echo "FAIL: no self-check OK"; exit 1; }
grep -q '"mapped_grant_pages": 0' "$work/stats.json" || { cat "$work/stats.json"; echo "FAIL: stats file"; exit 1; }
grep -q '"self_check": true' "$work/summary.json" || { cat "$work/summary.json"; echo "FAIL: summary"; exit 1; }

"$sim" blkback --guests 2 --seconds 60 --image-mib 8 --log-level warn > "$work/out2" 2>&1 &
pid=$!
sleep 2
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/out2"; echo "FAIL: SIGTERM exit $rc"; exit 1; }
grep -q '(interrupted)' "$work/out2" && grep -q 'self-check: .* -> OK' "$work/out2" \
  || { cat "$work/out2"; echo "FAIL: SIGTERM self-check"; exit 1; }

if [ ! -e /dev/xen/gntdev ]; then
  rc=0; "$bin" --platform xen > "$work/out3" 2>&1 || rc=$?
  [ "$rc" -eq 2 ] && grep -q 'cannot open the Xen interfaces' "$work/out3" \
    || { cat "$work/out3"; echo "FAIL: --platform xen without Xen: exit $rc"; exit 1; }
fi
# The simulator is a library of its own that no production target links.
if command -v nm >/dev/null; then
  n=$(nm -C "$bin" | grep -c 'xenpath::sim::' || true)
  [ "$n" -eq 0 ] || { echo "FAIL: $bin holds $n symbols of the simulated host"; exit 1; }
fi
echo "PASS"
