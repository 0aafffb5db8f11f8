#!/bin/bash
# The lab's test plan, run by dom0's /init once Xen's control plane is up. For each backend named
# on the kernel command line (lab.backends=xenpath,kernel,qdisk) it creates a PV guest with one
# disk (a raw file) and one vif, lets the guest run fio and iperf3 against them, destroys it and
# checks that the backend let go of everything; the full plan adds a reconnect, a destroy in the
# middle of I/O and hot-unplug. Results go to the console as
#   LAB|res|<backend>|<metric>|<value>        LAB|check|<backend>|<check>|ok|fail|<detail>
# and the exit status is the number of failed checks (0: all passed).
set -u
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^lab\.$1=//p" | tail -n1; }
PLAN="$(arg plan)"; PLAN="${PLAN:-short}"
BACKENDS="$(arg backends | tr '+' ',')"; BACKENDS="${BACKENDS:-xenpath,kernel}"
SECS="$(arg secs)"
case "$PLAN" in
  full) TESTS=verify,randread,seqread,net_tx,net_rx; SECS="${SECS:-10}" ;;
  crossover) TESTS=serve; SECS="${SECS:-5}"; BACKENDS=xenpath ;;
  *) TESTS=verify,randread,net_tx; SECS="${SECS:-5}" ;;
esac
# Extra xenpath-netback options (the crossover plan sets --tx-copy-below per mode).
NETBACK_ARGS=""
DOM0_IP=169.254.100.1 GUEST_IP=169.254.100.2
DISK=/lab/disk/disk.img
# The package's hotplug script (/etc/xen/scripts/xenpath), named as an operator names it. It only
# reports hotplug-status, so the kernel column's vif (whose dom0 end the plan configures) uses it too.
HOTPLUG=xenpath
CONLOG=/var/log/xen/console
failures=0
gen=0

