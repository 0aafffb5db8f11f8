// BlkbackService: the blkif backend installed on a BackendDaemon — a
// BlkWorker (grant table + event channel handles, port dispatch) on each of
// the daemon's worker reactors and the vbd device type over them, with its
// figures in the daemon's stats document. xenpath-blkback (on Xen or the
// simulated host) and SimBlkHost (tests, the load generator) are both this.
//
// Threads: created and destroyed on the daemon's owning thread, before
// BackendDaemon::start() and after BackendDaemon::stop(). The stats function
// runs on the control reactor and reads single-writer counters only. No
// guest memory is touched here (the queues do).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "blkback/vbd_device.h"
#include "blkback/vbd_queue.h"
#include "common/daemon.h"

namespace xenpath {

class BlkbackService {
 public:
  // Opens a BlkWorker per worker reactor, adds the VbdDeviceType (errors of
  // its devices reported through the daemon) and the stats contribution.
  static Result<std::unique_ptr<BlkbackService>> create(BackendDaemon& daemon, const VbdOptions& opts) noexcept;
  ~BlkbackService() = default;
  BlkbackService(const BlkbackService&) = delete;
  BlkbackService& operator=(const BlkbackService&) = delete;

  [[nodiscard]] std::vector<BlkWorker*> workers() const;
  // Grant pages the workers have mapped now; event channels bound to queues.
  [[nodiscard]] uint64_t mapped_pages() const noexcept;
  [[nodiscard]] uint64_t bound_ports() const noexcept;

  // The stats document's blkback part: totals and one entry per VBD.
  // Control thread (it walks the driver's devices).
  void add_stats(nlohmann::json& j, const BackendDriver& driver) const;

 private:
  BlkbackService() noexcept = default;
  std::vector<std::unique_ptr<BlkWorker>> workers_;
};

}  // namespace xenpath
