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
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"  # and $work, removed on exit

"$sim" blkback --guests 2 --vbds 2 --queues 2 --seconds 1.5 --image-mib 8 --log-level warn \
  --stats-file "$work/stats.json" --stats-interval-ms 200 --json "$work/summary.json" > "$work/out1" 2>&1 \
  || { cat "$work/out1"; echo "FAIL: timed run"; exit 1; }
grep -q 'self-check: .* -> OK' "$work/out1" || { cat "$work/out1"; echo "FAIL: no self-check OK"; exit 1; }
grep -q '"mapped_grant_pages": 0' "$work/stats.json" || { cat "$work/stats.json"; echo "FAIL: stats file"; exit 1; }
grep -q '"self_check": true' "$work/summary.json" || { cat "$work/summary.json"; echo "FAIL: summary"; exit 1; }

sigterm_midway "$work/out2" "$sim" blkback --guests 2 --seconds 60 --image-mib 8 --log-level warn
grep -q '(interrupted)' "$work/out2" && grep -q 'self-check: .* -> OK' "$work/out2" \
  || { cat "$work/out2"; echo "FAIL: SIGTERM self-check"; exit 1; }

check_production_binary "$bin"
echo "PASS"