say() { echo "LAB|$*"; }
now() { cut -d' ' -f1 /proc/uptime; }
res() { say "res|$1|$2|$3"; }
check() {  # backend name ok|fail detail
  say "check|$1|$2|$3|${4:-}"
  [ "$3" = ok ] || failures=$((failures + 1))
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Waits until the guest's console log has a LABG line matching $2 (extended regex); $3 seconds.
wait_guest() {
  local name="$1" pat="$2" limit="$3" i=0
  while [ $i -lt $((limit * 5)) ]; do
    grep -qE "^LABG\|($pat)" "$CONLOG/guest-$name.log" 2>/dev/null && return 0
    xl domid "$name" >/dev/null 2>&1 || return 1
    sleep 0.2; i=$((i + 1))
  done
  return 1
}
glines() { grep -a '^LABG|' "$CONLOG/guest-$1.log" 2>/dev/null | tr -d '\r'; }
gfield() { glines "$1" | grep "^LABG|$2|" | tail -n1 | cut -d'|' -f"$3"; }

# Dom0's bridge with the lab address, as a Xen host has one. Every guest's vif names it
# (bridge=xenbr0) and joins it with no hand work: kernel netback's vif<domid>.0 through Xen's
# vif-bridge hotplug script, xenpath-netback's port interface by the daemon itself (rtnetlink).
setup_bridge() {
  modprobe bridge 2>/dev/null
  ip link add xenbr0 type bridge 2>/dev/null
  ip addr add "$DOM0_IP/24" dev xenbr0 2>/dev/null
  ip link set xenbr0 up
}
# The bridge dom0's end of the guest's vif is in ("" when none).
vif_master() { basename "$(readlink "/sys/class/net/vif$1.0/master" 2>/dev/null)" 2>/dev/null; }

# Every backend directory and kernel backend device of domain $2 gone within 20 s.
backend_released() {
  local domid="$1" i=0
  while [ $i -lt 100 ]; do
    if ! xenstore-ls /local/domain/0/backend 2>/dev/null | grep -qE "^ +$domid = " &&
       ! ls /sys/bus/xen-backend/devices 2>/dev/null | grep -qE -- "-$domid-"; then
      return 0
    fi
    sleep 0.2; i=$((i + 1))
  done
  return 1
}

# xenpath daemon stats: all gauges that count per-guest resources back to zero within 20 s.
STATS_CHECK='
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print("unreadable:", e); sys.exit(2)
# The gauges that return to 0 once no guest is connected (docs/blkback.md; xenpath-netback
# reports its driver gauges under "driver" and one entry per VIF under "vifs").
got = {}
for sec in ("xenbus", "driver"):
    for k in ("devices", "connected"):
        if isinstance(d.get(sec, {}).get(k), int): got[sec + "." + k] = d[sec][k]
for k in ("mapped_grant_pages", "bound_ports"):
    if isinstance(d.get(k), int): got[k] = d[k]
for k in ("devices", "vifs"):
    if isinstance(d.get(k), list): got[k + "[]"] = len(d[k])
if len(got) < 3:
    print("unrecognised stats file:", ",".join(d.keys())); sys.exit(2)
print(" ".join("%s=%d" % kv for kv in sorted(got.items())))
sys.exit(1 if any(got.values()) else 0)'
# xenpath-netback's counters, summed over its VIFs' queues and its workers, from the stats file:
#   python3 -c "$NET_COUNTERS" <stats file> <daemon pid> kv|values <key>...
# "kv" prints key=value pairs (the plan's netstats line), "values" just the numbers (for awk).
# Keys: any per-queue counter; the workers' busy_ns, iterations, busy_iterations, sleeps; busy_s;
# uptime_s; cpu_ns (the daemon's utime + stime, from /proc).
NET_COUNTERS='
import json, os, sys
d = json.load(open(sys.argv[1]))
q = [q for v in d.get("vifs", []) for q in v.get("queues", [])]
w = d.get("workers", [])
def get(k):
    if k in ("busy_ns", "iterations", "busy_iterations", "sleeps"):
        return "%d" % sum(int(x.get(k, 0)) for x in w)
    if k == "busy_s":
        return "%.1f" % (sum(int(x.get("busy_ns", 0)) for x in w) / 1e9)
    if k == "uptime_s":
        return "%.0f" % d.get("uptime_s", 0)
    if k == "cpu_ns":
        f = open("/proc/%s/stat" % sys.argv[2]).read().rsplit(")", 1)[1].split()
        return "%d" % ((int(f[11]) + int(f[12])) * 1000000000 // os.sysconf("SC_CLK_TCK"))
    return "%d" % sum(int(x.get(k, 0)) for x in q)
keys = sys.argv[4:]
print(" ".join((k + "=" if sys.argv[3] == "kv" else "") + get(k) for k in keys))'
daemon_released() {
  local f="$1" i=0 out=""
  while [ $i -lt 100 ]; do
    out="$(python3 -c "$STATS_CHECK" "$f" 2>&1)" && { echo "$out"; return 0; }
    sleep 0.2; i=$((i + 1))
  done
  echo "$out"; return 1
}

# ---- guest lifecycle ----
# guest <backend> <tests> <with_vif 0|1> : creates it, prints its name
# GUEST_DISK (default $DISK) and GUEST_EXTRA (more lab.* arguments) change one guest's disk and
# test arguments: the VHD step uses them.
GUEST_DISK="" GUEST_EXTRA=""
guest_cfg() {
  local b="$1" name="$2" tests="$3" vif="$4" disk target="${GUEST_DISK:-$DISK}"
  case "$b" in
    # libxl's phy backend takes format=raw only: xenpath-blkback finds a VHD by its footer.
    xenpath) disk="format=raw,vdev=xvda,access=rw,backendtype=phy,script=$HOTPLUG,target=$target" ;;
    kernel)  disk="format=raw,vdev=xvda,access=rw,backendtype=phy,target=$DISK" ;;
    qdisk)   disk="format=raw,vdev=xvda,access=rw,backendtype=qdisk,target=$DISK" ;;
  esac
  cat > "/lab/$name.cfg" <<EOF
