// The plumbing every backend ring poller repeats (VIF queues and their
// control channel, VBD queues, the simulator's echo device): a frontend's
// ring pages mapped and a BackRing attached to them, its interdomain event
// channel bound on the worker and routed to the poller, and the two-phase
// start of such a poller (construct, init, and on failure tear down what
// init acquired before the object goes).
//
// Threads: the worker's (reactor) thread only. Guest memory: the ring pages
// map_guest_ring maps; nothing else.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include "common/log.h"
#include "common/result.h"
#include "common/stats.h"
#include "common/xen/grant_table.h"
#include "common/xen_worker.h"

namespace xenpath {

// Maps a frontend's ring pages (writable) into `mapping` and attaches
// `ring` (a BackRing) to them. A failure is the guest's (bad grants, a
// malformed ring) and is logged as such, naming the ring `what`.
template <typename Ring>
Status map_guest_ring(XenWorker& worker, DomId frontend, std::span<const GrantRef> refs, GrantMapping& mapping,
                      Ring& ring, RingQueueStats* stats, DeviceLog& log, std::string_view what) noexcept {
  auto m = worker.grant_table().map(frontend, refs, /*writable=*/true);
  if (!m) {
    log.guest("cannot map the {} ring: {}", what, error_string(m.error()));
    return unexpected(m.error());
  }
  mapping = std::move(*m);
  if (auto st = ring.attach(mapping.data(), mapping.size_bytes(), stats); !st) {
    log.guest("bad {} ring: {}", what, error_string(st.error()));
    return st;
  }
  return ok();
}

// A frontend's interdomain event channel, bound on a worker with its
// events routed to a target; unbound by unbind() or the destructor. A
// reported port stays masked (evtchn device semantics) until the target
// calls unmask_reported(), normally in its Poller::arm().
class GuestEvtchn {
 public:
  GuestEvtchn() noexcept = default;
  ~GuestEvtchn() { unbind(); }
  GuestEvtchn(const GuestEvtchn&) = delete;
  GuestEvtchn& operator=(const GuestEvtchn&) = delete;

  Status bind(XenWorker& worker, DomId frontend, EvtchnPort remote, EvtchnTarget* target) noexcept {
    XP_ASSIGN_OR_RETURN(local_, worker.event_channel().bind_interdomain(frontend, remote));
    worker_ = &worker;
    worker.add_port(local_, target);
    return ok();
  }
  void unbind() noexcept {
    if (worker_ == nullptr) return;
    worker_->remove_port(local_);
    (void)worker_->event_channel().unbind(local_);
    worker_ = nullptr;
    masked_ = false;
  }

  [[nodiscard]] bool bound() const noexcept { return worker_ != nullptr; }
  [[nodiscard]] EvtchnPort local() const noexcept { return local_; }
  [[nodiscard]] bool is(EvtchnPort local) const noexcept { return worker_ != nullptr && local == local_; }

  // The worker reported an event on it (EvtchnTarget::on_event).
  void reported() noexcept { masked_ = true; }
  void unmask_reported() noexcept {
    if (masked_ && worker_ != nullptr) (void)worker_->event_channel().unmask(local_);
    masked_ = false;
  }
  void notify() noexcept {
    if (worker_ != nullptr) (void)worker_->event_channel().notify(local_);
  }

 private:
  XenWorker* worker_ = nullptr;
  EvtchnPort local_ = 0;
  bool masked_ = false;
};

// The two-phase start of a poller T: `make()` returns a new T (its
// constructor acquires nothing that can fail), then T::init() acquires the
// guest's resources; on failure T::teardown() releases what init got so far
// before T is destroyed. T may keep init/teardown and its constructor
// private by befriending TwoPhaseStart and calling run() from a member.
struct TwoPhaseStart {
  template <typename T, typename Make>
  static Result<std::unique_ptr<T>> run(Make&& make) noexcept {
    std::unique_ptr<T> obj;
    try {
      obj.reset(std::forward<Make>(make)());
    } catch (...) {
      return unexpected(ENOMEM);
    }
    if (auto st = obj->init(); !st) {
      obj->teardown();
      return unexpected(st.error());
    }
    return obj;
  }
};

}  // namespace xenpath
