#!/usr/bin/env bash
# xenpath-netback's daemon on the simulated host (`xenpath-sim netback`), as an
# operator runs it, and the production binary xenpath-netback:
# (1) a timed run with guests sending frames over the loopback wire must end
#     with every frame back, nothing left mapped, and a stats file; (2)
#     SIGTERM mid-traffic must stop it cleanly (exit 0, nothing mapped);
#     (3) --platform xen without /dev/xen must refuse (exit 2); (4) the
#     production binary contains no part of the simulated host.
set -euo pipefail
bin=$1   # the production daemon
sim=$2   # xenpath-sim
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$sim" netback --guests 2 --seconds 1.5 --stats-file "$work/stats.json" --stats-interval-ms 200 \
  > "$work/out1" 2>&1 || { cat "$work/out1"; echo "FAIL: timed run"; exit 1; }
grep -q 'summary: [1-9][0-9]* frames sent.* -> OK' "$work/out1" || { cat "$work/out1"; echo "FAIL: no OK summary"; exit 1; }
grep -q '"mapped_grant_pages": 0' "$work/stats.json" || { cat "$work/stats.json"; echo "FAIL: stats file"; exit 1; }

"$sim" netback --guests 2 > "$work/out2" 2>&1 &
pid=$!
sleep 2
kill -TERM "$pid"
rc=0; wait "$pid" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/out2"; echo "FAIL: SIGTERM exit $rc"; exit 1; }
grep -q '(interrupted).* -> OK' "$work/out2" || { cat "$work/out2"; echo "FAIL: SIGTERM summary"; exit 1; }

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
