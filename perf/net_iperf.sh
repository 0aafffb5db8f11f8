#!/usr/bin/env bash
# iperf3 TCP through the whole simulated netif path, against a veth pair.
#
#   netns xpguest: tap xpg0 10.77.0.2/24  <- xenpath-netguest (SimTapGuest:
#       netfront rings, grants) -> VifQueue -> the VIF's DPDK port vif<domid>.0 ->
#   netns xphost:  vif<domid>.0 10.77.0.1/24
#
# for each VIF port: net_tap (no offloads into the host, a syscall per frame)
# and, where /dev/vhost-net opens, virtio_user over vhost-net (TSO and
# checksum offloads, virtqueues; netback's default port there); each twice:
# the guest with Linux netfront's default offloads (csum + TCP GSO via
# a vnet header on its tap) and without; then the same iperf3 over a plain
# veth pair (xpvg/xpvh, 10.78.0.0/24 in two more namespaces), with default
# offloads and with them off, as the reference. Prints Gb/s both ways and
# the ratios. XP_NETGUEST_ARGS adds xenpath-netguest options (e.g.
# "--copy-below 0 --port-poll-us 200").
# Everything it creates is removed on exit. Needs root (namespaces, taps);
# where they cannot be created (CI containers) it says so and exits 0.
#
# Usage: perf/net_iperf.sh [--json OUT.json] [build dir (default build-rel)] [seconds (default 3)]
# --json: the table as {"seconds", "online_cpus", "loadavg", "iperf": [{path,
# up_gbps, down_gbps}]} (perf/plot.py draws it).
set -uo pipefail
json_out=
if [ "${1:-}" = "--json" ]; then
  json_out=${2:?--json needs a file}
  shift 2
fi
here=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$here/build-rel}
secs=${2:-3}
domid=${XP_DOMID:-77}
guest_bin=$build/tools/xenpath-netguest
vif=vif$domid.0
ns_g=xpguest ns_h=xphost ns_vg=xpvguest ns_vh=xpvhost
tmp=$(mktemp -d /tmp/xenpath-iperf.XXXXXX)
guest_pid= srv_pid=

