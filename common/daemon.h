// BackendDaemon: the process skeleton every xenpath backend daemon shares
// (xenpath-blkback, xenpath-netback): one control reactor running the
// xenbus BackendDriver, N worker reactors for the datapath, a JSON stats
// file for operators and the lab, a control socket (JSON-RPC for
// xenpath-ctl: list, show, stats, set, version; common/daemon_ctl.cc), an
// opt-in Prometheus endpoint fed from the same stats snapshot, and an
// orderly stop on SIGTERM/SIGINT.
//
// The daemon does not know its device types: the program creates them over
// workers() (a BlkWorker or NetWorker per worker reactor) and add_type()s
// them, and contributes its own figures to the stats file with add_stats()
// and its metric families with add_metrics().
//
// Threads: create/start/stop and the accessors run on the program's main
// thread. The driver, the control socket and every stats function run on
// the control reactor (so they may read the driver's state); a worker is
// never blocked by them. Device datapaths live on the workers. The metrics
// endpoint's thread asks the control reactor for a snapshot. No guest
// memory is touched here.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/ctl_server.h"
#include "common/metrics.h"
#include "common/reactor.h"
#include "common/result.h"
#include "common/xen/platform.h"
#include "common/xenbus/backend_driver.h"

namespace xenpath {

struct DaemonOptions {
  std::string name = "xenpath";  // thread names and the stats file's "daemon"
  unsigned workers = 0;          // worker reactors; 0: one per online CPU (at most 64)
  int first_cpu = -1;            // >= 0: pin worker i to CPU first_cpu + i
  unsigned uring_entries = 256;  // per worker; 0: the workers need no io_uring
  std::chrono::microseconds poll_window{50};
  std::string stats_file;  // empty: none
  std::chrono::milliseconds stats_interval{1000};
  // The control socket (common/ctl_server.h); empty: none. When
  // ctl_socket_optional (the default path, not one the operator gave), a
  // socket that cannot be created is a warning, not a failure to start.
  std::string ctl_socket;
  bool ctl_socket_optional = false;
  // "ADDR:PORT" of the Prometheus endpoint; empty: none (opt-in).
  std::string metrics_listen;
  // Per-request latency (the workers' fine clock, Reactor::fine_now(), and
  // the queues' histograms): "auto" (on with a metrics endpoint), "on",
  // "off". Also `xenpath-ctl set latency_histograms=on|off` at runtime.
  std::string latency_histograms = "auto";
  BackendDriver::Options driver;
};

// A daemon-wide runtime setting (`xenpath-ctl set key=value`): applies
// `value` on the control reactor, returns what it did in words, EINVAL for a
// value it refuses.
struct DaemonSetting {
  std::string help;
  std::function<Result<std::string>(std::string_view value)> apply;
};

class BackendDaemon {
 public:
  // Adds the program's figures to the stats document (control thread).
  using StatsFn = std::function<void(nlohmann::json&)>;

  // Starts the reactors (not the driver yet). `platform` must outlive the
  // daemon.
  static Result<std::unique_ptr<BackendDaemon>> create(XenPlatform& platform, const DaemonOptions& opts) noexcept;
  ~BackendDaemon();
  BackendDaemon(const BackendDaemon&) = delete;
  BackendDaemon& operator=(const BackendDaemon&) = delete;

  [[nodiscard]] XenPlatform& platform() noexcept { return platform_; }
  [[nodiscard]] Reactor& control() noexcept { return *control_; }
  [[nodiscard]] std::vector<Reactor*> workers() const;
  [[nodiscard]] BackendDriver& driver() noexcept { return *driver_; }
  [[nodiscard]] const DaemonOptions& options() const noexcept { return opts_; }

