#!/usr/bin/env bash
# The block backend against fio on the same file, same parameters.
#
#   perf/blk_vs_fio.sh [--file PATH] [--size 1G] [--runtime 10] [--repeat 1]
#                      [--seq-qd 8] [--tool build-rel/perf/xenpath-blkload]
#                      [--json OUT.json] [--keep] [--xp-args "EXTRA TOOL ARGS"]
#
# The file is written fully first (fio, sequential 1 MiB direct writes) so
# reads hit real data, not holes or unwritten extents. Then, per case, fio
# (--ioengine=io_uring --direct=1, one job) and xenpath-blkload (a simulated
# guest's blkfront -> shared ring -> the production vbd backend -> io_uring
# O_DIRECT on the same file) run alternately, --repeat times each; the
# median of each side is reported:
#   (a) 4 KiB random read, QD 32
#   (b) 128 KiB sequential read, QD --seq-qd
#   (c) 128 KiB sequential write, QD --seq-qd
# ratio = xenpath IOPS / fio IOPS (goal >= 0.9).
# Then the backend's own CPU cost against the null image (I/O completes at
# once): worker-reactor thread CPU time / requests at 4 KiB random read QD 32,
# with persistent grants and with per-request grant maps (goal <= 1.5 us),
# reported apart from the simulated guest's CPU.
#
# Caveat, printed with the results: fio runs one thread; xenpath runs the
# simulated guest's thread AND the backend's worker thread, which on a small
# machine share the cores (and with anything else running there).
set -euo pipefail

FILE=/tmp/xenpath-blk-vs-fio.img
SIZE=1G
RUNTIME=10
REPEAT=1
SEQ_QD=8
TOOL=""
JSON_OUT=""
KEEP=0
XP_EXTRA=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --file) FILE="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --seq-qd) SEQ_QD="$2"; shift 2 ;;
    --tool) TOOL="$2"; shift 2 ;;
    --json) JSON_OUT="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --xp-args) XP_EXTRA="$2"; shift 2 ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "$TOOL" ]]; then
  for t in "$HERE/build-rel/perf/xenpath-blkload" "$HERE/build/perf/xenpath-blkload"; do
    if [[ -x "$t" ]]; then TOOL="$t"; break; fi
  done
fi
[[ -x "$TOOL" ]] || { echo "xenpath-blkload not found (build-rel: cmake -DXENPATH_BUILD_PERF=ON)" >&2; exit 2; }
command -v fio >/dev/null || { echo "fio not installed" >&2; exit 2; }
command -v jq >/dev/null || { echo "jq not installed" >&2; exit 2; }

WORK="$(mktemp -d /tmp/blk-vs-fio.XXXXXX)"
cleanup() {
  rm -rf "$WORK"
  if [[ $KEEP -eq 0 ]]; then rm -f "$FILE"; fi
}
trap cleanup EXIT

echo "preparing $FILE ($SIZE, written fully)..." >&2
fio --name=prep --filename="$FILE" --size="$SIZE" --rw=write --bs=1M --direct=1 --ioengine=io_uring \
    --iodepth=8 --end_fsync=1 --output-format=json >"$WORK/prep.json"

# fio: one job on the file, time based.
run_fio() {  # name rw bs qd out
  fio --name="$1" --filename="$FILE" --size="$SIZE" --rw="$2" --bs="$3" --iodepth="$4" \
      --ioengine=io_uring --direct=1 --numjobs=1 --time_based --runtime="$RUNTIME" \
      --output-format=json >"$5"
}
# The same through xenpath: one VBD, one queue, one worker, one guest thread.
run_xp() {  # pattern read_percent bs qd out
  "$TOOL" --image "$FILE" --size "$SIZE" --pattern "$1" --read-percent "$2" --bs "$3" --qd "$4" \
      --seconds "$RUNTIME" --json --quiet $XP_EXTRA >"$5"
}

