#!/usr/bin/env bash
# Installs the dependencies, builds xenpath (release) and runs the main job on
# the embedded simulated Xen host: simulated guests connect their devices to
# the xenpath backends and drive I/O, with live per-device statistics.
# Extra arguments go to xenpath-sim (see `xenpath-sim --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup-deps.sh
BUILD_DIR=${BUILD_DIR:-build/release}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DXENPATH_BUILD_TESTS=OFF >/dev/null
ninja -C "$BUILD_DIR" -j"$(nproc)" xenpath-sim
exec "$BUILD_DIR/tools/xenpath-sim" demo "$@"
