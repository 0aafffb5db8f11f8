// Simulated event channels: Xen's interdomain channel rules (ports per
// domain, alloc_unbound / bind_interdomain / close / send) on a host-wide
// port table, and handles with the Linux evtchn device's semantics on an
// eventfd.
//
// What a handle does, as /dev/xen/evtchn does:
// - fd() is one non-blocking eventfd per handle, readable exactly while
//   pending() has something to return (or the ring overflowed).
// - A port that fires while enabled is queued once and becomes masked; an
//   event on a masked port is latched (one bit, like Xen's pending bit) and
//   queued again by unmask(). pending() returns queued ports in order, one
//   per call, EAGAIN when none (EFBIG after a ring overflow, as read() on the
//   device does; only a handle that unmasks ports without reading them can
//   overflow).
// - A port starts enabled when bound, and bind_interdomain() leaves an event
//   pending on the new local port: Xen sets it "conservatively" because the
//   remote end may have notified its unbound port before we bound it.
// - notify() on a port this handle did not bind: ENOTCONN; unbind() of such
//   a port: ENOTCONN (EINVAL beyond the port range); unmask() of such a port
//   is ignored (the device's write() does the same).
// - Notifying a port whose peer has gone (unbound, or the peer domain was
//   destroyed) is silently dropped, as Xen drops a send on an unbound port.
//
// Error codes are Xen's for the hypercalls: bind_interdomain() with an
// unknown remote domain ESRCH; with a remote port that is not unbound or is
// reserved for another domain EINVAL; no free port ENOSPC (4096 per domain,
// the 2-level ABI's limit on 64-bit).
//
// Thread-safety: one mutex in SimPortTable guards every port and every
// handle's queue, so a frontend thread's notify() and a backend reactor's
// pending()/unmask() on different handles (or the same one) are safe. The
// SimPortTable (inside SimHypervisor) must outlive its handles.
//
// Guest-shared memory: none.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/types.h"
#include "sim/sim_host.h"

namespace xenpath::sim {

class SimEventChannel;

// What EVTCHNOP_status would say about a port.
struct EvtchnStatus {
  enum class State : uint8_t { kClosed, kUnbound, kInterdomain };
  State state = State::kClosed;
  DomId remote_dom = 0;        // kUnbound: who may bind it; kInterdomain: the peer
  EvtchnPort remote_port = 0;  // kInterdomain only
};

class SimPortTable {
 public:
  // Ports per domain: EVTCHN_2L_NR_CHANNELS on a 64-bit guest. Port 0 is
  // reserved, as in Xen.
  static constexpr EvtchnPort kMaxPorts = 4096;

  explicit SimPortTable(SimCounters& counters) noexcept : counters_(counters) {}
  SimPortTable(const SimPortTable&) = delete;
  SimPortTable& operator=(const SimPortTable&) = delete;

  // Domain lifecycle, from SimHypervisor. Destroying closes every port of the
  // domain: a peer's interdomain port reverts to unbound (reserved for the
  // dead domain) and stays until its owner unbinds it.
  void domain_created(DomId dom) noexcept;
  void domain_destroyed(DomId dom) noexcept;

  [[nodiscard]] EvtchnStatus status(DomId dom, EvtchnPort port) const noexcept;

 private:
  friend class SimEventChannel;

  struct Port {
    EvtchnStatus::State state = EvtchnStatus::State::kClosed;
    DomId remote_dom = 0;
    EvtchnPort remote_port = 0;
    SimEventChannel* user = nullptr;  // the handle that bound it
    bool enabled = false;             // unmasked in the evtchn device
    bool latched = false;             // fired while masked
  };

  Result<EvtchnPort> bind_unbound(SimEventChannel& h, DomId remote) noexcept;
  Result<EvtchnPort> bind_interdomain(SimEventChannel& h, DomId remote, EvtchnPort remote_port) noexcept;
  Status unbind(SimEventChannel& h, EvtchnPort port) noexcept;
  Status notify(SimEventChannel& h, EvtchnPort port) noexcept;
  Result<EvtchnPort> pending(SimEventChannel& h) noexcept;
  Status unmask(SimEventChannel& h, EvtchnPort port) noexcept;
  void close_all(SimEventChannel& h) noexcept;

  Port* find_locked(DomId dom, EvtchnPort port) noexcept;
  Port* owned_locked(SimEventChannel& h, EvtchnPort port) noexcept;
  Result<EvtchnPort> alloc_port_locked(DomId dom) noexcept;
  void close_locked(DomId dom, EvtchnPort port) noexcept;
  void fire_locked(DomId dom, EvtchnPort port) noexcept;

  SimCounters& counters_;
  mutable std::mutex mu_;
  std::unordered_set<DomId> live_;                      // guarded by mu_
  std::unordered_map<DomId, std::vector<Port>> ports_;  // index = port, guarded by mu_
};

// One evtchn device handle acting as domain `self`. Owned by one thread, but
// safe to notify() from another (see above).
class SimEventChannel final : public EventChannel {
 public:
  static Result<std::unique_ptr<SimEventChannel>> open(SimPortTable& table, DomId self) noexcept;
  // Unbinds every port this handle still has, as closing the device does.
  ~SimEventChannel() override;
  SimEventChannel(const SimEventChannel&) = delete;
  SimEventChannel& operator=(const SimEventChannel&) = delete;

  Result<EvtchnPort> bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept override;
  Result<EvtchnPort> bind_unbound(DomId remote) noexcept override;
  Status unbind(EvtchnPort local) noexcept override;
  Status notify(EvtchnPort local) noexcept override;
  [[nodiscard]] int fd() const noexcept override { return efd_; }
  Result<EvtchnPort> pending() noexcept override;
  Status unmask(EvtchnPort local) noexcept override;

  [[nodiscard]] DomId self() const noexcept { return self_; }

 private:
  friend class SimPortTable;
  SimEventChannel(SimPortTable& table, DomId self, int efd) noexcept : table_(table), self_(self), efd_(efd) {}

  // Queue of fired ports (the device's ring); guarded by table_.mu_.
  void push_locked(EvtchnPort port) noexcept;
  [[nodiscard]] size_t ring_capacity_locked() const noexcept;

  SimPortTable& table_;
  const DomId self_;
  const int efd_;
  std::deque<EvtchnPort> ring_;  // guarded by table_.mu_
  bool overflow_ = false;        // guarded by table_.mu_
  uint32_t bound_ = 0;           // ports bound by this handle, guarded by table_.mu_
};

}  // namespace xenpath::sim
