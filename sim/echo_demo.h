// `xenpath-sim demo`: the echo split driver on the simulated host with
// guests exchanging requests through it (echo_demo.cc).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "sim/sim_demo.h"

namespace xenpath::sim {

struct EchoDemoOptions {
  SimRunOptions run;
  unsigned devices = 2;
  unsigned workers = 2;
  unsigned burst = 32;
  std::string socket = "/tmp/xenpath-sim.sock";
};

// The run's (--guests, --seconds, --json), --devices, --workers, --burst,
// --socket.
void add_echo_demo_cli(CLI::App& app, EchoDemoOptions& opt);
// SIGINT/SIGTERM end the run early (its self-check still runs).
void stop_echo_demo_on_signals();
// Exit status 0 when the run and its self-check passed, 1 if not, 2 when it
// could not start.
int run_echo_demo(const EchoDemoOptions& opt);

}  // namespace xenpath::sim