name = "$name"
type = "pv"
kernel = "/lab/vmlinuz"
ramdisk = "/lab/guest.cpio"
extra = "console=hvc0 loglevel=4 lab.tests=$tests lab.secs=$SECS lab.ip=$GUEST_IP/24 lab.srv=$DOM0_IP $GUEST_EXTRA"
memory = 512
vcpus = 1
on_poweroff = "destroy"
on_crash = "destroy"
disk = [ '$disk' ]
EOF
  # xenpath: the daemon attaches the port itself, the hotplug script has nothing to do; the kernel's
  # vif runs libxl's default script, vif-bridge.
  local vscript=""
  [ "$b" = xenpath ] && vscript=",script=$HOTPLUG"
  [ "$vif" = 1 ] && echo "vif = [ 'mac=00:16:3e:4c:41:42,bridge=xenbr0$vscript' ]" >> "/lab/$name.cfg"
}

create() {  # backend tests vif -> sets NAME DOMID CREATE_S
  gen=$((gen + 1))
  NAME="lab-$1-$gen"
  guest_cfg "$1" "$NAME" "$2" "$3"
  local t0; t0="$(now)"
  if ! timeout 120 xl create -q "/lab/$NAME.cfg" > "/tmp/$NAME.create" 2>&1; then
    sed 's/^/  xl: /' "/tmp/$NAME.create" | tail -n 20
    # Why libxl gave up (a hotplug script's failure is in the hotplug log).
    tail -n 15 "/var/log/xen/xl-$NAME.log" /var/log/xen/xen-hotplug.log 2>/dev/null | sed 's/^/  xl-log: /'
    DOMID=""; return 1
  fi
  CREATE_S="$(elapsed "$t0")"
  DOMID="$(xl domid "$NAME")"
  return 0
}

destroy() {  # name
  timeout 60 xl destroy "$1" >/dev/null 2>&1
}

dump_guest() {
  echo "---- console of $1 (last 40 lines) ----"
  tail -n 40 "$CONLOG/guest-$1.log" 2>/dev/null | tr -d '\r'
  echo "----"
}

