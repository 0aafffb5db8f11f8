// xenpath-netback: the netif backend daemon (the "vif" device type).
//
// In a dom0 or driver domain it serves /local/domain/<self>/backend/vif
// through libxen; each VIF gets a DPDK port from the devargs template, by
// default a net_tap interface vif<domid>.<devid> like kernel netback's, for
// the host's bridge/OVS to take. The same daemon on the simulated host, with
// guests whose frames a loopback wire sends back, is `xenpath-sim netback`
// (sim/, not linked here).
//
// SIGTERM/SIGINT: every VIF is disconnected (mappings and channels
// released), then the daemon exits. --stats-file is rewritten (atomically)
// every --stats-interval-ms with per-VIF, per-queue counters as JSON.
#include "common/daemon_main.h"
#include "netback/net_service.h"

int main(int argc, char** argv) {
  return xenpath::daemon_main<xenpath::NetbackService>(
      argc, argv, "xenpath-netback: the netif backend daemon of a Xen dom0 or driver domain");
}
