// SimBlkHost: a complete simulated Xen host serving VBDs with the production
// backend, for the load generator, tests and demos. It is what the daemon
// plus a toolstack plus a guest kernel would be:
//   - a SimHost (hypervisor + xenstored on its unix socket);
//   - the backend as xenpath-blkback runs it: a BackendDaemon (the
//     BackendDriver on a control reactor over the real libxenstore adapter,
//     W worker reactors doing io_uring) with the BlkbackService on it;
//   - a SimToolstack plugging disks as libxl does;
//   - one guest domain whose "kernel" attaches each disk: the xenbus
//     handshake with the chosen options (protocol, ring order, queues,
//     persistent grants, indirect descriptors) and one SimBlkfront ring per
//     queue.
//
// Threads: create/attach/detach/destruction on one controlling thread. The
// SimBlkfronts of a disk belong to whichever guest thread then drives them
// (their event channel handle is the caller's). Backend work runs on the
// reactors. Guest memory: the guest domain's, through the SimBlkfronts.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "blkback/blk_device.h"
#include "blkback/blk_service.h"
#include "common/daemon.h"
#include "common/reactor.h"
#include "common/result.h"
#include "common/xenbus/backend_driver.h"
#include "sim/blk/sim_blkfront.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenbus_frontend.h"

namespace xenpath::sim {

class SimBlkHost {
 public:
  struct Options {
    unsigned workers = 1;
    VbdOptions vbd;                             // what the backend offers (max_queues 0: one per worker)
    std::chrono::microseconds poll_window{50};  // the worker reactors' spin after work
    DomId guest = 5;
    uint32_t guest_pages = 65536;    // guest memory (a sparse memfd: only touched pages cost)
    uint32_t grant_entries = 65536;  // per domain
  };

  // What the guest's blkfront asks for. Persistent grants and indirect
  // descriptors are used only when the backend offers them too.
  struct FrontOptions {
    BlkProtocol protocol = BlkProtocol::kNative;
    unsigned ring_order = 0;
    unsigned queues = 1;
    bool persistent = true;
    bool indirect = true;
    // Take min(queues, multi-queue-max-queues) as Linux blkfront does,
    // instead of refusing a backend that offers fewer (EINVAL).
    bool fewer_queues_ok = false;
  };

  struct Disk {
    uint32_t devid = 0;
    uint64_t bytes = 0;                  // "sectors" * 512, as the guest reads it
    uint32_t max_indirect_segments = 0;  // negotiated (0: direct requests only)
    bool persistent = false;             // negotiated
    std::unique_ptr<SimXenbusFrontend> xenbus;
    std::vector<std::unique_ptr<SimBlkfront>> queues;
  };

  static Result<std::unique_ptr<SimBlkHost>> create(const Options& opts) noexcept;
  // Closes every disk still attached, stops the backend, checks nothing of
  // the guest stayed mapped (logs an error if it did).
  ~SimBlkHost();
  SimBlkHost(const SimBlkHost&) = delete;
  SimBlkHost& operator=(const SimBlkHost&) = delete;

  // A fresh event channel handle of the guest (one per guest thread),
  // owned by the host: it outlives every disk and goes before the host.
  Result<EventChannel*> open_guest_event_channel() noexcept;
  // Plugs disk `devid` with `params` (mode "w", or "r" if read_only) and
  // connects it: the rings' ports are bound on `evtchn`, which must outlive
  // the disk (one from open_guest_event_channel()). EPIPE if the backend refused the frontend.
  Result<Disk*> attach(uint32_t devid, const std::string& params, const FrontOptions& fo, EventChannel& evtchn,
                       bool read_only = false) noexcept;
  // The guest kernel's half of attach() for a disk the toolstack already
  // plugged at /local/domain/<domid>/device/vbd/<devid>: waits for InitWait,
  // reads the backend's features, builds the rings and connects. For hosts
  // with several guests (the daemon's simulated mode); `guest_xs` is a
  // connection of that guest.
  static Result<std::unique_ptr<Disk>> connect_disk(SimDomain& guest, XenStore& guest_xs, EventChannel& evtchn,
                                                    DomId domid, uint32_t devid, const FrontOptions& fo) noexcept;
  // connect_disk() in two halves, so that a guest (or a host of guests)
  // can publish every disk's rings before waiting for any backend, as a
  // booting kernel probes its devices: publish_disk() ends after the keys
  // and Initialised are written, await_disk() waits for the backend's
  // Connected and writes the frontend's.
  static Result<std::unique_ptr<Disk>> publish_disk(SimDomain& guest, XenStore& guest_xs, EventChannel& evtchn,
                                                    DomId domid, uint32_t devid, const FrontOptions& fo) noexcept;
  static Status await_disk(Disk& disk) noexcept { return disk.xenbus->await_connected(); }
  // Orderly close (xenbus Closing/Closed, the backend drains and unmaps),
  // the rings go, then the toolstack removes the device.
  Status detach(uint32_t devid) noexcept;

  // Backend side, for reports. Valid while the disk is attached.
  const VbdDevice* device(uint32_t devid) noexcept;
  // CPU clocks of the worker reactor threads (CLOCK_THREAD_CPUTIME_ID of
  // each), for clock_gettime().
  [[nodiscard]] const std::vector<clockid_t>& worker_clocks() const noexcept { return worker_clocks_; }
  [[nodiscard]] SimHost& host() noexcept { return *host_; }
  [[nodiscard]] BlkbackService& service() noexcept { return *service_; }
  [[nodiscard]] SimDomain& guest() noexcept { return *guest_; }

 private:
  explicit SimBlkHost(const Options& opts) noexcept : opts_(opts) {}
  Status init() noexcept;

  Options opts_;
  std::unique_ptr<SimHost> host_;
  std::unique_ptr<XenPlatform> platform_;
  std::unique_ptr<BackendDaemon> daemon_;
  std::unique_ptr<BlkbackService> service_;
  std::vector<clockid_t> worker_clocks_;
  std::unique_ptr<XenStore> tools_xs_;
  std::unique_ptr<SimToolstack> tools_;
  SimDomain* guest_ = nullptr;
  std::unique_ptr<XenStore> guest_xs_;
  std::vector<std::unique_ptr<EventChannel>> guest_evtchns_;
  std::vector<std::unique_ptr<Disk>> disks_;
};

}  // namespace xenpath::sim
