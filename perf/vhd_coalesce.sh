#!/usr/bin/env bash
# xenpath-img coalesce and convert against `cp --sparse=always` of the same
# allocated bytes (the issue's goal: >= 0.8x).
#
#   perf/vhd_coalesce.sh [--tool build/dbg/tools/xenpath-img] [--mib 1024] [--dir /tmp] [--repeat 3]
#
# Per repeat: a dynamic base of 2x the size and a differencing child whose
# first MIB MiB hold fully written 2 MiB blocks (bitmaps all set; written by
# the python below, since qemu-io ignores a child's parent locators and
# writes over them). Timed, each after `sync` and, where permitted, a drop of
# the page cache:
#   cp     cp --sparse=always of a raw file holding the same bytes, then sync of the copy
#   merge  xenpath-img coalesce child (includes its own fdatasyncs)
#   conv   xenpath-img convert child -> raw (the chain read, fsync at the end)
# ratio = tool throughput / cp throughput; medians of the repeats.
set -euo pipefail

TOOL=build/dbg/tools/xenpath-img
MIB=1024
DIR=/tmp
REPEAT=3
while [ $# -gt 0 ]; do
  case "$1" in
    --tool) TOOL=$2; shift 2 ;;
    --mib) MIB=$2; shift 2 ;;
    --dir) DIR=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
W=$(mktemp -d "$DIR/xenpath-vhd-perf-XXXXXX")
trap 'rm -rf "$W"' EXIT

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
now() { date +%s.%N; }

fill_child() {  # $1 child, $2 MiB: appends full blocks 0..n-1 (bitmap all set)
  python3 - "$1" "$2" <<'EOF'
import os, struct, sys
path, mib = sys.argv[1], int(sys.argv[2])
bs, bm = 2 << 20, 512
with open(path, 'r+b') as f:
    size = os.fstat(f.fileno()).st_size
    f.seek(size - 512); footer = f.read(512)
    hdr_off = struct.unpack('>Q', footer[16:24])[0]
    f.seek(hdr_off); hdr = f.read(1024)
    table = struct.unpack('>Q', hdr[16:24])[0]
    pos = size - 512
    chunk = os.urandom(1 << 20) * 2
    for b in range(mib // 2):
        pos = (pos + 511) // 512 * 512
        if (pos + bm) % 4096: pos += 4096 - (pos + bm) % 4096
        f.seek(pos); f.write(b'\xff' * bm + chunk)
        f.seek(table + 4 * b); f.write(struct.pack('>I', pos // 512))
        pos += bm + bs
    f.seek(pos); f.write(footer); f.truncate(pos + 512)
EOF
}

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cp_t=() merge_t=() conv_t=()
for r in $(seq "$REPEAT"); do
  rm -f "$W"/*
  "$TOOL" create "$W/base.vhd" "$((MIB * 2))M"
  "$TOOL" snapshot "$W/base.vhd" "$W/child.vhd"
  fill_child "$W/child.vhd" "$MIB"
  head -c "$((MIB << 20))" /dev/urandom >"$W/src.raw"

  drop_caches; t0=$(now); cp --sparse=always "$W/src.raw" "$W/dst.raw"; sync "$W/dst.raw"; t1=$(now)
  cp_t+=("$(echo "$t1 - $t0" | bc -l)")
  drop_caches; t0=$(now); "$TOOL" convert "$W/child.vhd" "$W/conv.raw" >/dev/null; t1=$(now)
  conv_t+=("$(echo "$t1 - $t0" | bc -l)")
  drop_caches; t0=$(now); "$TOOL" coalesce "$W/child.vhd" >/dev/null; t1=$(now)
  merge_t+=("$(echo "$t1 - $t0" | bc -l)")
  "$TOOL" check "$W/base.vhd" >/dev/null
done
cp_m=$(printf '%s\n' "${cp_t[@]}" | median)
merge_m=$(printf '%s\n' "${merge_t[@]}" | median)
conv_m=$(printf '%s\n' "${conv_t[@]}" | median)
printf 'allocated bytes: %d MiB, repeats: %d (medians)\n' "$MIB" "$REPEAT"
printf 'cp --sparse=always + sync: %6.3f s  %7.1f MiB/s\n' "$cp_m" "$(echo "$MIB / $cp_m" | bc -l)"
printf 'coalesce:                  %6.3f s  %7.1f MiB/s  ratio %.2fx\n' "$merge_m" "$(echo "$MIB / $merge_m" | bc -l)" \
  "$(echo "$cp_m / $merge_m" | bc -l)"
printf 'convert vhd->raw:          %6.3f s  %7.1f MiB/s  ratio %.2fx\n' "$conv_m" "$(echo "$MIB / $conv_m" | bc -l)" \
  "$(echo "$cp_m / $conv_m" | bc -l)"