# ---- per-backend setup ----
# as_unit <daemon> <args>: runs the installed daemon with its systemd unit's privileges (dom0 has no
# systemd): CapabilityBoundingSet= and NoNewPrivileges=, so the lab proves the unit's capability set
# suffices on real Xen.
as_unit() {
  local d="$1" caps bset="-all" c; shift
  caps="$(sed -n 's/^CapabilityBoundingSet=//p' "/lib/systemd/system/$d.service")"
  for c in $caps; do bset="$bset,+$(echo "${c#CAP_}" | tr '[:upper:]' '[:lower:]')"; done
  exec setpriv --no-new-privs --inh-caps=-all --bounding-set="$bset" -- "/usr/sbin/$d" "$@"
}
BLK_PID="" NET_PID=""
HAVE_NETBACK=0
start_backend() {
  local b="$1"
  case "$b" in
    xenpath)
      # The kernel must not serve backend/vbd or backend/vif alongside the daemons.
      rmmod xen-blkback 2>/dev/null; rmmod xen-netback 2>/dev/null
      if [ -d /sys/module/xen_blkback ] || [ -d /sys/module/xen_netback ]; then
        check xenpath kernel-backends-unloaded fail; return 1
      fi
      # The package's modprobe.d snippet: a load by name must not bring the kernel's back.
      modprobe xen-blkback 2>/dev/null; modprobe xen-netback 2>/dev/null
      if [ -d /sys/module/xen_blkback ] || [ -d /sys/module/xen_netback ]; then
        check xenpath modprobe-snippet fail "modprobe loaded a kernel backend"; return 1
      fi
      local missing
      missing="$(ldd /usr/sbin/xenpath-* /usr/bin/xenpath-* 2>&1 | grep 'not found' | sort -u | tr '\n' ' ')"
      [ -z "$missing" ] || { check xenpath runtime-libraries fail "$missing"; return 1; }
      if [ ! -x /usr/sbin/xenpath-blkback ]; then
        check xenpath blkback-binary fail "not in the image"; return 1
      fi
      as_unit xenpath-blkback --platform xen --stats-file /run/xenpath-blkback.json --stats-interval-ms 200 \
        > /run/xenpath-blkback.log 2>&1 &
      BLK_PID=$!
      if [ -x /usr/sbin/xenpath-netback ]; then
        # vhost-net makes virtio_user (offloads, virtqueues) netback's default VIF port; without
        # it netback falls back to net_tap.
        modprobe vhost_net 2>/dev/null || true
        if [ -c /dev/vhost-net ]; then say "xenpath-netback VIF port: virtio_user over vhost-net"
        else say "xenpath-netback VIF port: net_tap (no /dev/vhost-net)"; fi
        # shellcheck disable=SC2086
        as_unit xenpath-netback --platform xen --stats-file /run/xenpath-netback.json --stats-interval-ms 200 \
          $NETBACK_ARGS > /run/xenpath-netback.log 2>&1 &
        NET_PID=$!
        HAVE_NETBACK=1
      else
        HAVE_NETBACK=0
        res xenpath net "not available"
      fi
      local i=0
      while [ ! -s /run/xenpath-blkback.json ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
      if ! kill -0 "$BLK_PID" 2>/dev/null || [ ! -s /run/xenpath-blkback.json ]; then
        check xenpath blkback-start fail "$(tail -n 5 /run/xenpath-blkback.log | tr '\n' ' ')"; return 1
      fi
      if [ $HAVE_NETBACK = 1 ]; then
        i=0
        while [ ! -s /run/xenpath-netback.json ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -0 "$NET_PID" 2>/dev/null && [ -s /run/xenpath-netback.json ] ||
          { check xenpath netback-start fail "$(tail -n 5 /run/xenpath-netback.log | tr '\n' ' ')"; HAVE_NETBACK=0; }
      fi ;;
    kernel|qdisk)
      # Past the package's modprobe.d snippet, as an operator who opts out does.
      modprobe --ignore-install xen-blkback || { check "$b" modprobe fail xen-blkback; return 1; }
      modprobe --ignore-install xen-netback || { check "$b" modprobe fail xen-netback; return 1; }
      HAVE_NETBACK=1
      [ "$b" = qdisk ] && { HAVE_NETBACK=0; res qdisk net "disk only"; } ;;
  esac
  return 0
}

stop_backend() {
  local p
  for p in $BLK_PID $NET_PID; do kill "$p" 2>/dev/null; done
  for p in $BLK_PID $NET_PID; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null
  done
  BLK_PID="" NET_PID=""
}

daemons_alive_and_released() {  # backend label
  [ "$1" = xenpath ] || return 0
  local out
  if kill -0 "$BLK_PID" 2>/dev/null; then
    out="$(daemon_released /run/xenpath-blkback.json)" && check xenpath "$2-blkback-stats" ok "$out" ||
      check xenpath "$2-blkback-stats" fail "$out"
  else
    check xenpath "$2-blkback-alive" fail "$(tail -n 5 /run/xenpath-blkback.log | tr '\n' ' ')"
  fi
  if [ $HAVE_NETBACK = 1 ]; then
    if kill -0 "$NET_PID" 2>/dev/null; then
      out="$(daemon_released /run/xenpath-netback.json)" && check xenpath "$2-netback-stats" ok "$out" ||
        check xenpath "$2-netback-stats" fail "$out"
    else
      check xenpath "$2-netback-alive" fail "$(tail -n 5 /run/xenpath-netback.log | tr '\n' ' ')"
    fi
  fi
}

# ---- the plan for one backend ----
run_backend() {
  local b="$1" tests="$TESTS" vif
  say "backend|$b|start|$(now)"
  start_backend "$b" || { stop_backend; return; }
  vif=$HAVE_NETBACK
  [ $vif = 1 ] || tests="$(echo "$tests" | tr ',' '\n' | grep -v '^net_' | paste -sd, -)"

  # 1. connect + the measurements
  if ! create "$b" "$tests" "$vif"; then
    check "$b" create fail "xl create failed"; stop_backend; return
  fi
  check "$b" create ok "domid $DOMID in ${CREATE_S}s"
  res "$b" create_s "$CREATE_S"
  # Guest boot plus every test, with room for a host whose cores other work shares.
  local budget=$((300 + 12 * SECS * $(echo "$tests" | tr ',' '\n' | wc -l)))
  if wait_guest "$NAME" 'done' "$budget"; then :; else check "$b" guest-finished fail "no done line"; fi
  glines "$NAME" | sed 's/^/  guest: /'
  local up; up="$(gfield "$NAME" disk 4)"
  if [ "$(gfield "$NAME" disk 3)" = up ]; then res "$b" disk_up_s "$up"; check "$b" connect ok "xvda up at ${up}s guest time"
  else check "$b" connect fail "xvda did not appear"; fi
  local t
  for t in $(echo "$tests" | tr ',' ' '); do
    case "$(gfield "$NAME" "$t" 3)" in
      ok)
        case "$t" in
          verify) check "$b" verify ok "32 MiB written and read back, 0 mismatches"
                  res "$b" verify_write_kib_s "$(gfield "$NAME" verify 4)" ;;
          randread) res "$b" randread_4k_qd16_iops "$(gfield "$NAME" randread 4)" ;;
          seqread) res "$b" seqread_128k_kib_s "$(gfield "$NAME" seqread 5)" ;;
          net_tx) res "$b" iperf_guest_to_dom0_kbit_s "$(gfield "$NAME" net_tx 4)" ;;
          net_rx) res "$b" iperf_dom0_to_guest_kbit_s "$(gfield "$NAME" net_rx 4)" ;;
        esac ;;
      *) check "$b" "$t" fail "$(gfield "$NAME" "$t" 4)" ;;
    esac
  done
  [ $failures -gt 0 ] && dump_guest "$NAME"
  # xenpath-netback's counters for this guest, before it goes (diagnosis of the iperf3 figures).
  if [ "$b" = xenpath ] && [ $HAVE_NETBACK = 1 ]; then
    # Worker iterations and sleeps per packet: the system calls a packet costs scale with them.
    say "netstats|$(python3 -c "$NET_COUNTERS" /run/xenpath-netback.json "$NET_PID" kv tx_packets tx_dropped \
      tx_port_dropped tx_rate_limited rx_packets rx_dropped rx_expired rx_stalls rx_stall_dropped \
      rx_gro_packets rx_gro_merged rx_copy_failures busy_s iterations busy_iterations sleeps uptime_s 2>&1)"
    say "netstats|packet_buffers_in_use=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("packet_buffers_in_use"))' /run/xenpath-netback.json 2>&1)"
  fi
  # dom0's side of the vif (kernel netback's interface or xenpath's tap): its drops and errors, and
  # what dom0's IP/TCP saw (checksum errors, retransmissions), to explain the iperf3 figures.
  if [ $HAVE_NETBACK = 1 ]; then
    if [ "$(vif_master "$DOMID")" = xenbr0 ]; then check "$b" vif-bridged ok "vif$DOMID.0 in xenbr0, no hand work"
    else check "$b" vif-bridged fail "vif$DOMID.0 master: '$(vif_master "$DOMID")'"; fi
    say "netdiag|$b|$(ip -s link show "vif$DOMID.0" 2>&1 | tr -s ' \n' ' ')"
    say "netdiag|$b|$(nstat -az 2>/dev/null | grep -E 'InCsumErrors|InHdrErrors|InDiscards|TcpRetransSegs|TcpInSegs|TcpOutSegs|TCPTimeouts|TcpExtTCPBacklogDrop' | tr -s ' \n' ' ')"
  fi
  destroy "$NAME"
  backend_released "$DOMID" && check "$b" release ok "backend nodes gone" || check "$b" release fail "backend nodes of $DOMID remain"
  daemons_alive_and_released "$b" destroy

  # 1b. xenpath only: the same daemon serves a differencing VHD child of a base VHD.
  [ "$b" = xenpath ] && run_vhd "$vif"

  if [ "$PLAN" = full ]; then
    # 2. reconnect: a second guest on the same backends, same disk, data still verifiable.
    if create "$b" verify "$vif" && wait_guest "$NAME" 'done' 180 && [ "$(gfield "$NAME" verify 3)" = ok ]; then
      check "$b" reconnect ok "second guest domid $DOMID verified"
    else
      check "$b" reconnect fail "$(glines "$NAME" | tail -n 3 | tr '\n' ' ')"; dump_guest "$NAME"
    fi
    [ -n "$DOMID" ] && { destroy "$NAME"; backend_released "$DOMID" || check "$b" reconnect-release fail; }
    daemons_alive_and_released "$b" reconnect

    # 3. destroy in the middle of I/O (requests in flight, grants mapped).
    if create "$b" busy "$vif" && wait_guest "$NAME" 'busy' 120; then
      sleep 3
      destroy "$NAME"
      backend_released "$DOMID" && check "$b" destroy-mid-io ok || check "$b" destroy-mid-io fail "backend nodes remain"
    else
      check "$b" destroy-mid-io fail "guest did not start I/O"; [ -n "$DOMID" ] && destroy "$NAME"
    fi
    daemons_alive_and_released "$b" mid-io

    # 4. hot-unplug of the disk and the vif from a running guest.
    if create "$b" idle "$vif" && wait_guest "$NAME" 'done' 120; then
      local ok=1 d
      timeout 60 xl block-detach "$NAME" xvda >/dev/null 2>&1 || ok=0
      [ "$vif" = 1 ] && { timeout 60 xl network-detach "$NAME" 0 >/dev/null 2>&1 || ok=0; }
      for d in vbd vif qdisk; do
        for _ in $(seq 100); do
          xenstore-ls "/local/domain/0/backend/$d/$DOMID" >/dev/null 2>&1 || break; sleep 0.2
        done
        xenstore-ls "/local/domain/0/backend/$d/$DOMID" >/dev/null 2>&1 && ok=0
      done
      [ $ok = 1 ] && check "$b" hot-unplug ok || check "$b" hot-unplug fail "detach failed or nodes remain"
      destroy "$NAME"
    else
      check "$b" hot-unplug fail "guest did not come up"; [ -n "$DOMID" ] && destroy "$NAME"
    fi
    daemons_alive_and_released "$b" hot-unplug
  fi
}

