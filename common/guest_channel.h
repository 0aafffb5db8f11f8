// The plumbing every backend ring poller shares (VBD queues, VIF queues and
// their control channel, the simulator's echo queues): a frontend's ring
// pages mapped and a BackRing attached to them (map_guest_ring), its
// interdomain event channel bound on the worker and routed to the poller
// (GuestEvtchn), the poller's start-up contract and reactor registration
// (XenRingPoller), and a device's connect step run on the queue's worker
// (start_on_worker).
//
// Threads: the worker's (reactor) thread only; start_on_worker is called
// from the device's control thread and runs its step there. Guest memory:
// the ring pages map_guest_ring maps; nothing else.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include "common/log.h"
#include "common/reactor.h"
#include "common/result.h"
#include "common/stats.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen_worker.h"

namespace xenpath {

// Maps a frontend's ring pages (writable) into `mapping` and attaches
// `ring` (a BackRing, or anything with its attach()) to them. A failure is
// the guest's (bad grants, a malformed ring) and is logged as such, naming
// the ring `what`.
template <typename Ring>
Status map_guest_ring(XenWorker& worker, DomId frontend, std::span<const GrantRef> refs, GrantMapping& mapping,
                      Ring& ring, RingQueueStats* stats, DeviceLog& log, std::string_view what) noexcept {
  auto m = worker.grant_table().map(frontend, refs, /*writable=*/true);
  if (!m) {
    if (refs.size() > 1) {
      log.guest("cannot map the {} ring ({} pages): {}", what, refs.size(), error_string(m.error()));
    } else {
      log.guest("cannot map the {} ring: {}", what, error_string(m.error()));
    }
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
// events routed to a target (the poller); unbound by unbind() or, at the
// latest, the destructor. The evtchn device masks a port when it reports
// it: the target notes that with reported() in its on_event() and lets the
// next event through with unmask_reported() in its Poller::arm(), after
// polling (so an event during a poll costs no extra wake-up).
// Owned by the worker's thread.
class GuestEvtchn {
 public:
  GuestEvtchn() noexcept = default;
  ~GuestEvtchn() { unbind(); }
  GuestEvtchn(const GuestEvtchn&) = delete;
  GuestEvtchn& operator=(const GuestEvtchn&) = delete;

  // Unbinds first if bound.
  Status bind(XenWorker& worker, DomId frontend, EvtchnPort remote, EvtchnTarget* target) noexcept;
  // Idempotent.
  void unbind() noexcept;

  [[nodiscard]] bool bound() const noexcept { return worker_ != nullptr; }
  [[nodiscard]] EvtchnPort local() const noexcept { return local_; }
  // Whether the worker's event on `local` is this channel's.
  [[nodiscard]] bool is(EvtchnPort local) const noexcept { return worker_ != nullptr && local == local_; }

  // From the target's on_event(): the port stays masked until unmask_reported().
  void reported() noexcept { masked_ = true; }
  void unmask_reported() noexcept {
    if (masked_ && worker_ != nullptr) (void)worker_->event_channel().unmask(local_);
    masked_ = false;
  }
  void notify() noexcept {
    if (worker_ != nullptr) (void)worker_->event_channel().notify(local_);
  }

 private:
  XenWorker* worker_ = nullptr;  // set while bound
  EvtchnPort local_ = 0;
  bool masked_ = false;
};

// The base of a ring poller: a Poller on its worker's reactor that the
// worker's event channel wakes. Derived classes keep everything protocol
// specific; this keeps the start-up contract and the poller registration.
// Same thread as its worker; touches no guest memory itself.
class XenRingPoller : public Poller, public EvtchnTarget {
 public:
  XenRingPoller(const XenRingPoller&) = delete;
  XenRingPoller& operator=(const XenRingPoller&) = delete;

 protected:
  explicit XenRingPoller(XenWorker& worker) noexcept : worker_(worker) {}
  ~XenRingPoller() override { stop_polling(); }

  // The start() of every ring poller, in two phases: `make` allocates it
  // (new; its constructor acquires nothing that can fail; ENOMEM if it
  // throws), then init() acquires the guest's resources; if init() fails,
  // teardown() releases what it got so far before the object goes, so
  // init() can bail out anywhere.
  template <typename T, typename Make>
  static Result<std::unique_ptr<T>> start_with(Make&& make) noexcept {
    std::unique_ptr<T> p;
    try {
      p.reset(std::forward<Make>(make)());
    } catch (...) {
      return unexpected(ENOMEM);
    }
    XenRingPoller& base = *p;
    if (auto st = base.init(); !st) {
      base.teardown();
      return unexpected(st.error());
    }
    return p;
  }
  // Maps, binds and registers; called once by start_with().
  virtual Status init() noexcept = 0;
  // Undoes init() (also a partial one); idempotent.
  virtual void teardown() noexcept = 0;

  // The reactor polls us from now on / no longer. Idempotent.
  void start_polling() noexcept;
  void stop_polling() noexcept;

  XenWorker& worker_;

 private:
  bool polling_ = false;
};

// A device's connect step for one ring poller: runs `start` (returning
// Result<std::unique_ptr<T>>) on the worker's thread, where a ring poller
// must be created, and stores the poller in `slot` there, so the slot is
// set before the control thread's Reactor::call returns.
template <typename T, typename Start>
Status start_on_worker(XenWorker& worker, std::unique_ptr<T>& slot, Start&& start) noexcept {
  Status st = unexpected(EIO);
  worker.reactor().call([&] {
    auto q = start();
    if (!q) {
      st = unexpected(q.error());
      return;
    }
    slot = std::move(*q);
    st = ok();
  });
  return st;
}

}  // namespace xenpath
