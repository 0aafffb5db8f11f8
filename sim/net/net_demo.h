// `xenpath-sim netback`: the netif backend daemon on the simulated host with
// guests whose frames a loopback wire sends back (net_demo.cc).
#pragma once

#include <CLI/CLI.hpp>

#include "common/daemon_main.h"
#include "netback/net_service.h"
#include "sim/sim_demo.h"

namespace xenpath::sim {

struct NetDemoOptions {
  SimRunOptions run{.guests = 2, .seconds = 0};
};

// The run's: --guests, --seconds (0: until SIGTERM/SIGINT), --json.
void add_netback_demo_cli(CLI::App& app, NetDemoOptions& opt);

// Runs the daemon and the guests; exit status 0 when the run ended clean
// (nothing left mapped or connected), 1 when not, 2 when it could not start.
int run_netback_demo(const DaemonCli& cli, NetbackOptions nopt, const NetDemoOptions& opt);

}  // namespace xenpath::sim
