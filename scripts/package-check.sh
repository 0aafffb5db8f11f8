#!/usr/bin/env bash
# The operator's path, as CI runs it (issue 15's "done when"): build the
# .deb from a build directory, install it with apt (so its Depends
# resolve), `systemd-analyze verify` the installed units, start both
# services on the simulated host through the installed sim drop-ins, and
# check what an operator would: READY=1, `xenpath-ctl list` shows the
# simulated guests' devices connected, the metrics endpoints pass `promtool
# check metrics`, SIGTERM stops them cleanly. With systemd as PID 1 the
# services run under systemctl; otherwise (a container) each unit's
# ExecStart, drop-in applied, runs in the background with NOTIFY_SOCKET on a
# socket this script reads (and WATCHDOG_USEC, JOURNAL_STREAM as systemd
# sets them, to see WATCHDOG=1 and the journal's log format).
# The package is purged at the end unless KEEP=1.
#   scripts/package-check.sh [BUILD_DIR]      (default build/release; root)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
[ "$(id -u)" -eq 0 ] || { echo "package-check: needs root (apt-get install, /run/xenpath)" >&2; exit 1; }
say() { echo "package-check: $*"; }
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -f /etc/systemd/system/xenpath-{blkback,netback}.service.d/sim.conf
  rmdir /etc/systemd/system/xenpath-{blkback,netback}.service.d 2>/dev/null || true
  if [ "${KEEP:-0}" != 1 ] && dpkg-query -W xenpath >/dev/null 2>&1; then
    [ -d /run/systemd/system ] && systemctl stop xenpath-blkback xenpath-netback 2>/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq xenpath >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "package-check: FAIL: $*" >&2; exit 1; }

# 1. The package.
t0=$(date +%s)
rm -f "$build"/xenpath_*.deb
(cd "$build" && cpack -G DEB > "$work/cpack.log" 2>&1) || { cat "$work/cpack.log"; fail "cpack -G DEB"; }
deb=$(realpath "$build"/xenpath_*.deb)
say "built $(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) in $(( $(date +%s) - t0 )) s"
dpkg-deb -f "$deb" Depends | sed 's/^/package-check: Depends: /'
dpkg-deb -c "$deb" | awk '{print $6}' > "$work/contents"
for f in ./usr/sbin/xenpath-blkback ./usr/sbin/xenpath-netback ./usr/bin/xenpath-ctl ./usr/bin/xenpath-img \
  ./usr/bin/xenpath-sim ./lib/systemd/system/xenpath-blkback.service ./lib/systemd/system/xenpath-netback.service \
  ./lib/modprobe.d/xenpath.conf ./etc/xen/scripts/xenpath ./etc/default/xenpath-blkback \
  ./usr/share/man/man8/xenpath-blkback.8.gz ./usr/share/man/man8/xenpath-ctl.8.gz \
  ./usr/share/doc/xenpath/examples/xenpath-blkback-sim.conf; do
  grep -qx "$f" "$work/contents" || fail "$f is not in the package"
done

# 2. Install it as an operator does (apt resolves the Depends).
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" > "$work/apt.log" 2>&1 ||
  { cat "$work/apt.log"; fail "apt-get install $deb"; }
say "installed: $(dpkg-query -W -f='${Package} ${Version} ${Status}' xenpath)"
# The man page is --help's text: the options are in it.
zcat /usr/share/man/man8/xenpath-blkback.8.gz | grep -q 'metrics\\-listen' || fail "man page xenpath-blkback(8)"

# 3. The units, as installed and with the simulated-host drop-ins.
units=(/lib/systemd/system/xenpath-blkback.service /lib/systemd/system/xenpath-netback.service)
systemd-analyze verify "${units[@]}" > "$work/verify" 2>&1 || { cat "$work/verify"; fail "systemd-analyze verify"; }
# Only warnings about Xen's own units (absent without Xen) are tolerated.
if grep -v -e 'xenstored.service' -e 'xen-init-dom0.service' -e 'xendomains.service' -e 'xen-watchdog.service' \
  -e 'proc-xen.mount' "$work/verify" | grep -q .; then
  cat "$work/verify"; fail "systemd-analyze verify: warnings"
fi
for d in blkback netback; do
  install -D -m 644 "/usr/share/doc/xenpath/examples/xenpath-$d-sim.conf" \
    "/etc/systemd/system/xenpath-$d.service.d/sim.conf"
done
systemd-analyze verify "${units[@]}" > "$work/verify2" 2>&1 || { cat "$work/verify2"; fail "systemd-analyze verify (sim drop-ins)"; }
say "systemd-analyze verify: both units pass, with and without the sim drop-ins"

# Metrics on free local ports, set where an operator sets options.
read -r port_b port_n < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cp /etc/default/xenpath-blkback /etc/default/xenpath-netback "$work/"
echo "XENPATH_BLKBACK_ARGS=\"--metrics-listen 127.0.0.1:$port_b --workers 2\"" >> /etc/default/xenpath-blkback
echo "XENPATH_NETBACK_ARGS=\"--metrics-listen 127.0.0.1:$port_n --workers 1 --log-level info\"" >> /etc/default/xenpath-netback

# 4. Start both.
if [ -d /run/systemd/system ]; then
  mode=systemd
  systemctl daemon-reload
  systemctl start xenpath-blkback xenpath-netback || {
    journalctl -n 50 -u xenpath-blkback -u xenpath-netback; fail "systemctl start"; }
  for d in blkback netback; do
    systemctl -q is-active "xenpath-$d" || fail "xenpath-$d is not active"
    say "xenpath-$d: $(systemctl show -p StatusText --value "xenpath-$d")"
  done
