// BlkbackService: the blkif backend installed on a BackendDaemon — a
// BlkWorker (grant table + event channel handles, port dispatch) on each of
// the daemon's worker reactors and the vbd device type over them, with its
// figures in the daemon's stats document. xenpath-blkback (real Xen), the
// simulated host's `xenpath-sim blkback` and SimBlkHost (tests, the load
// generator) are all this. The Service shape of common/daemon_main.h.
//
// Threads: created and destroyed on the daemon's owning thread, before
// BackendDaemon::start() and after BackendDaemon::stop(). The stats function
// runs on the control reactor and reads single-writer counters only. No
// guest memory is touched here (the queues do).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "blkback/blk_device.h"
#include "blkback/blk_queue.h"
#include "cache/block_cache.h"
#include "common/daemon.h"
#include "common/daemon_main.h"

namespace xenpath {

class BlkbackService {
 public:
  using Options = VbdOptions;
  // xenpath-blkback's process: one worker per CPU, each with an io_uring; info logs.
  static DaemonCli cli_defaults();
  // --backend-type, --max-queues, --max-ring-page-order,
  // --max-indirect-segments, --no-persistent, --cache-mib (default
  // kDefaultCacheMib), --cache-block-kib.
  static void add_cli(CLI::App& app, Options& opts);
  // The daemon's read cache by default: a Linux boot set of one base image
  // (100-300 MiB read) fits, and it is a small share of a dom0 of a few GiB
  // (the arena is allocated and faulted in once, at start).
  static constexpr uint64_t kDefaultCacheMib = 256;

  // Opens a BlkWorker per worker reactor, adds the VbdDeviceType (errors of
  // its devices reported through the daemon) and the stats contribution.
  static Result<std::unique_ptr<BlkbackService>> create(BackendDaemon& daemon, const VbdOptions& opts) noexcept;
  ~BlkbackService() = default;
  BlkbackService(const BlkbackService&) = delete;
  BlkbackService& operator=(const BlkbackService&) = delete;

  [[nodiscard]] std::string_view type_name() const noexcept { return type_name_; }
  [[nodiscard]] std::vector<BlkWorker*> workers() const { return workers_.get(); }
  // Grant pages the workers have mapped now; event channels bound to queues.
  [[nodiscard]] uint64_t mapped_pages() const noexcept { return workers_.mapped_pages(); }
  [[nodiscard]] uint64_t bound_ports() const noexcept { return workers_.bound_ports(); }

  // The shared read cache; nullptr when off (--cache-mib 0).
  [[nodiscard]] BlockCache* cache() const noexcept { return cache_.get(); }

  // The stats document's blkback part: totals, one entry per VBD, the cache
  // (global and per base image).
  // Control thread (it walks the driver's devices).
  void add_stats(nlohmann::json& j, const BackendDriver& driver) const;
  // Its Prometheus families (xenpath_vbd_*) from that part of a snapshot.
  static void add_metrics(const nlohmann::json& stats, MetricSet& out);

 private:
  BlkbackService() noexcept = default;
  void add_cache_stats(nlohmann::json& j) const;
  // The control socket's `cache` method (control thread): {"op": "stats"}
  // or {"op": "drop", "image": optional id or path}.
  void cache_method(const nlohmann::json& params, const ControlServer::Responder& r, const BackendDriver& driver) const;

  // Before workers_: destroyed after them, and after every device (the
  // daemon stops, and drops its devices, before the service goes).
  std::unique_ptr<BlockCache> cache_;
  XenWorkerSet workers_;
  std::string type_name_;
};

}  // namespace xenpath