# ---- a VHD chain (issue 11) ----
# The base is the raw disk as the first guest left it (fio's pattern in its first 32 MiB),
# converted to a dynamic VHD; the guest runs on a fresh differencing child, writes and verifies
# 32 MiB at 64 MiB (allocating in the child) and reads its whole disk (sha256): base data, its own
# writes and zeros. After the guest is gone, dom0 reads the chain with xenpath-img convert: the
# two digests must agree, the child must pass xenpath-img check, and the base must be unchanged.
run_vhd() {
  local vif="$1" base=/lab/disk/base.vhd child=/lab/disk/child.vhd out=/lab/disk/chain.raw sum0 gsum dsum
  rm -f "$base" "$child" "$out"
  if ! xenpath-img convert -O vhd "$DISK" "$base" >/tmp/vhd.log 2>&1 || ! xenpath-img snapshot "$base" "$child" >>/tmp/vhd.log 2>&1; then
    check xenpath vhd-create fail "$(tail -n 3 /tmp/vhd.log | tr '\n' ' ')"; return
  fi
  # The RAM disk (320 MiB) cannot hold the raw disk, the chain and the chain read back: the raw
  # disk goes while the chain is in use and comes back (empty, as at boot) for the next column.
  rm -f "$DISK"
  sum0="$(sha256sum "$base" | cut -d' ' -f1)"
  res xenpath vhd_chain "$(xenpath-img info "$child" 2>&1 | tr '\n|' '  ' | cut -c1-200)"
  GUEST_DISK="$child" GUEST_EXTRA="lab.voff=$((64 << 20))"
  if ! create xenpath verify,digest "$vif"; then
    GUEST_DISK="" GUEST_EXTRA=""; check xenpath vhd-create fail "xl create failed"
    rm -f "$base" "$child"; fallocate -l 256M "$DISK"; return
  fi
  GUEST_DISK="" GUEST_EXTRA=""
  wait_guest "$NAME" 'done' 600 || check xenpath vhd-guest-finished fail "no done line"
  glines "$NAME" | sed 's/^/  guest: /'
  if [ "$(gfield "$NAME" verify 3)" = ok ]; then
    check xenpath vhd-verify ok "32 MiB written into the child and read back, 0 mismatches"
    res xenpath vhd_verify_write_kib_s "$(gfield "$NAME" verify 4)"
  else
    check xenpath vhd-verify fail "$(gfield "$NAME" verify 4)"; dump_guest "$NAME"
  fi
  gsum="$(gfield "$NAME" digest 4)"
  destroy "$NAME"
  backend_released "$DOMID" && check xenpath vhd-release ok "backend nodes gone" ||
    check xenpath vhd-release fail "backend nodes of $DOMID remain"
  daemons_alive_and_released xenpath vhd
  if xenpath-img check "$child" >/tmp/vhd.log 2>&1; then check xenpath vhd-check ok "xenpath-img check"
  else check xenpath vhd-check fail "$(tail -n 3 /tmp/vhd.log | tr '\n' ' ')"; fi
  xenpath-img convert -O raw "$child" "$out" >/tmp/vhd.log 2>&1 && dsum="$(sha256sum "$out" | cut -d' ' -f1)"
  rm -f "$out"
  if [ -n "$gsum" ] && [ "$gsum" = "${dsum:-}" ]; then
    check xenpath vhd-readback ok "the guest's disk = the chain read in dom0 ($gsum)"
  else
    check xenpath vhd-readback fail "guest ${gsum:-none} vs chain ${dsum:-none}"
  fi
  [ "$(sha256sum "$base" | cut -d' ' -f1)" = "$sum0" ] && check xenpath vhd-base-untouched ok ||
    check xenpath vhd-base-untouched fail "the base VHD changed"
  rm -f "$base" "$child"
  fallocate -l 256M "$DISK" || check xenpath vhd-disk-back fail "fallocate $DISK"
}