# name fio_rw xp_pattern xp_read_percent bs qd
CASES=(
  "randread-4k-qd32 randread rand 100 4k 32"
  "seqread-128k-qd$SEQ_QD read seq 100 128k $SEQ_QD"
  "seqwrite-128k-qd$SEQ_QD write seq 0 128k $SEQ_QD"
)

median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print 0; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
for c in "${CASES[@]}"; do
  read -r name frw xpat xrp bs qd <<<"$c"
  for i in $(seq 1 "$REPEAT"); do
    echo "case $name, run $i: fio" >&2
    run_fio "$name" "$frw" "$bs" "$qd" "$WORK/$name.fio.$i.json"
    echo "case $name, run $i: xenpath" >&2
    run_xp "$xpat" "$xrp" "$bs" "$qd" "$WORK/$name.xp.$i.json"
  done
  dir=$([[ $frw == *write* ]] && echo write || echo read)
  f_iops=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].$dir.iops" "$WORK/$name.fio.$i.json"; done | median)
  f_mib=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].$dir.bw_bytes / 1048576" "$WORK/$name.fio.$i.json"; done | median)
  f_p50=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].$dir.clat_ns.percentile.\"50.000000\" / 1000" "$WORK/$name.fio.$i.json"; done | median)
  f_p99=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].$dir.clat_ns.percentile.\"99.000000\" / 1000" "$WORK/$name.fio.$i.json"; done | median)
  f_cpu=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].usr_cpu + .jobs[0].sys_cpu" "$WORK/$name.fio.$i.json"; done | median)
  x_iops=$(for i in $(seq 1 "$REPEAT"); do jq ".total.iops" "$WORK/$name.xp.$i.json"; done | median)
  x_mib=$(for i in $(seq 1 "$REPEAT"); do jq ".total.mib_s" "$WORK/$name.xp.$i.json"; done | median)
  x_p50=$(for i in $(seq 1 "$REPEAT"); do jq ".total.lat_p50_us" "$WORK/$name.xp.$i.json"; done | median)
  x_p99=$(for i in $(seq 1 "$REPEAT"); do jq ".total.lat_p99_us" "$WORK/$name.xp.$i.json"; done | median)
  x_bcpu=$(for i in $(seq 1 "$REPEAT"); do jq ".total.backend_cpu_utilisation * 100" "$WORK/$name.xp.$i.json"; done | median)
  x_gcpu=$(for i in $(seq 1 "$REPEAT"); do jq ".total.guest_cpu_s / .total.seconds * 100" "$WORK/$name.xp.$i.json"; done | median)
  x_err=$(for i in $(seq 1 "$REPEAT"); do jq ".total.errors" "$WORK/$name.xp.$i.json"; done | awk '{s+=$1} END {print s+0}')
  f_runs=$(for i in $(seq 1 "$REPEAT"); do jq ".jobs[0].$dir.iops" "$WORK/$name.fio.$i.json"; done | jq -s -c .)
  x_runs=$(for i in $(seq 1 "$REPEAT"); do jq ".total.iops" "$WORK/$name.xp.$i.json"; done | jq -s -c .)
  jq -n --arg name "$name" --argjson f_iops "$f_iops" --argjson f_mib "$f_mib" --argjson f_p50 "$f_p50" \
        --argjson f_p99 "$f_p99" --argjson f_cpu "$f_cpu" --argjson x_iops "$x_iops" --argjson x_mib "$x_mib" \
        --argjson x_p50 "$x_p50" --argjson x_p99 "$x_p99" --argjson x_bcpu "$x_bcpu" --argjson x_gcpu "$x_gcpu" \
        --argjson x_err "$x_err" --argjson f_runs "$f_runs" --argjson x_runs "$x_runs" \
        '{case: $name,
          fio: {iops: $f_iops, mib_s: $f_mib, lat_p50_us: $f_p50, lat_p99_us: $f_p99, cpu_percent: $f_cpu,
                iops_runs: $f_runs},
          xenpath: {iops: $x_iops, mib_s: $x_mib, lat_p50_us: $x_p50, lat_p99_us: $x_p99,
                    backend_cpu_percent: $x_bcpu, guest_cpu_percent: $x_gcpu, errors: $x_err,
                    iops_runs: $x_runs},
          ratio: (if $f_iops > 0 then $x_iops / $f_iops else 0 end)}' >>"$RESULTS"
