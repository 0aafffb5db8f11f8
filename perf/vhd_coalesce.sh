#!/usr/bin/env bash
# xenpath-img coalesce and convert against `cp --sparse=always` of the same
# allocated bytes (the issue's goal: >= 0.8x). A benchmark, not a test: it
# prints the ratios and exits 0 (non-zero only when a command fails).
#
#   perf/vhd_coalesce.sh [--tool build/rel/tools/xenpath-img] [--mib 1024] [--dir /tmp] [--repeat 5]
#
# Use a Release build of the tool. Files, made once per repeat in --dir:
#   src.raw    a sparse raw disk of 2*MIB MiB: random data in the first MIB
#              MiB, a hole after it
#   base.vhd   an empty dynamic VHD of 2*MIB MiB
#   child.vhd  its differencing child holding exactly src.raw's data as fully
#              written 2 MiB blocks (bitmaps all set; written by the python
#              below, since qemu-io ignores a child's parent locators and
#              writes over them)
# So every side moves the same MIB MiB of allocated bytes, reads them from
# the same file system and writes them back to it. Timed, in an order that
# rotates from one repeat to the next (so drift in the load of this shared
# machine does not always hit the same side), each after `sync` and a cold
# page cache (see drop_caches below):
#   cp       cp --sparse=always src.raw (skips the hole, reads the data), then
#            `sync FILE` (fsync) of the copy
#   cp-auto  cp --sparse=auto (coreutils >= 9: copy_file_range, in-kernel),
#            then sync: for reference only, not the goal's denominator
#   conv     xenpath-img convert child.vhd -> raw (fsync at the end)
#   conv2    xenpath-img convert src.raw -> vhd (fdatasyncs per batch)
#   merge    xenpath-img coalesce child.vhd (fdatasyncs per batch)
# ratio = cp time / tool time (throughput ratio): of the medians, and the
# median of the per-repeat ratios (each pair timed minutes apart at most).
# The first repeat also checks the results: the converted raw equals
# src.raw, the coalesced base and the raw->vhd image pass `check` and read
# back as src.raw.
set -euo pipefail

TOOL=build/rel/tools/xenpath-img
MIB=1024
DIR=/tmp
REPEAT=5
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) TOOL=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $((MIB % 2)) -eq 0 ] || { echo "--mib must be even (whole 2 MiB blocks)" >&2; exit 2; }
W=$(mktemp -d "$DIR/xenpath-vhd-perf-XXXXXX")
trap 'rm -rf "$W"' EXIT

