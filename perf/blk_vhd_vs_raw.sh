#!/usr/bin/env bash
# VHD against raw through the same backend, same run, same filesystem
# (xenpath-blkload: a simulated guest's blkfront -> ring -> the production
# vbd backend -> io_uring O_DIRECT). The ratios of issue 11's goals:
#
#   (a) 4 KiB random read, QD 32: a fully written dynamic VHD leaf
#       / a fully written raw file                                 goal >= 0.95
#   (b) 4 KiB random write, QD 32, into allocated blocks (same files) >= 0.9
#   (c) first-touch writes: 4 KiB random writes, QD 32, over a fresh
#       sparse --big disk, nearly every one into a block never written
#       (the VHD allocates a block per write) / the same on a fresh
#       sparse raw file (the filesystem allocates)                  >= 0.5
#   (c2) the same first-touch writes into a fresh differencing child (of an
#       empty base): each allocation round also waits for an fdatasync
#       (image_vhd.h says why)                                 reported, goal 0.5
#   (d) 4 KiB random read, QD 32, through a depth-3 chain (two empty
#       differencing children over the written VHD) / depth 1, without
#       the shared read cache on either side (the fair comparison: the
#       chain walk's own cost)                                       >= 0.9
#   (dc) the same with the daemon's default cache (--cache-mib 256, 64 KiB
#       blocks): the depth-3 reads of the immutable levels go through it
#       (each miss reads a whole 64 KiB block for a 4 KiB read), depth 1
#       (a writable leaf) never does                       reported, no goal
#
#   perf/blk_vhd_vs_raw.sh [--dir DIR] [--size 1G] [--big 256G] [--runtime 10]
#                          [--repeat 3] [--tool build/rel/perf/xenpath-blkload]
#                          [--cases "a b c c2 d dc"] [--json OUT.json]
#
# Each case runs the two sides alternately --repeat times; medians are
# reported, with every run's IOPS. (c) runs a fixed number of writes
# (--first-ops, default 20000) on new files each time, so every write finds
# a fresh block.
set -euo pipefail