# ---- the copy/map crossover of guest TX (issue 4) ----
# The guest serves iperf3; dom0 runs `iperf3 -R` so the guest sends, over UDP datagrams of a
# few sizes (one slot each: 128 header bytes copied, the remainder copied or mapped) and TCP
# (GSO: page-sized slots). For each, the netback workers' busy time (reactor busy_ns: time in
# iterations that did work, not the poll-window spin) over the guest packets moved is the
# backend's cost per packet. The daemon runs once per mode: --tx-copy-below 4097 (copy every
# byte, the default) and 0 (map every remainder, as Linux netback), alternating, twice each
# (lab.xo_rounds=N), so that drift on a shared host hits both modes alike. The daemon's process
# CPU time (utime+stime, which includes the poll-window spin) is reported beside it.
xo_snap() {
  sleep 0.6
  python3 -c "$NET_COUNTERS" /run/xenpath-netback.json "$NET_PID" values \
    tx_packets tx_bytes busy_ns tx_mapped_pages tx_copied_bytes cpu_ns 2>/dev/null || echo "0 0 0 0 0 0"
}

xo_case() {  # mode case iperf3-args...
  local mode="$1" case="$2"; shift 2
  local a b out kbps
  a="$(xo_snap)"
  out="$(timeout $((SECS + 30)) iperf3 -c "$GUEST_IP" -R -t "$SECS" -f k "$@" 2>&1)"
  b="$(xo_snap)"
  kbps="$(echo "$out" | grep receiver | tail -n1 | awk '{for (f = 1; f < NF; f++) if ($(f + 1) == "Kbits/sec") print $f}')"
  # LAB|xo|case|mode|packets|bytes|busy_ns|mapped_pages|copied_bytes|kbit_s|cpu_ns
  # (%.0f: busy and CPU nanoseconds pass 2^31, where mawk's %d saturates.)
  say "xo|$case|$mode|$(echo "$a $b" | awk '{printf "%.0f|%.0f|%.0f|%.0f|%.0f", $7-$1, $8-$2, $9-$3, $10-$4, $11-$5}')|${kbps:-0}|$(echo "$a $b" | awk '{printf "%.0f", $12-$6}')"
  [ -n "$kbps" ] || { echo "$out" | tail -n 3; return 1; }
}