  // Before start().
  Status add_type(std::unique_ptr<DeviceType> type) noexcept;
  void add_stats(StatsFn fn);
  // A service's Prometheus families from the stats snapshot.
  void add_metrics(MetricsFn fn);
  // A daemon-wide runtime setting (the daemon has "log_level").
  void add_setting(const std::string& key, DaemonSetting setting);
  // A service's own control-socket method (blkback's "cache"), served on
  // the control reactor like the daemon's.
  void add_method(const std::string& name, ControlServer::Method fn);
  // Per-request latency timing on every worker (Reactor::set_fine_clock):
  // the queues' latency histograms fill only while it is on. Any thread.
  void set_latency_timing(bool on) noexcept;
  [[nodiscard]] bool latency_timing() const noexcept;
  // Runs on the stopping thread once every device is disconnected and
  // before the reactors stop (a service's per-worker teardown, e.g. DPDK
  // lcores, through Reactor::call()). In the order added.
  void add_stop_hook(std::function<void()> fn);

  // Sets the driver's watches on the control reactor (devices that already
  // exist are picked up: a restarted daemon takes its devices back) and
  // starts the stats file.
  Status start() noexcept;
  // Disconnects every device (every grant unmapped, every port unbound),
  // removes the watches, stops the reactors. Idempotent; the destructor
  // calls it. The program destroys its device types' workers afterwards.
  void stop() noexcept;

  // The stats document now (any thread but the control reactor's).
  nlohmann::json stats();
  // One scrape: the daemon's and the services' families from one snapshot
  // (any thread but the control reactor's).
  std::vector<prometheus::MetricFamily> metrics();
  // The control socket's path and the metrics endpoint's address while
  // they serve (empty otherwise); the latter with the port actually bound.
  [[nodiscard]] std::string ctl_socket_path() const;
  [[nodiscard]] std::string metrics_address() const;
  // Writes it to options().stats_file (atomically: temp file + rename).
  Status write_stats_file();

  // A worker's way to fail a device (a halted queue): any thread.
  bool report_device_error(const DeviceAddress& addr, int error) noexcept {
    return driver_->report_device_error(addr.type, addr.frontend_id, addr.devid, error);
  }
  // The same as the error sink a device type takes (VbdErrorSink, ...).
  [[nodiscard]] std::function<void(const DeviceAddress&, int)> device_error_sink() noexcept {
    return [this](const DeviceAddress& addr, int error) { report_device_error(addr, error); };
  }

 private:
  BackendDaemon(XenPlatform& platform, const DaemonOptions& opts) noexcept : platform_(platform), opts_(opts) {}
  nlohmann::json collect();  // control thread
  Status write_file(const nlohmann::json& j) noexcept;
  // daemon_ctl.cc: the control socket and its methods (control thread).
  Status start_control() noexcept;
  void add_control_methods();
  std::vector<prometheus::MetricFamily> metrics_of(const nlohmann::json& snapshot);

  XenPlatform& platform_;
  DaemonOptions opts_;
  std::unique_ptr<Reactor> control_;
  std::vector<std::unique_ptr<Reactor>> workers_;
  std::unique_ptr<BackendDriver> driver_;
  std::vector<StatsFn> stats_fns_;
  std::vector<MetricsFn> metrics_fns_;
  std::map<std::string, DaemonSetting, std::less<>> settings_;
  std::map<std::string, ControlServer::Method> methods_;  // the services'
  std::unique_ptr<ControlServer> ctl_;                    // control thread
  std::unique_ptr<MetricsEndpoint> metrics_;
  std::vector<std::function<void()>> stop_hooks_;
  std::chrono::steady_clock::time_point started_at_{};
  bool started_ = false;
  bool stopped_ = false;
};

// Signals for a daemon's main thread: block_termination_signals() before any
// thread is created (so SIGTERM/SIGINT/SIGHUP reach only the main thread),
// then wait_for_termination() returns the signal number, or 0 when `tick`
// (called every `period`) returned false.
void block_termination_signals() noexcept;
int wait_for_termination(std::chrono::milliseconds period, const std::function<bool()>& tick);

}  // namespace xenpath