DIR=/var/tmp
SIZE=1G
BIG=256G
RUNTIME=10
REPEAT=3
FIRST_OPS=20000
TOOL=""
JSON_OUT=""
CASES="a b c c2 d dc"
while [[ $# -gt 0 ]]; do
  case "$1" in
    # --first-ops N sets FIRST_OPS, and so on; --json sets JSON_OUT.
    --dir|--size|--big|--runtime|--repeat|--first-ops|--tool|--json|--cases)
      [ $# -ge 2 ] || { echo "$1 needs a value" >&2; exit 2; }
      var="${1#--}"; var="${var//-/_}"; var="${var^^}"; [ "$var" = JSON ] && var=JSON_OUT
      printf -v "$var" '%s' "$2"; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$TOOL" ]]; then
  for t in "$HERE/build/rel/perf/xenpath-blkload" "$HERE/build-rel/perf/xenpath-blkload" \
           "$HERE/build/perf/xenpath-blkload"; do
    if [[ -x "$t" ]]; then TOOL="$t"; break; fi
  done
fi
[[ -x "$TOOL" ]] || { echo "xenpath-blkload not found (cmake -DXENPATH_BUILD_PERF=ON)" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq not installed" >&2; exit 2; }

WORK="$(mktemp -d "$DIR/blk-vhd-vs-raw.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
RAW="$WORK/disk.raw"
VHD="$WORK/base.vhd"
MID="$WORK/mid.vhd"
LEAF="$WORK/leaf.vhd"

load() {  # out image... -- args
  local out="$1"; shift
  "$TOOL" "$@" --json --quiet >"$out"
}
iops() { jq '.total.iops' "$1"; }
errors() { jq '.total.errors' "$1"; }
want() { [[ " $CASES " == *" $1 "* ]]; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "preparing $SIZE raw and dynamic VHD, written fully..." >&2
SIZE_BYTES=$(numfmt --from=iec "$SIZE")
OPS_FILL=$((SIZE_BYTES / 1048576))
load "$WORK/fill.raw.json" --image "$RAW" --size "$SIZE" --create sparse --pattern seq --read-percent 0 --bs 1M \
     --qd 8 --ops "$OPS_FILL" --seconds 600
load "$WORK/fill.vhd.json" --image "$VHD" --size "$SIZE" --create vhd --pattern seq --read-percent 0 --bs 1M \
     --qd 8 --ops "$OPS_FILL" --seconds 600
[[ $(errors "$WORK/fill.raw.json") == 0 && $(errors "$WORK/fill.vhd.json") == 0 ]] || { echo "fill failed" >&2; exit 1; }

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
record() {  # name goal base_label test_label base_files... -- test_files...
  local name="$1" goal="$2" bl="$3" tl="$4"
  local b t br tr
  b=$(for i in $(seq 1 "$REPEAT"); do iops "$WORK/$name.base.$i.json"; done | median)
  t=$(for i in $(seq 1 "$REPEAT"); do iops "$WORK/$name.test.$i.json"; done | median)
  br=$(for i in $(seq 1 "$REPEAT"); do iops "$WORK/$name.base.$i.json"; done | jq -s -c 'map(floor)')
  tr=$(for i in $(seq 1 "$REPEAT"); do iops "$WORK/$name.test.$i.json"; done | jq -s -c 'map(floor)')
  local errs
  errs=$(for i in $(seq 1 "$REPEAT"); do errors "$WORK/$name.base.$i.json"; errors "$WORK/$name.test.$i.json"; done |
         awk '{s+=$1} END {print s+0}')
  jq -n --arg name "$name" --arg bl "$bl" --arg tl "$tl" --argjson b "$b" --argjson t "$t" --argjson goal "$goal" \
        --argjson br "$br" --argjson tr "$tr" --argjson errs "$errs" \
        '{case: $name, baseline: $bl, measured: $tl, baseline_iops: $b, iops: $t,
          ratio: (if $b > 0 then $t / $b else 0 end), goal: $goal, baseline_runs: $br, runs: $tr, errors: $errs}' \
        >>"$RESULTS"
}

COMMON=(--bs 4k --qd 32 --pattern rand --seconds "$RUNTIME")
FIRST=(--bs 4k --qd 32 --pattern rand --read-percent 0 --ops "$FIRST_OPS" --seconds 600)
# (d) reads the written VHD through two empty differencing children (made
# once; the VHD is not written after that, so (b) runs before).
if want d || want dc; then
  "$TOOL" --image "$MID" --vhd-parent "$VHD" --ops 1 --bs 4k --qd 1 --read-percent 100 --json --quiet >/dev/null
  "$TOOL" --image "$LEAF" --vhd-parent "$MID" --ops 1 --bs 4k --qd 1 --read-percent 100 --json --quiet >/dev/null
fi
# One alternating pair: case, run, what, baseline image, measured image,
# then the load's arguments (after --).
pair() {
  local c="$1" i="$2" what="$3" base="$4" test="$5"
  shift 5
  echo "run $i: ($c) $what" >&2
  load "$WORK/$c.base.$i.json" --image "$base" "$@"
  load "$WORK/$c.test.$i.json" --image "$test" "$@"
}
for i in $(seq 1 "$REPEAT"); do
  want a && pair a "$i" "randread raw / vhd" "$RAW" "$VHD" "${COMMON[@]}" --read-percent 100
  want d && pair d "$i" "randread depth 1 / depth 3, no cache" "$VHD" "$LEAF" "${COMMON[@]}" --read-percent 100 \
      --cache-mib 0
  want dc && pair dc "$i" "randread depth 1 / depth 3, cache 256 MiB" "$VHD" "$LEAF" "${COMMON[@]}" \
      --read-percent 100 --cache-mib 256
done
for i in $(seq 1 "$REPEAT"); do
  want b && pair b "$i" "randwrite into allocated blocks raw / vhd" "$RAW" "$VHD" "${COMMON[@]}" --read-percent 0
  if want c; then
    rm -f "$WORK/ft.raw" "$WORK/ft.vhd"
    echo "run $i: (c) first-touch writes, sparse raw / fresh dynamic VHD ($BIG)" >&2
    load "$WORK/c.base.$i.json" --image "$WORK/ft.raw" --size "$BIG" --create sparse "${FIRST[@]}"
    load "$WORK/c.test.$i.json" --image "$WORK/ft.vhd" --size "$BIG" --create vhd "${FIRST[@]}"
  fi
  if want c2; then
    rm -f "$WORK/ft.raw" "$WORK/ft.vhd" "$WORK/ftbase.vhd"
    echo "run $i: (c2) first-touch writes, sparse raw / fresh differencing VHD ($BIG)" >&2
    load "$WORK/c2.base.$i.json" --image "$WORK/ft.raw" --size "$BIG" --create sparse "${FIRST[@]}"
    "$TOOL" --image "$WORK/ftbase.vhd" --size "$BIG" --create vhd --ops 1 --bs 4k --qd 1 --read-percent 100 \
        --json --quiet >/dev/null
    load "$WORK/c2.test.$i.json" --image "$WORK/ft.vhd" --vhd-parent "$WORK/ftbase.vhd" "${FIRST[@]}"
  fi
  rm -f "$WORK/ft.raw" "$WORK/ft.vhd" "$WORK/ftbase.vhd"
done
want a && record a 0.95 "raw randread 4k QD32" "vhd leaf randread 4k QD32"
want b && record b 0.9 "raw randwrite 4k QD32" "vhd randwrite 4k QD32, allocated blocks"
want c && record c 0.5 "sparse raw first-touch randwrite 4k QD32" "vhd first-touch (allocating) randwrite 4k QD32"
want c2 && record c2 0.5 "sparse raw first-touch randwrite 4k QD32" "vhd diff child first-touch randwrite 4k QD32"
want d && record d 0.9 "vhd depth 1 randread 4k QD32" "vhd depth 3 randread 4k QD32, no cache"
want dc && record dc null "vhd depth 1 randread 4k QD32" "vhd depth 3 randread 4k QD32, cache 256M/64K"

echo
printf "%-4s %-44s %10s %10s %7s %6s  %s\n" case measured "base IOPS" IOPS ratio goal "runs (base | measured)"
jq -r '[.case, .measured, .baseline_iops, .iops, .ratio, (.goal // "-"), (.baseline_runs|tostring), (.runs|tostring),
        .errors] | @tsv' "$RESULTS" |
  while IFS=$'\t' read -r c m b t r g br tr e; do
    printf "%-4s %-44s %10.0f %10.0f %7.2f %6s  %s | %s%s\n" "$c" "$m" "$b" "$t" "$r" "$g" "$br" "$tr" \
           "$([[ $e != 0 ]] && echo " ($e errors)")"
  done
echo
echo "online CPUs: $(nproc); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg); filesystem: $(stat -f -c %T "$WORK")."
if [[ -n "$JSON_OUT" ]]; then
  jq -s --arg size "$SIZE" --arg big "$BIG" --argjson runtime "$RUNTIME" --argjson repeat "$REPEAT" \
     --argjson cpus "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
     '{size: $size, big: $big, runtime_s: $runtime, repeat: $repeat, online_cpus: $cpus, loadavg: $load, cases: .}' \
     "$RESULTS" >"$JSON_OUT"
  echo "JSON: $JSON_OUT"
fi