# Cold cache before each timed run. Dropping the whole page cache needs
# root outside a container's restrictions; where that is refused, each
# file of the run is evicted on its own with posix_fadvise(DONTNEED)
# (dd iflag=nocache count=0), which works for any file we can open once
# its dirty pages are written (sync first).
if sync && (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
  CACHE="page cache dropped (echo 3 > /proc/sys/vm/drop_caches) before each run"
  drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
else
  CACHE="drop_caches refused: each file evicted with posix_fadvise(DONTNEED) before each run"
  drop_caches() {
    sync
    for f in "$W"/*; do dd if="$f" iflag=nocache count=0 status=none; done
  }
fi
now() { date +%s.%N; }

make_src() {  # $1 file, $2 MiB of random data, then as much hole
  head -c "$(($2 << 20))" /dev/urandom >"$1"
  truncate -s "$(($2 << 21))" "$1"
}

fill_child() {  # $1 child, $2 source raw, $3 MiB: blocks 0..n-1 from the raw (bitmaps all set)
  python3 - "$1" "$2" "$3" <<'EOF'
import os, struct, sys
path, src, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
bs, bm = 2 << 20, 512
with open(path, 'r+b') as f, open(src, 'rb') as s:
    size = os.fstat(f.fileno()).st_size
    f.seek(size - 512); footer = f.read(512)
    hdr_off = struct.unpack('>Q', footer[16:24])[0]
    f.seek(hdr_off); hdr = f.read(1024)
    table = struct.unpack('>Q', hdr[16:24])[0]
    pos = size - 512
    for b in range(mib // 2):
        pos = (pos + 511) // 512 * 512
        if (pos + bm) % 4096: pos += 4096 - (pos + bm) % 4096
        s.seek(b * bs); chunk = s.read(bs)
        f.seek(pos); f.write(b'\xff' * bm + chunk)
        f.seek(table + 4 * b); f.write(struct.pack('>I', pos // 512))
        pos += bm + bs
    f.seek(pos); f.write(footer); f.truncate(pos + 512)
EOF
}

timed() {  # $1 name; rest: the command. Appends seconds to T_<name>.
  local name=$1 t0 t1
  shift
  drop_caches
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  eval "T_$name+=(\"$(echo "$t1 - $t0" | bc -l)\")"
}

run_cp() { cp --sparse=always "$W/src.raw" "$W/cp.raw" && sync "$W/cp.raw"; }
run_cp_auto() { cp --sparse=auto "$W/src.raw" "$W/cpa.raw" && sync "$W/cpa.raw"; }
run_conv() { "$TOOL" convert "$W/child.vhd" "$W/conv.raw"; }
run_conv2() { "$TOOL" convert "$W/src.raw" "$W/conv2.vhd"; }
run_merge() { "$TOOL" coalesce "$W/child.vhd"; }

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
spread() { sort -g | awk '{a[NR]=$1} END {printf "%.3f..%.3f", a[1], a[NR]}'; }

T_cp=() T_cp_auto=() T_conv=() T_conv2=() T_merge=()
R_merge=() R_conv=() R_conv2=()
OPS=(cp conv merge conv2 cp_auto)
for r in $(seq "$REPEAT"); do
  rm -f "$W"/*
  make_src "$W/src.raw" "$MIB"
  "$TOOL" create "$W/base.vhd" "$((MIB * 2))M" >/dev/null
  "$TOOL" snapshot "$W/base.vhd" "$W/child.vhd" >/dev/null
  fill_child "$W/child.vhd" "$W/src.raw" "$MIB"
  # Rotate the order; coalesce only adds to the base (convert reads the
  # child's full blocks and never the base either way).
  n=${#OPS[@]}
  for i in $(seq 0 $((n - 1))); do
    op=${OPS[$(((i + r) % n))]}
    timed "$op" "run_$op"
  done
  i=$((r - 1))
  R_merge+=("$(echo "${T_cp[$i]} / ${T_merge[$i]}" | bc -l)")
  R_conv+=("$(echo "${T_cp[$i]} / ${T_conv[$i]}" | bc -l)")
  R_conv2+=("$(echo "${T_cp[$i]} / ${T_conv2[$i]}" | bc -l)")
  if [ "$r" -eq 1 ]; then
    cmp "$W/src.raw" "$W/conv.raw"
    "$TOOL" check "$W/base.vhd" >/dev/null
    "$TOOL" check "$W/conv2.vhd" >/dev/null
    rm -f "$W/check.raw" && "$TOOL" convert "$W/base.vhd" "$W/check.raw" >/dev/null && cmp "$W/src.raw" "$W/check.raw"
    rm -f "$W/check.raw" && "$TOOL" convert "$W/conv2.vhd" "$W/check.raw" >/dev/null && cmp "$W/src.raw" "$W/check.raw"
    rm -f "$W/check.raw"
  fi
done

med() { local -n a=$1; printf '%s\n' "${a[@]}" | median; }
spr() { local -n a=$1; printf '%s\n' "${a[@]}" | spread; }
cp_m=$(med T_cp)
printf 'allocated bytes: %d MiB; %d repeats, medians (min..max); %s\n' "$MIB" "$REPEAT" "$CACHE"
line() {  # label, times array, per-repeat ratios array (or "")
  local m
  m=$(med "$2")
  printf '%-28s %6.3f s (%s)  %7.1f MiB/s' "$1" "$m" "$(spr "$2")" "$(echo "$MIB / $m" | bc -l)"
  if [ -n "$3" ]; then
    printf '  ratio %.2fx (median of per-repeat ratios %.2fx)' "$(echo "$cp_m / $m" | bc -l)" "$(med "$3")"
  fi
  printf '\n'
}
line 'cp --sparse=always + sync:' T_cp ''
line 'coalesce:' T_merge R_merge
line 'convert vhd->raw:' T_conv R_conv
line 'convert raw->vhd:' T_conv2 R_conv2
line 'cp --sparse=auto + sync:' T_cp_auto ''
exit 0