else
  mode=direct
  # What systemd would run: the drop-in's ExecStart, the unit's environment.
  for d in blkback netback; do
    D=${d^^}
    exec_line=$(grep '^ExecStart=.' "/etc/systemd/system/xenpath-$d.service.d/sim.conf" | tail -n1 | cut -d= -f2-)
    # shellcheck disable=SC1090
    args=$(. "/etc/default/xenpath-$d"; eval "echo \"\$XENPATH_${D}_ARGS\"")
    cmd=${exec_line//\$XENPATH_${D}_ARGS/$args}
    python3 - "$work/notify-$d.sock" "$work/notify-$d" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
with open(sys.argv[2], "a", buffering=1) as out:
    while True:
        msg = s.recv(4096).decode()
        out.write(msg.replace("\n", " | ") + "\n")
PY
    pids+=($!)
    for _ in $(seq 50); do [ -S "$work/notify-$d.sock" ] && break; sleep 0.1; done
    : > "$work/log-$d"
    # shellcheck disable=SC2086,SC2094  # $cmd is words; stat names the file the redirect writes
    NOTIFY_SOCKET="$work/notify-$d.sock" WATCHDOG_USEC=1000000 JOURNAL_STREAM=$(stat -c '%d:%i' "$work/log-$d") \
      sh -c 'export WATCHDOG_PID=$$; exec "$@"' sh $cmd >> "$work/log-$d" 2>&1 &
    eval "pid_$d=$!"
    pids+=($!)
    say "xenpath-$d (no systemd here): $cmd"
  done
  for d in blkback netback; do
    for _ in $(seq 100); do grep -q 'READY=1' "$work/notify-$d" 2>/dev/null && break; sleep 0.1; done
    grep -q 'READY=1' "$work/notify-$d" 2>/dev/null || { cat "$work/log-$d"; fail "xenpath-$d: no READY=1"; }
    say "xenpath-$d: $(grep -m1 READY=1 "$work/notify-$d")"
  done
fi

# 5. What an operator looks at.
for d in blkback netback; do
  for _ in $(seq 100); do
    [ "$(xenpath-ctl --socket "/run/xenpath/xenpath-$d.sock" list 2>/dev/null | grep -c Connected)" -ge 2 ] && break
    sleep 0.1
  done
  xenpath-ctl --socket "/run/xenpath/xenpath-$d.sock" list > "$work/list-$d" || fail "xenpath-ctl list ($d)"
  sed "s/^/package-check:   /" "$work/list-$d"
  [ "$(grep -c Connected "$work/list-$d")" -ge 2 ] || fail "xenpath-ctl list ($d): the 2 guests' devices are not connected"
done
for pp in "blkback $port_b xenpath_vbd_read_bytes_total" "netback $port_n xenpath_vif_transmit_packets_total"; do
  read -r d port family <<< "$pp"
  curl -sf "http://127.0.0.1:$port/metrics" > "$work/metrics-$d" || fail "curl metrics ($d)"
  promtool check metrics < "$work/metrics-$d" > "$work/promtool-$d" 2>&1 || { cat "$work/promtool-$d"; fail "promtool ($d)"; }
  grep -q "^$family{" "$work/metrics-$d" || fail "no $family in the $d scrape"
  say "xenpath-$d metrics: $(grep -c '^xenpath_' "$work/metrics-$d") samples, promtool check metrics: ok"
done

# 6. Stop.
if [ $mode = systemd ]; then
  systemctl stop xenpath-blkback xenpath-netback
  for d in blkback netback; do
    r=$(systemctl show -p Result --value "xenpath-$d")
    [ "$r" = success ] || fail "xenpath-$d stopped with $r"
  done
else
  for d in blkback netback; do
    grep -q 'WATCHDOG=1' "$work/notify-$d" || fail "xenpath-$d: no WATCHDOG=1 (WATCHDOG_USEC=1 s)"
    # Under the journal (JOURNAL_STREAM matches stderr): "<6>message", no timestamp.
    grep -q '^<6>xenpath-'"$d"': ready: ' "$work/log-$d" || { head "$work/log-$d"; fail "xenpath-$d: no journal-format line"; }
    if grep -qE '^<[0-7]>[0-9]{4}-[0-9]{2}-' "$work/log-$d"; then fail "xenpath-$d: a timestamp under the journal"; fi
    p=$(eval "echo \$pid_$d")
    kill -TERM "$p"
    rc=0; wait "$p" || rc=$?
    [ $rc -eq 0 ] || { tail "$work/log-$d"; fail "xenpath-$d: SIGTERM: exit $rc"; }
    grep -q 'STOPPING=1' "$work/notify-$d" || fail "xenpath-$d: no STOPPING=1"
    say "xenpath-$d: $(grep -c WATCHDOG=1 "$work/notify-$d") WATCHDOG=1, STOPPING=1, SIGTERM exit 0; log: $(head -n1 "$work/log-$d")"
  done
fi
[ ! -e /run/xenpath/xenpath-blkback.sock ] || fail "the control socket outlived the daemon"
cp "$work/xenpath-blkback" "$work/xenpath-netback" /etc/default/
say "PASS ($mode, $(( $(date +%s) - t0 )) s)"