run_crossover() {
  local mode copy_below ok i
  say "backend|xenpath|start|$(now)"
  local rounds modes="" r
  rounds="$(arg xo_rounds)"; rounds="${rounds:-2}"
  for r in $(seq "$rounds"); do modes="$modes copy:4097 map:0"; done
  for mode in $modes; do
    copy_below="${mode#*:}"; mode="${mode%%:*}"
    NETBACK_ARGS="--tx-copy-below $copy_below"
    start_backend xenpath || { stop_backend; continue; }
    [ $HAVE_NETBACK = 1 ] || { check xenpath "xo-$mode" fail "no netback"; stop_backend; continue; }
    if ! create xenpath serve 1 || ! wait_guest "$NAME" 'done' 300; then
      check xenpath "xo-$mode" fail "guest did not come up"; [ -n "$DOMID" ] && destroy "$NAME"
      stop_backend; continue
    fi
    # dom0's end of the vif is configured in the background: wait until the guest answers.
    i=0
    until timeout 20 iperf3 -c "$GUEST_IP" -R -t 1 >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -lt 30 ] || break; sleep 1
    done
    ok=1
    xo_case "$mode" udp256 -u -b 0 -l 256 || ok=0
    xo_case "$mode" udp1024 -u -b 0 -l 1024 || ok=0
    xo_case "$mode" udp1472 -u -b 0 -l 1472 || ok=0
    xo_case "$mode" tcp || ok=0
    [ $ok = 1 ] && check xenpath "xo-$mode" ok "--tx-copy-below $copy_below" ||
      check xenpath "xo-$mode" fail "an iperf3 run failed"
    destroy "$NAME"
    backend_released "$DOMID" || check xenpath "xo-$mode-release" fail "backend nodes of $DOMID remain"
    daemons_alive_and_released xenpath "xo-$mode"
    stop_backend
  done
  NETBACK_ARGS=""
  say "backend|xenpath|end|$(now)"
}

setup_bridge
iperf3 -s -D --logfile /run/iperf3.log
say "plan|$PLAN|$BACKENDS|$SECS"
if [ "$PLAN" = crossover ]; then
  run_crossover
  exit $failures
fi
# xenpath first: the kernel backends are not loaded yet, and each later column loads its own.
for b in $(echo "$BACKENDS" | tr '+,' '  '); do
  run_backend "$b"
  stop_backend
  [ "$b" = xenpath ] || { rmmod xen-blkback 2>/dev/null; rmmod xen-netback 2>/dev/null; }
  say "backend|$b|end|$(now)"
done
exit $failures
