// XenWorker: one reactor's Xen handles — a grant-table handle and an
// event-channel handle — shared by every queue that reactor runs (VBD
// queues, VIF queues and their control channels, echo queues), and the
// dispatch of the event channel's fd to those queues by local port.
//
// Why one handle per reactor: a grant-table or event-channel handle is owned
// by one thread (common/xen/*.h), and one epoll registration per reactor
// instead of one per queue keeps the per-device cost constant.
//
// What a ring poller builds on these handles (its mapped ring, its bound
// event channel, its start-up) is common/guest_channel.h.
//
// Threads: the reactor's thread only; create() and the destructor use
// Reactor::call from outside. It touches no guest memory: its targets do.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <utility>
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

}  // namespace xenpath
