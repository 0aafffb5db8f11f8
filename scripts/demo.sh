#!/usr/bin/env bash
# Installs the dependencies, builds xenpath (release) and runs the main job on
# the embedded simulated Xen host: the xenpath-blkback daemon serves the
# disks of simulated guests that do I/O through it, with live per-VBD
# figures and a leak self-check at the end (non-zero exit if it fails).
# Extra arguments go to xenpath-blkback (see `xenpath-blkback --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-deps.sh
BUILD_DIR=${BUILD_DIR:-build/release}
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$BUILD_DIR" -j"$(nproc)" xenpath-sim
# xenpath-sim blkback: the daemon on the simulated host only, never a real host's devices.
exec "$BUILD_DIR/tools/xenpath-sim" blkback "$@"
