#!/usr/bin/env bash
# Installs every build and test dependency of xenpath from Debian 12 packages.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
pkgs=(
  build-essential cmake ninja-build ccache pkg-config git
  libxen-dev xenstore-utils
  liburing-dev
  libdpdk-dev dpdk dpdk-dev  # dpdk-dev: dpdk-testpmd, the reference of perf/net_bench
  libmnl-dev  # rtnetlink: netback attaches each VIF's interface to its bridge
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libsystemd-dev  # sd_notify: READY/WATCHDOG/STATUS of the Type=notify units
  fio iperf3 iproute2
  python3-matplotlib  # perf/plot.py (the docs' figures) and its test
  help2man man-db dpkg-dev systemd  # man pages; dpkg-shlibdeps for the .deb; systemd-analyze verify (runs man)
  prometheus-cpp-dev prometheus curl  # the metrics endpoint; promtool checks its output, curl scrapes it
  qemu-utils libvhdi-utils  # the VHD oracles: qemu-img/qemu-io (vpc), vhdiinfo/vhdimount (chains)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
