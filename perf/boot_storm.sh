#!/usr/bin/env bash
# The boot-storm benchmark (issue 12, docs/cache.md): N simulated guests,
# each on a differencing VHD child of one base image, replay a boot-like
# read pattern, all starting together, in three modes on the same files:
#   nocache    every level O_DIRECT, no shared cache
#   pagecache  every level buffered (dom0's page cache, as tapdisk3's read
#              caching), page cache dropped first
#   cache      O_DIRECT and xenpath's shared cache, cold (a fresh daemon)
# plus, at the largest N, the cache under a budget of half the boot set
# (cache_small: graceful degradation).
#
#   perf/boot_storm.sh [--guests 1,10,50] [--json out.json] [--quick]
#                      [--pattern FILE.iolog] [--base-mib M] [--boot-mib M]
#                      [--cache-block-kib K] [--bin PATH] [--dir DIR]
#
# The pattern is a fio iolog (v2/v3); by default one is generated
# (xenpath-bootstorm --make-pattern). The JSON: {"runs": [{mode, guests,
# storm_seconds, base_bytes_read (the daemon's /proc/self/io read_bytes
# during the storm: what came from the disk), boot_set_bytes, p50_us,
# p99_us, ...}], "config": {...}}. Dropping the page cache needs root
# (echo 3 > /proc/sys/vm/drop_caches); without it the page-cache mode is
# marked "warm" in the JSON.
set -euo pipefail

guests=1,10,50
json=boot_storm.json
quick=0
pattern=
base_mib=1024
boot_mib=256
block_kib=64
bin=
dir=
while [ $# -gt 0 ]; do
  case "$1" in
    --guests) guests=$2; shift 2 ;;
    --json) json=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --pattern) pattern=$2; shift 2 ;;
    --base-mib) base_mib=$2; shift 2 ;;
    --boot-mib) boot_mib=$2; shift 2 ;;
    --cache-block-kib) block_kib=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  base_mib=256
  boot_mib=48
fi
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "$bin" ]; then
  for b in "$here/build/rel/perf/xenpath-bootstorm" "$here/build/dbg/perf/xenpath-bootstorm"; do
    if [ -x "$b" ]; then bin=$b; break; fi
  done
fi
[ -x "$bin" ] || { echo "xenpath-bootstorm not built (ninja -C build/rel xenpath-bootstorm)" >&2; exit 2; }
command -v qemu-img >/dev/null || { echo "qemu-img needed (scripts/setup-deps.sh)" >&2; exit 2; }
if [ -z "$dir" ]; then dir=$(mktemp -d "${TMPDIR:-/tmp}/xenpath-storm-XXXXXX"); fi
mkdir -p "$dir"
trap 'rm -rf "$dir"' EXIT

# The base: random data (nothing compresses or dedups it), a dynamic VHD.
echo "base: ${base_mib} MiB, boot set ~${boot_mib} MiB, in $dir" >&2
head -c $((base_mib << 20)) /dev/urandom >"$dir/base.raw"
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$dir/base.raw" "$dir/base.vhd"
rm -f "$dir/base.raw"
if [ -z "$pattern" ]; then
  pattern=$dir/boot.iolog
  "$bin" --make-pattern "$pattern" --base-mib "$base_mib" --boot-mib "$boot_mib"
fi

drop_caches() {
  sync
  if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then echo cold; else echo warm; fi
}

lines=$dir/runs.jsonl
: >"$lines"
run() {  # mode guests [cache_mib]
  local mode=$1 n=$2 mib=${3:-$((boot_mib * 2))} state
  state=$(drop_caches)
  local label=$mode
  [ "$mode" = cache ] && [ "$mib" -lt "$boot_mib" ] && label=cache_small
  echo "  $label N=$n (page cache $state)" >&2
  "$bin" --base "$dir/base.vhd" --pattern "$pattern" --mode "$mode" --guests "$n" --dir "$dir/kids" \
    --cache-mib "$mib" --cache-block-kib "$block_kib" --json "$dir/one.json" >/dev/null
  python3 - "$dir/one.json" "$label" "$state" >>"$lines" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
r["mode"] = sys.argv[2]
r["page_cache"] = sys.argv[3]
print(json.dumps(r))
EOF
  rm -f "$dir/one.json"
}

IFS=, read -r -a ns <<<"$guests"
max=0
for n in "${ns[@]}"; do
  for mode in nocache pagecache cache; do run "$mode" "$n"; done
  [ "$n" -gt "$max" ] && max=$n
done
# Graceful degradation: the largest storm under half the boot set.
run cache "$max" $((boot_mib / 2))

python3 - "$lines" "$json" "$base_mib" "$boot_mib" "$block_kib" "$quick" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
doc = {"config": {"base_mib": int(sys.argv[3]), "boot_mib": int(sys.argv[4]),
                  "cache_block_kib": int(sys.argv[5]), "quick": sys.argv[6] == "1"},
       "runs": runs}
json.dump(doc, open(sys.argv[2], "w"), indent=1)
print(f"{'mode':12} {'N':>4} {'storm s':>8} {'base MiB':>9} {'boot MiB':>9} {'x boot':>7} {'p50 us':>8} {'p99 us':>8}")
for r in runs:
    print(f"{r['mode']:12} {r['guests']:>4} {r['storm_seconds']:8.2f} {r['base_bytes_read']/2**20:9.1f} "
          f"{r['boot_set_bytes']/2**20:9.1f} {r['base_bytes_read']/max(r['boot_set_bytes'],1):7.2f} "
          f"{r['p50_us']:8} {r['p99_us']:8}")
by = {(r["mode"], r["guests"]): r for r in runs}
for n in sorted({r["guests"] for r in runs}):
    c, p = by.get(("cache", n)), by.get(("pagecache", n))
    if c and p:
        print(f"N={n}: cache/pagecache storm time {c['storm_seconds']/p['storm_seconds']:.2f}, "
              f"cache base bytes / boot set {c['base_bytes_read']/c['boot_set_bytes']:.3f}")
EOF
