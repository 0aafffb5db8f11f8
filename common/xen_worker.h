// XenWorker: one reactor's Xen handles — a grant-table handle and an
// event-channel handle — shared by every queue that reactor runs (VBD
// queues, VIF queues and their control channels, echo queues), and the
// dispatch of the event channel's fd to those queues by local port.
//
// Why one handle per reactor: a grant-table or event-channel handle is owned
// by one thread (common/xen/*.h), and one epoll registration per reactor
// instead of one per queue keeps the per-device cost constant.
//
// Also here, the shape every ring poller of both backends shares (VBD and
// VIF queues, the netif control channel): XenRingPoller (start/init/
// teardown, poller registration), WorkerPort (one bound interdomain event
// channel and its mask state) and start_on_worker() (a device's connect
// step, run on the queue's worker).
//
// Threads: the reactor's thread only; create() and the destructor use
// Reactor::call from outside. It touches no guest memory: its targets do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <unordered_map>
#include <vector>

#include "common/reactor.h"
#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/grant_table.h"
#include "common/xen/platform.h"

namespace xenpath {

// What a worker hands a pending local port to, on the worker's thread. The
// port stays masked (evtchn device semantics) until the target unmasks it,
// normally in its Poller::arm() after polling.
class EvtchnTarget {
 public:
  virtual ~EvtchnTarget() = default;
  virtual void on_event(EvtchnPort local) noexcept = 0;
};

class XenWorker {
 public:
  static Result<std::unique_ptr<XenWorker>> create(Reactor& reactor, XenPlatform& platform) noexcept;
  // Same, with handles the caller opened (tests, the simulated host).
  static Result<std::unique_ptr<XenWorker>> create(Reactor& reactor, std::unique_ptr<GrantTable> gt,
                                                   std::unique_ptr<EventChannel> evtchn) noexcept;
  ~XenWorker();
  XenWorker(const XenWorker&) = delete;
  XenWorker& operator=(const XenWorker&) = delete;

  [[nodiscard]] Reactor& reactor() noexcept { return reactor_; }
  [[nodiscard]] GrantTable& grant_table() noexcept { return *gt_; }
  [[nodiscard]] EventChannel& event_channel() noexcept { return *evtchn_; }
  // Local ports with a target (bound queues and channels).
  [[nodiscard]] size_t queues() const noexcept { return ports_.size(); }

  void add_port(EvtchnPort port, EvtchnTarget* target) noexcept;
  void remove_port(EvtchnPort port) noexcept;

 private:
  XenWorker(Reactor& reactor, std::unique_ptr<GrantTable> gt, std::unique_ptr<EventChannel> evtchn) noexcept
      : reactor_(reactor), gt_(std::move(gt)), evtchn_(std::move(evtchn)) {}
  void on_events() noexcept;

  Reactor& reactor_;
  std::unique_ptr<GrantTable> gt_;
  std::unique_ptr<EventChannel> evtchn_;
  std::unordered_map<EvtchnPort, EvtchnTarget*> ports_;
  bool watching_ = false;
};

// The XenWorkers of a backend service: one per worker reactor of its
// daemon, in the daemon's order. Owned by the daemon's owning thread; the
// workers go after the reactors stopped.
class XenWorkerSet {
 public:
  // A XenWorker (its own grant-table and event-channel handles) on each reactor.
  Status open(const std::vector<Reactor*>& reactors, XenPlatform& platform) noexcept;
  [[nodiscard]] std::vector<XenWorker*> get() const;
  // Grant pages mapped through them now; local ports bound to targets.
  [[nodiscard]] uint64_t mapped_pages() const noexcept;
  [[nodiscard]] uint64_t bound_ports() const noexcept;

 private:
  std::vector<std::unique_ptr<XenWorker>> workers_;
};

// One interdomain event channel a ring poller binds on its worker, routed to
// the poller. The evtchn device masks a port when it reports it; the poller
// notes that in on_event() and lets the next event through in its arm(),
// after polling (so an event during a poll costs no extra wake-up).
// Owned by the worker's thread; unbinds itself at the latest when destroyed.
class WorkerPort {
 public:
  WorkerPort() noexcept = default;
  ~WorkerPort() { unbind(); }
  WorkerPort(const WorkerPort&) = delete;
  WorkerPort& operator=(const WorkerPort&) = delete;

  Status bind(XenWorker& worker, DomId frontend, EvtchnPort remote, EvtchnTarget* target) noexcept;
  // Idempotent.
  void unbind() noexcept;
  [[nodiscard]] bool bound() const noexcept { return worker_ != nullptr; }
  [[nodiscard]] EvtchnPort local() const noexcept { return local_; }

  // From the target's on_event(): the port is masked until unmask().
  void on_event() noexcept { masked_ = true; }
  void unmask() noexcept;
  void notify() noexcept;

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

  // The start() of every ring poller: `make` allocates it (new; ENOMEM if
  // that throws), then init(); if init() fails, teardown() undoes whatever
  // it had set up before the object goes, so init() can bail out anywhere.
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

// A device's connect step for one queue: runs `start` (returning
// Result<std::unique_ptr<T>>) on the queue's worker thread, where a ring
// poller must be created, and stores the poller in `slot`.
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
