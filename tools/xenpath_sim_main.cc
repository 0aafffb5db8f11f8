// xenpath-sim: the simulated Xen host with xenpath's backends on it.
//
//   xenpath-sim blkback    xenpath-blkback's daemon on the simulated host:
//                          guests with raw disks drive verified I/O through
//                          it (the README's first command).
//   xenpath-sim netback    xenpath-netback's daemon on the simulated host:
//                          guests whose frames a loopback wire sends back.
//   xenpath-sim demo       guests connect devices through the xenbus
//                          handshake and drive traffic through the shared
//                          rings; live per-device statistics; at the end the
//                          guests go away and the run checks that every
//                          mapping, channel and watch was released.
//   xenpath-sim xenstored  only the simulated xenstored, to poke at with
//                          xenstore-ls/-read/-write (XENSTORED_PATH=<socket>).
//
// The backend's control plane uses the production libxenstore adapter on the
// simulated xenstored's unix socket.
#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "blkback/blk_service.h"
#include "common/daemon_main.h"
#include "common/log.h"
#include "netback/net_service.h"
#include "sim/blk/blk_demo.h"
#include "sim/echo_demo.h"
#include "sim/net/net_demo.h"
#include "sim/sim_xenstored.h"

namespace {

using namespace std::chrono_literals;
using namespace xenpath;
using namespace xenpath::sim;

std::atomic<bool> g_interrupted{false};

int run_xenstored(const std::string& socket) {
  auto xsd = SimXenstored::start(socket);
  if (!xsd) {
    spdlog::critical("xenstored: {}", error_string(xsd.error()));
    return 2;
  }
  fmt::print("simulated xenstored on {} (Ctrl-C to stop)\n", (*xsd)->socket_path());
  std::fflush(stdout);
  while (!g_interrupted.load()) std::this_thread::sleep_for(100ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath on the simulated Xen host"};
  std::string level = "warn";
  app.add_option("--log-level", level, "trace, debug, info, warn, error");
  EchoDemoOptions demo;
  auto* d = app.add_subcommand("demo", "guests drive echo devices through the backend; live stats; self-check");
  add_echo_demo_cli(*d, demo);
  std::string xs_socket = "/tmp/xenpath-sim.sock";
  auto* x = app.add_subcommand("xenstored", "run only the simulated xenstored");
  x->add_option("--socket", xs_socket, "unix socket path");

  // The daemons, with the options of their production mains, on the simulated host.
  xenpath::DaemonCli blk_cli = xenpath::BlkbackService::cli_defaults();
  xenpath::BlkbackService::Options blk_opts;
  xenpath::sim::BlkDemoOptions blk_demo;
  auto* b = app.add_subcommand("blkback", "xenpath-blkback on the simulated host, guests doing verified I/O");
  xenpath::add_service_cli<xenpath::BlkbackService>(*b, blk_cli, blk_opts);
  xenpath::sim::add_blkback_demo_cli(*b, blk_demo);
  xenpath::DaemonCli net_cli = xenpath::NetbackService::cli_defaults();
  xenpath::NetbackService::Options net_opts;
  xenpath::sim::NetDemoOptions net_demo;
  auto* n = app.add_subcommand("netback", "xenpath-netback on the simulated host, guests' frames on a loopback wire");
  xenpath::add_service_cli<xenpath::NetbackService>(*n, net_cli, net_opts);
  xenpath::sim::add_netback_demo_cli(*n, net_demo);

  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  if (*b || *n) {
    xenpath::DaemonCli& cli = *b ? blk_cli : net_cli;
    xenpath::finish_daemon_cli(cli);
    // Before any thread (EAL's included): the signals reach only this one.
    xenpath::block_termination_signals();
    return *b ? xenpath::sim::run_blkback_demo(cli, blk_opts, blk_demo)
              : xenpath::sim::run_netback_demo(cli, net_opts, net_demo);
  }
  xenpath::log_init(level);
  if (*d) {
    stop_echo_demo_on_signals();
    return run_echo_demo(demo);
  }
  signal(SIGINT, [](int) { g_interrupted.store(true); });
  signal(SIGTERM, [](int) { g_interrupted.store(true); });
  signal(SIGPIPE, SIG_IGN);
  return run_xenstored(xs_socket);
}
