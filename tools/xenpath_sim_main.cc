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

// One daemon subcommand: the daemon's options (as its production main has
// them), the service's, and the simulated run's.
template <class Service, class Demo>
struct DaemonRun {
  DaemonCli cli = Service::cli_defaults();
  typename Service::Options opts;
  Demo demo;

  CLI::App* add(CLI::App& app, const char* name, const char* help, void (*add_demo)(CLI::App&, Demo&)) {
    CLI::App* sub = app.add_subcommand(name, help);
    add_service_cli<Service>(*sub, cli, opts);
    add_demo(*sub, demo);
    return sub;
  }
  template <typename Run>
  int run(Run fn) {
    finish_daemon_cli(cli);
    // Before any thread (EAL's included): the signals reach only this one.
    block_termination_signals();
    return fn(cli, opts, demo);
  }
};

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
  DaemonRun<BlkbackService, BlkDemoOptions> blk;
  CLI::App* b =
      blk.add(app, "blkback", "xenpath-blkback on the simulated host, guests doing verified I/O", add_blkback_demo_cli);
  DaemonRun<NetbackService, NetDemoOptions> net;
  CLI::App* n = net.add(app, "netback", "xenpath-netback on the simulated host, guests' frames on a loopback wire",
                        add_netback_demo_cli);

  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  if (*b) return blk.run(run_blkback_demo);
  if (*n) return net.run(run_netback_demo);
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
