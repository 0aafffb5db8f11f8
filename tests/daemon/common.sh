# What the daemon smoke tests (blkback_sim_smoke.sh, netback_sim_smoke.sh)
# share; sourced, after `set -euo pipefail`. Sets $work, a scratch
# directory removed on exit.

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# sigterm_midway OUT CMD...: runs CMD with its output in OUT, sends it
# SIGTERM after 2 s; it must exit 0.
sigterm_midway() {
  local out=$1; shift
  "$@" > "$out" 2>&1 &
  local pid=$!
  sleep 2
  kill -TERM "$pid"
  local rc=0; wait "$pid" || rc=$?
  [ "$rc" -eq 0 ] || { cat "$out"; echo "FAIL: SIGTERM exit $rc"; exit 1; }
}

# check_production_binary BIN: without /dev/xen, --platform xen must refuse
# with a clear message and exit 2; and the binary holds no part of the
# simulated host (a library of its own that no production target links).
check_production_binary() {
  local bin=$1
  if [ ! -e /dev/xen/gntdev ]; then
    local rc=0; "$bin" --platform xen > "$work/out3" 2>&1 || rc=$?
    [ "$rc" -eq 2 ] && grep -q 'cannot open the Xen interfaces' "$work/out3" \
      || { cat "$work/out3"; echo "FAIL: --platform xen without Xen: exit $rc"; exit 1; }
  fi
  if command -v nm >/dev/null; then
    local n
    n=$(nm -C "$bin" | grep -c 'xenpath::sim::' || true)
    [ "$n" -eq 0 ] || { echo "FAIL: $bin holds $n symbols of the simulated host"; exit 1; }
  fi
}
