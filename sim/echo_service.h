// EchoService: the echo device type (echo_device.h, the simulator's smallest
// complete split driver) installed on a BackendDaemon, in the Service shape
// of common/daemon_main.h that BlkbackService and NetbackService have, so
// `xenpath-sim demo`, the xenbus lifecycle tests and the scale test run it
// exactly as the daemons run theirs (ServedDaemon<EchoService>).
//
// Threads: created and destroyed on the daemon's owning thread, before
// BackendDaemon::start() and after BackendDaemon::stop(). No guest memory is
// touched here (the queues do).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/daemon.h"
#include "common/daemon_main.h"
#include "common/xen_worker.h"
#include "sim/echo_device.h"

namespace xenpath::sim {

struct EchoOptions {
  std::string type_name = "echo";
};

class EchoService {
 public:
  using Options = EchoOptions;
  // Two workers, no io_uring, warnings only.
  static DaemonCli cli_defaults();
  // --type.
  static void add_cli(CLI::App& app, Options& opts);
  static Result<std::unique_ptr<EchoService>> create(BackendDaemon& daemon, const Options& opts) noexcept;

  [[nodiscard]] std::string_view type_name() const noexcept { return type_name_; }
  [[nodiscard]] std::vector<EchoWorker*> workers() const { return workers_.get(); }
  [[nodiscard]] uint64_t mapped_pages() const noexcept { return workers_.mapped_pages(); }

 private:
  EchoService() noexcept = default;
  XenWorkerSet workers_;
  std::string type_name_;
};

}  // namespace xenpath::sim
