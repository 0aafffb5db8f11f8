#!/usr/bin/env bash
# perf/plot.py on the checked-in fixtures (tests/fixtures/plot: a real
# perf/blk_vs_fio.sh --json and a real lab result.json, trimmed): each gives
# a PNG; a document of no known kind, or of the wrong kind, exits 1 and
# writes nothing. Skipped (77) without Debian's python3-matplotlib.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
plot=$here/perf/plot.py
fix=$here/tests/fixtures/plot
py=/usr/bin/python3
[ -x "$py" ] || py=$(command -v python3)
if ! "$py" -c 'import matplotlib' 2> /dev/null; then
  echo "SKIP: matplotlib not installed (Debian: apt-get install python3-matplotlib)"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in blk_vs_fio lab; do
  "$py" "$plot" "$fix/$f.json" "$work/$f.png" || { echo "FAIL: plot.py $f.json"; exit 1; }
  # A PNG: its 8-byte signature, and more than a header.
  [ "$(head -c 8 "$work/$f.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || { echo "FAIL: $f.png is not a PNG"; exit 1; }
  [ "$(stat -c %s "$work/$f.png")" -gt 10000 ] || { echo "FAIL: $f.png is too small to hold a plot"; exit 1; }
done
echo '{"something": 1}' > "$work/odd.json"
rc=0; "$py" "$plot" "$work/odd.json" "$work/odd.png" 2> /dev/null || rc=$?
[ "$rc" -eq 1 ] && [ ! -e "$work/odd.png" ] || { echo "FAIL: unknown document: exit $rc"; exit 1; }
rc=0; "$py" "$plot" --kind netbench "$fix/lab.json" "$work/wrong.png" 2> /dev/null || rc=$?
[ "$rc" -eq 1 ] && [ ! -e "$work/wrong.png" ] || { echo "FAIL: wrong kind: exit $rc"; exit 1; }
echo PASS