skip() { echo "net_iperf: SKIP: $*"; exit 0; }
cleanup() {
  [ -n "$srv_pid" ] && kill "$srv_pid" 2>/dev/null
  [ -n "$guest_pid" ] && kill -INT "$guest_pid" 2>/dev/null && wait "$guest_pid" 2>/dev/null
  for n in $ns_g $ns_h $ns_vg $ns_vh; do ip netns del "$n" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v iperf3 >/dev/null || skip "iperf3 not installed"
command -v ip >/dev/null || skip "iproute2 not installed"
command -v python3 >/dev/null || skip "python3 (to read iperf3 JSON) not installed"
[ -x "$guest_bin" ] || skip "$guest_bin not built (ninja -C $build xenpath-netguest)"
[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces and taps"
for n in $ns_g $ns_h $ns_vg $ns_vh; do
  ip netns list | grep -qw "$n" && { echo "net_iperf: netns $n exists already; remove it first" >&2; exit 1; }
done
ip netns add $ns_g 2>/dev/null || skip "cannot create network namespaces here"
ip netns add $ns_h || skip "cannot create network namespaces here"
[ -c /dev/net/tun ] || skip "no /dev/net/tun"

# iperf3 JSON -> Gb/s received (the sender's view can include unacked data).
gbps() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' "$1" 2>/dev/null || echo 0; }

run_pair() {  # server-ns client-ns server-addr label
  local sns=$1 cns=$2 addr=$3 label=$4
  ip netns exec "$sns" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
  srv_pid=$!
  sleep 0.3
  ip netns exec "$cns" iperf3 -c "$addr" -t "$secs" -J >"$tmp/$label-up.json" 2>&1 || true
  wait $srv_pid 2>/dev/null; srv_pid=
  ip netns exec "$sns" iperf3 -s -1 -B "$addr" >/dev/null 2>&1 &
  srv_pid=$!
  sleep 0.3
  ip netns exec "$cns" iperf3 -c "$addr" -t "$secs" -R -J >"$tmp/$label-down.json" 2>&1 || true
  wait $srv_pid 2>/dev/null; srv_pid=
}

# --- the xenpath path ---------------------------------------------------
run_xenpath() {  # label netguest-args...
  local label=$1; shift
  rm -f "$tmp/ready"
  "$guest_bin" --domid "$domid" "$@" ${XP_NETGUEST_ARGS:-} --guest-netns $ns_g --guest-tap xpg0 \
    --ready-file "$tmp/ready" >"$tmp/$label.out" 2>"$tmp/$label.err" &
  guest_pid=$!
  for _ in $(seq 100); do [ -e "$tmp/ready" ] && break; kill -0 $guest_pid 2>/dev/null || break; sleep 0.1; done
  if [ ! -e "$tmp/ready" ]; then
    echo "net_iperf: xenpath-netguest did not start:" >&2; tail -5 "$tmp/$label.err" >&2
    guest_pid=; exit 1
  fi
  ip link set "$vif" netns $ns_h
  ip -n $ns_h addr add 10.77.0.1/24 dev "$vif"
  ip -n $ns_h link set "$vif" up
  ip -n $ns_h link set lo up
  # netif carries at most 65535 bytes per packet, as Linux netfront limits
  # its GSO size.
  ip -n $ns_g link set xpg0 gso_max_size 65000 2>/dev/null || true
  ip -n $ns_g addr add 10.77.0.2/24 dev xpg0
  ip -n $ns_g link set xpg0 up
  ip -n $ns_g link set lo up
  # up = guest -> host (guest TX ring), down = host -> guest (guest RX ring)
  run_pair $ns_h $ns_g 10.77.0.1 "$label"
  kill -INT $guest_pid; wait $guest_pid 2>/dev/null; guest_pid=
  tail -1 "$tmp/$label.out" >"$tmp/$label.counters"
}
tap_tmpl='net_tap_vif{domid}_{devid},iface=vif{domid}.{devid}'
vhost_tmpl='net_virtio_user_vif{domid}_{devid},path=/dev/vhost-net,iface=vif{domid}.{devid},queues={queues},cq=1,queue_size=1024,mrg_rxbuf=1'
run_xenpath xp --devargs "$tap_tmpl"
run_xenpath xpnooff --no-offloads --devargs "$tap_tmpl"
vhost_why=
# (-c first: a redirection would create a missing /dev/vhost-net as a file.)
if [ ! -c /dev/vhost-net ] || ! { exec 3<>/dev/vhost-net; } 2>/dev/null; then
  vhost_why="/dev/vhost-net does not open here (modprobe vhost_net; CONFIG_VHOST_NET)"
else
  exec 3>&-
  run_xenpath vh --devargs "$vhost_tmpl"
  run_xenpath vhnooff --no-offloads --devargs "$vhost_tmpl"
fi

# --- the veth reference ------------------------------------------------------
ip netns add $ns_vg && ip netns add $ns_vh || skip "cannot create network namespaces here"
ip link add xpvg netns $ns_vg type veth peer name xpvh netns $ns_vh
ip -n $ns_vh addr add 10.78.0.1/24 dev xpvh
ip -n $ns_vg addr add 10.78.0.2/24 dev xpvg
for n in $ns_vg $ns_vh; do ip -n $n link set lo up; done
ip -n $ns_vh link set xpvh up
ip -n $ns_vg link set xpvg up
# The same 1500-byte MTU and no GSO/TSO/checksum offload as the tap path,
# and the default (offloaded) veth for scale.
run_pair $ns_vh $ns_vg 10.78.0.1 veth
for n in $ns_vg $ns_vh; do ip netns exec $n ethtool -K "$( [ $n = $ns_vg ] && echo xpvg || echo xpvh )" tso off gso off gro off tx off rx off >/dev/null 2>&1; done
run_pair $ns_vh $ns_vg 10.78.0.1 vethnooff

xu=$(gbps "$tmp/xp-up.json") xd=$(gbps "$tmp/xp-down.json")
xnu=$(gbps "$tmp/xpnooff-up.json") xnd=$(gbps "$tmp/xpnooff-down.json")
vu=$(gbps "$tmp/veth-up.json") vd=$(gbps "$tmp/veth-down.json")
nu=$(gbps "$tmp/vethnooff-up.json") nd=$(gbps "$tmp/vethnooff-down.json")
ratio() { python3 -c 'import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print("%.2f" % (a/b) if b>0 else "-")' "$1" "$2"; }
echo
echo "iperf3 TCP, $secs s per direction (2 shared CPUs: noisy)"
printf '%-40s %11s %11s\n' "path" "guest->host" "host->guest"
printf '%-40s %11s %11s\n' "xenpath net_tap, guest csum+GSO offloads" "$xu" "$xd"
printf '%-40s %11s %11s\n' "xenpath net_tap, guest without offloads" "$xnu" "$xnd"
if [ -z "$vhost_why" ]; then
  hu=$(gbps "$tmp/vh-up.json") hd=$(gbps "$tmp/vh-down.json")
  hnu=$(gbps "$tmp/vhnooff-up.json") hnd=$(gbps "$tmp/vhnooff-down.json")
  printf '%-40s %11s %11s\n' "xenpath vhost-net, guest csum+GSO" "$hu" "$hd"
  printf '%-40s %11s %11s\n' "xenpath vhost-net, guest without" "$hnu" "$hnd"
fi
printf '%-40s %11s %11s\n' "veth, default offloads" "$vu" "$vd"
printf '%-40s %11s %11s\n' "veth, offloads off" "$nu" "$nd"
printf '%-40s %11s %11s\n' "ratio net_tap/veth (offloads)" "$(ratio "$xu" "$vu")" "$(ratio "$xd" "$vd")"
printf '%-40s %11s %11s\n' "ratio net_tap/veth (no offloads)" "$(ratio "$xnu" "$nu")" "$(ratio "$xnd" "$nd")"
if [ -z "$vhost_why" ]; then
  printf '%-40s %11s %11s\n' "ratio vhost-net/veth (offloads)" "$(ratio "$hu" "$vu")" "$(ratio "$hd" "$vd")"
  printf '%-40s %11s %11s\n' "ratio vhost-net/veth (no offloads)" "$(ratio "$hnu" "$nu")" "$(ratio "$hnd" "$nd")"
  printf '%-40s %11s %11s\n' "ratio vhost-net/net_tap (offloads)" "$(ratio "$hu" "$xu")" "$(ratio "$hd" "$xd")"
else
  echo "xenpath vhost-net: SKIPPED: $vhost_why"
fi
echo "(Gb/s received)"
if [ -n "$json_out" ]; then
  {
    echo "xenpath net_tap, offloads,$xu,$xd"
    echo "xenpath net_tap, no offloads,$xnu,$xnd"
    [ -z "$vhost_why" ] && echo "xenpath vhost-net, offloads,$hu,$hd" && echo "xenpath vhost-net, no offloads,$hnu,$hnd"
    echo "veth, offloads,$vu,$vd"
    echo "veth, no offloads,$nu,$nd"
  } | python3 -c '
import json, os, sys
rows = [l.rstrip("\n").split(",") for l in sys.stdin if l.strip()]
json.dump({"seconds": float(sys.argv[2]), "online_cpus": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3],
           "iperf": [{"path": p, "up_gbps": float(u), "down_gbps": float(d)} for p, u, d in rows]},
          open(sys.argv[1], "w"), indent=1)' "$json_out" "$secs" && echo "JSON: $json_out"
fi
echo "xenpath counters, net_tap, offloads:    $(cat "$tmp/xp.counters")"
echo "xenpath counters, net_tap, no offloads: $(cat "$tmp/xpnooff.counters")"
if [ -z "$vhost_why" ]; then
  echo "xenpath counters, vhost-net, offloads:    $(cat "$tmp/vh.counters")"
  echo "xenpath counters, vhost-net, no offloads: $(cat "$tmp/vhnooff.counters")"
fi