done

# Backend CPU per request against the null image.
NULL_RESULTS="$WORK/null.jsonl"
: >"$NULL_RESULTS"
for pers in 1 0; do
  echo "null image, persistent=$pers" >&2
  "$TOOL" --null --size "$SIZE" --pattern rand --bs 4k --qd 32 --persistent "$pers" --seconds "$RUNTIME" \
      --json --quiet >"$WORK/null.$pers.json"
  jq --argjson pers "$pers" '{persistent: ($pers == 1), iops: .total.iops,
        backend_us_per_request: .total.backend_cpu_us_per_request,
        guest_us_per_request: .total.guest_cpu_us_per_request,
        backend_cpu_percent: (.total.backend_cpu_utilisation * 100), errors: .total.errors}' \
      "$WORK/null.$pers.json" >>"$NULL_RESULTS"
done

echo
printf "%-20s %10s %9s %8s %8s | %10s %9s %8s %8s | %6s  %s\n" case "fio IOPS" "MiB/s" "p50 us" "p99 us" \
       "xp IOPS" "MiB/s" "p50 us" "p99 us" ratio "CPU% fio / xp backend+guest"
jq -r '[.case, .fio.iops, .fio.mib_s, .fio.lat_p50_us, .fio.lat_p99_us, .xenpath.iops, .xenpath.mib_s,
        .xenpath.lat_p50_us, .xenpath.lat_p99_us, .ratio, .fio.cpu_percent, .xenpath.backend_cpu_percent,
        .xenpath.guest_cpu_percent] | @tsv' "$RESULTS" |
  while IFS=$'\t' read -r n fi fm f5 f9 xi xm x5 x9 r fc xb xg; do
    printf "%-20s %10.0f %9.1f %8.1f %8.1f | %10.0f %9.1f %8.1f %8.1f | %6.2f  %.0f / %.0f+%.0f\n" \
           "$n" "$fi" "$fm" "$f5" "$f9" "$xi" "$xm" "$x5" "$x9" "$r" "$fc" "$xb" "$xg"
  done
echo "IOPS of every run (fio | xenpath):"
jq -r '"  \(.case): \(.fio.iops_runs | map(floor)) | \(.xenpath.iops_runs | map(floor))"' "$RESULTS"
echo
printf "%-24s %10s %16s %16s\n" "null image 4k rand QD32" IOPS "backend us/req" "guest us/req"
jq -r '[(if .persistent then "persistent grants" else "grant map per request" end), .iops,
        .backend_us_per_request, .guest_us_per_request] | @tsv' "$NULL_RESULTS" |
  while IFS=$'\t' read -r n i b g; do printf "%-24s %10.0f %16.2f %16.2f\n" "$n" "$i" "$b" "$g"; done
echo
echo "online CPUs: $(nproc); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo "fio is one thread; xenpath is the simulated guest's thread plus the backend worker's, sharing these CPUs."

if [[ -n "$JSON_OUT" ]]; then
  jq -s --slurpfile null "$NULL_RESULTS" --arg size "$SIZE" --argjson runtime "$RUNTIME" --argjson repeat "$REPEAT" \
     --argjson cpus "$(nproc)" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
     '{file_size: $size, runtime_s: $runtime, repeat: $repeat, online_cpus: $cpus, loadavg: $load,
       cases: ., null_image: $null}' "$RESULTS" >"$JSON_OUT"
  echo "JSON: $JSON_OUT"
fi
