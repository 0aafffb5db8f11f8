// What every xenpath daemon's main() is made of: the command line the
// daemons share (DaemonCli), a BackendDaemon with one backend service on it
// (ServedDaemon<Service>), and serve_xen<Service>(), the production main:
// open the real Xen interfaces, serve until SIGTERM/SIGINT/SIGHUP, then
// disconnect every device and exit. The simulated host (sim/) builds its
// own programs from the same ServedDaemon and services; no production
// binary contains it.
//
// A Service is a backend module's `<x>_service` class:
//   using Options = ...;                                  its configuration
//   static DaemonCli cli_defaults();                      name, workers, io_uring, log level
//   static void add_cli(CLI::App&, Options&);             its command-line options
//   static Result<std::unique_ptr<Service>> create(BackendDaemon&, const Options&) noexcept;
//   std::string_view type_name() const;                   the xenstore device type served
//
// Threads: everything here runs on the program's main thread.
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "common/daemon.h"
#include "common/log.h"
#include "common/result.h"
#include "common/xen/platform.h"

namespace xenpath {

// The options every daemon takes, whatever it serves.
struct DaemonCli {
  DaemonOptions daemon;
  unsigned stats_interval_ms = 1000;
  std::string log_level = "info";
  bool verbose = false;    // debug logging
  std::string ctl_socket;  // empty: kCtlSocketDir/<name>.sock; "none": no socket
};

// Where the control sockets live by default (/run/xenpath/<daemon>.sock).
inline constexpr const char* kCtlSocketDir = "/run/xenpath";

// --workers, --first-cpu, --stats-file, --stats-interval-ms, --log-level, -v,
// --ctl-socket, --metrics-listen.
void add_daemon_cli(CLI::App& app, DaemonCli& cli);
// After parsing: applies what the options imply (stats interval, logging,
// the control socket's default path).
void finish_daemon_cli(DaemonCli& cli);

// The options of a daemon serving `Service`: the shared ones, then the
// service's. The production mains and xenpath-sim's subcommands add exactly
// these, so a daemon takes the same options on Xen and on the simulated host.
template <class Service>
void add_service_cli(CLI::App& app, DaemonCli& cli, typename Service::Options& opts) {
  add_daemon_cli(app, cli);
  Service::add_cli(app, opts);
}

// A BackendDaemon with `Service` installed on it. The service (its workers'
// handles) is destroyed only after the daemon stopped: nothing runs on the
// reactors then.
template <class Service>
struct ServedDaemon {
  std::unique_ptr<BackendDaemon> daemon;
  std::unique_ptr<Service> service;

  Status start(XenPlatform& platform, const DaemonOptions& dopt, const typename Service::Options& sopt) {
    XP_ASSIGN_OR_RETURN(daemon, BackendDaemon::create(platform, dopt));
    XP_ASSIGN_OR_RETURN(service, Service::create(*daemon, sopt));
    return daemon->start();
  }
  void stop() noexcept {
    if (daemon) daemon->stop();
    service.reset();
    daemon.reset();
  }
  ~ServedDaemon() { stop(); }
};

// The production main: serves the host's backend/<type> devices of this
// domain through libxen until a termination signal. Exit status: 0 after an
// orderly stop, 2 when Xen or the service cannot be opened.
template <class Service>
int serve_xen(const DaemonCli& cli, const typename Service::Options& sopt) {
  block_termination_signals();  // before any thread: signals reach only this one
  auto platform = open_libxen_platform();
  if (!platform) {
    spdlog::critical(
        "cannot open the Xen interfaces: {} (no /dev/xen/gntdev and /dev/xen/evtchn: not a dom0 or "
        "driver domain; the simulated host is `xenpath-sim`)",
        error_string(platform.error()));
    return 2;
  }
  ServedDaemon<Service> d;
  if (auto st = d.start(**platform, cli.daemon, sopt); !st) {
    spdlog::critical("cannot start: {}", error_string(st.error()));
    return 2;
  }
  fmt::print("{}: serving backend/{} of domain {} ({} workers); SIGTERM to stop\n", cli.daemon.name,
             d.service->type_name(), (*platform)->self(), d.daemon->workers().size());
  std::fflush(stdout);
  const int sig = wait_for_termination(std::chrono::seconds(1), [] { return true; });
  spdlog::info("signal {}: disconnecting every device", sig);
  d.stop();
  return 0;
}

// A production daemon's whole main(): `--platform xen|auto` (both the real
// interfaces; the simulated host is xenpath-sim's), the options, serve_xen.
template <class Service>
int daemon_main(int argc, char** argv, const std::string& description) {
  CLI::App app{description};
  DaemonCli cli = Service::cli_defaults();
  typename Service::Options opts;
  std::string platform = "xen";
  app.add_option("--platform", platform, "xen (auto: the same; the simulated host is `xenpath-sim`)")
      ->check(CLI::IsMember({"auto", "xen"}));
  add_service_cli<Service>(app, cli, opts);
  CLI11_PARSE(app, argc, argv);
  finish_daemon_cli(cli);
  return serve_xen<Service>(cli, opts);
}

}  // namespace xenpath
