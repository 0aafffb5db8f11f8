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
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"  # and $work, removed on exit

"$sim" netback --guests 2 --seconds 1.5 --stats-file "$work/stats.json" --stats-interval-ms 200 \
  > "$work/out1" 2>&1 || { cat "$work/out1"; echo "FAIL: timed run"; exit 1; }
grep -q 'summary: [1-9][0-9]* frames sent.* -> OK' "$work/out1" || { cat "$work/out1"; echo "FAIL: no OK summary"; exit 1; }
grep -q '"mapped_grant_pages": 0' "$work/stats.json" || { cat "$work/stats.json"; echo "FAIL: stats file"; exit 1; }

sigterm_midway "$work/out2" "$sim" netback --guests 2
grep -q '(interrupted).* -> OK' "$work/out2" || { cat "$work/out2"; echo "FAIL: SIGTERM summary"; exit 1; }

check_production_binary "$bin"
echo "PASS"
