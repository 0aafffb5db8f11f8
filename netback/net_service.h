// NetbackService: the netif backend installed on a BackendDaemon — DPDK
// (EAL once per process), one packet pool, a NetWorker (grant table + event
// channel handles, port dispatch) on each worker reactor registered as a
// DPDK lcore, and the vif device type over them, each VIF with a port from
// the devargs template (or from Options::ports, the simulated host's wire),
// with its figures in the daemon's stats document. xenpath-netback (real
// Xen) and the simulated host's `xenpath-sim netback` are both this. The
// Service shape of common/daemon_main.h, as BlkbackService.
//
// Threads: created and destroyed on the daemon's owning thread, before
// BackendDaemon::start() and after BackendDaemon::stop() (its stop hook
// releases the workers' lcores while they still run). The stats function
// runs on the control reactor. No guest memory is touched here (the queues
// do).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/daemon.h"
#include "common/daemon_main.h"
#include "netback/net_device.h"
#include "netback/port_dpdk.h"

namespace xenpath {

struct NetbackOptions {
  VifOptions vif;
  // DPDK devargs per VIF, {domid}/{devid}/{queues} expanded; empty:
  // default_vif_devargs() (vhost-net where it opens, else net_tap).
  std::string port_template;
  // The complete EAL argument list, split at spaces; empty: DpdkEnv's default.
  std::string eal_args;
  // Set: every VIF's port comes from here instead of the template (the
  // simulated host's loopback wire).
  VifPortFactory ports;
  // The one packet pool every VIF's queues share.
  DpdkPoolConfig pool{.name = "netback"};
  // dom0's side of each VIF port (netback/vif_link.h): rtnetlink to the
  // Linux bridge the toolstack named (default), this executable instead when
  // set (--vif-hook), or nothing (--vif-link off).
  bool vif_link = true;
  std::string vif_hook;
  unsigned vif_hook_timeout_ms = 10'000;
};

class NetbackService {
 public:
  using Options = NetbackOptions;
  // xenpath-netback's process: one worker, no io_uring; warnings only.
  static DaemonCli cli_defaults();
  // --port-template, --eal-args, --max-queues, --tx-copy-below, --rx-gro,
  // --vif-link, --vif-hook, --vif-hook-timeout-ms.
  static void add_cli(CLI::App& app, Options& opts);

  // DPDK's EAL with opts.eal_args (once per process: a later call returns
  // the same environment, whatever its options).
  static Result<DpdkEnv*> init_dpdk(const Options& opts) noexcept;
  static Result<std::unique_ptr<NetbackService>> create(BackendDaemon& daemon, const Options& opts) noexcept;
  ~NetbackService() = default;
  NetbackService(const NetbackService&) = delete;
  NetbackService& operator=(const NetbackService&) = delete;

  [[nodiscard]] std::string_view type_name() const noexcept { return type_name_; }
  [[nodiscard]] DpdkEnv& env() noexcept { return *env_; }
  [[nodiscard]] PacketPool& pool() noexcept { return *pool_; }
  [[nodiscard]] std::vector<NetWorker*> workers() const { return workers_.get(); }
  // Grant pages the workers have mapped now.
  [[nodiscard]] uint64_t mapped_pages() const noexcept { return workers_.mapped_pages(); }

  // The stats document's netback part: totals and one entry per VIF.
  // Control thread (it walks the driver's devices).
  void add_stats(nlohmann::json& j, const BackendDriver& driver) const;
  // Its Prometheus families (xenpath_vif_*) from that part of a snapshot.
  static void add_metrics(const nlohmann::json& stats, MetricSet& out);

 private:
  NetbackService() noexcept = default;

  DpdkEnv* env_ = nullptr;  // process-wide
  std::unique_ptr<PacketPool> pool_;
  std::unique_ptr<VifLink> link_;  // VifOptions::link of every VIF; control thread
  XenWorkerSet workers_;
  std::string type_name_;
};

}  // namespace xenpath
