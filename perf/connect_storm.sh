#!/usr/bin/env bash
# The connect-storm benchmark (issue 17, docs/architecture.md "Connect
# storms and idle devices"): N simulated guests, one VBD each, plugged at
# once and connected through the production BlkbackService on 2 workers;
# then the devices sit idle; then every guest dies at once. One JSON object
# (connect time, the daemon's xenstore operations, heap and CPU per device,
# idle CPU and wake-ups, epoll registrations, threads, destroy time).
#
#   perf/connect_storm.sh [--guests 1000] [--json connect_storm.json] [--image null|raw]
#                         [--idle-seconds 10] [--workers 2] [--bin PATH]
#
# Use a release build (ninja -C build/rel xenpath-connect-storm): the goals
# (< 2 s for 1000 VBDs, < 64 KiB and < 1 % of a core per 1000 idle devices)
# are about it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=
args=()
json=connect_storm.json
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) args+=("$1"); shift ;;
  esac
done
if [ -z "$bin" ]; then
  for b in "$here/build/rel/perf/xenpath-connect-storm" "$here/build/dbg/perf/xenpath-connect-storm"; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
[ -x "$bin" ] || { echo "xenpath-connect-storm not built (ninja -C build/rel xenpath-connect-storm)" >&2; exit 2; }
case "$bin" in */dbg/*) echo "warning: a debug build; the figures are not the release build's" >&2 ;; esac
exec "$bin" --json "$json" "${args[@]}"
