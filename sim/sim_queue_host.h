// SimQueueHost: what driving ONE backend queue (a VbdQueue, a VifQueue)
// directly takes, without xenstore or a device type: a SimHypervisor, one
// guest domain, a backend reactor thread with its XenWorker (dom0's grant
// table and event channel handles) and the guest's own event channel
// handle, for the simulated frontend. The queue tests and the queue
// benchmarks build their queue and frontend on it.
//
// Threads: created, used and destroyed by one controlling thread; the
// worker belongs to the reactor thread (queues start and stop there, through
// Reactor::call). Guest memory: the guest domain's, which the frontend the
// caller builds writes and the queue maps.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "blkback/blk_queue.h"
#include "common/reactor.h"
#include "common/result.h"
#include "common/xen_worker.h"
#include "netback/net_queue.h"
#include "sim/blk/sim_blkfront.h"
#include "sim/net/sim_netfront.h"
#include "sim/sim_hypervisor.h"

namespace xenpath::sim {

class SimQueueHost {
 public:
  struct Options {
    DomId guest = 1;
    uint32_t guest_pages = 2048;
    std::string reactor_name = "queue";
    unsigned uring_entries = 256;  // 0: the queue needs no io_uring (netback)
    int cpu = -1;                  // >= 0: pin the reactor thread there
  };

  static Result<std::unique_ptr<SimQueueHost>> create(const Options& opts) noexcept;
  // Stops the reactor after the worker is gone. A queue must be stopped
  // first (stop_queue).
  ~SimQueueHost();
  SimQueueHost(const SimQueueHost&) = delete;
  SimQueueHost& operator=(const SimQueueHost&) = delete;

  [[nodiscard]] SimHypervisor& hv() noexcept { return hv_; }
  [[nodiscard]] DomId guest_id() const noexcept { return opts_.guest; }
  [[nodiscard]] SimDomain& guest() noexcept { return *guest_; }
  [[nodiscard]] Reactor& reactor() noexcept { return *reactor_; }
  [[nodiscard]] XenWorker& worker() noexcept { return *worker_; }
  [[nodiscard]] EventChannel& guest_evtchn() noexcept { return *guest_evtchn_; }
  [[nodiscard]] uint64_t live_maps() noexcept { return hv_.counters().mapped_pages_live.load(); }
  [[nodiscard]] uint64_t map_calls() noexcept { return hv_.counters().map_calls.load(); }

  // Stops `queue` on the reactor thread, retrying (at most `tries` times,
  // `between` run before each retry) while it answers EBUSY (I/O or
  // packets still hold guest pages), then destroys it there. Returns the
  // first error other than EBUSY (the queue is destroyed all the same).
  template <class Queue>
  Status stop_queue(std::unique_ptr<Queue>& queue, unsigned tries, const std::function<void()>& between = {}) {
    if (!queue) return ok();
    Status result = ok();
    for (unsigned i = 0; i < tries; ++i) {
      Status st = ok();
      reactor_->call([&] { st = queue->stop(); });
      if (st) break;
      if (st.error() != EBUSY) {
        result = st;
        break;
      }
      if (between) between();
    }
    reactor_->call([&] { queue.reset(); });
    return result;
  }

 private:
  explicit SimQueueHost(const Options& opts) noexcept : opts_(opts) {}

  Options opts_;
  SimHypervisor hv_;
  SimDomain* guest_ = nullptr;
  std::unique_ptr<Reactor> reactor_;
  std::unique_ptr<XenWorker> worker_;
  std::unique_ptr<EventChannel> guest_evtchn_;
};

// What a queue's configuration takes from its simulated frontend (domain
// `frontend`): the ring references and event channels, and for a VBD the
// protocol and persistent grants it negotiated. The rest keeps the Config's
// defaults.
VbdQueue::Config vbd_queue_config(const SimBlkfront& front, DomId frontend);
VifQueue::Config vif_queue_config(const SimNetfront& front, DomId frontend);

}  // namespace xenpath::sim
