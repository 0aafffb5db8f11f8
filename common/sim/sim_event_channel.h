// SimEventChannel: EventChannel on the simulated host, acting as domain
// `self`, with the Linux evtchn device's semantics: a port that fires is
// queued once and masked until unmask(); an event arriving while masked is
// latched (the hypervisor's pending bit) and delivered on unmask. fd() is an
// eventfd, readable while fired ports are queued.
//
// A handle is owned by one thread; notify() from another domain's handle on
// another thread is safe (the port table takes its lock).
#pragma once

#include <memory>

#include "common/xen/event_channel.h"

namespace xenpath::sim {

struct SimCounters;
struct SimPortTable;
struct SimEvtchnQueue;

class SimEventChannel final : public EventChannel {
 public:
  static Result<std::unique_ptr<EventChannel>> open(std::shared_ptr<SimPortTable> table, DomId self) noexcept;
  ~SimEventChannel() override;

  Result<EvtchnPort> bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept override;
  Result<EvtchnPort> bind_unbound(DomId remote) noexcept override;
  Status unbind(EvtchnPort local) noexcept override;
  Status notify(EvtchnPort local) noexcept override;
  int fd() const noexcept override;
  Result<EvtchnPort> pending() noexcept override;
  Status unmask(EvtchnPort local) noexcept override;

 private:
  SimEventChannel(std::shared_ptr<SimPortTable> table, std::shared_ptr<SimEvtchnQueue> q, DomId self) noexcept
      : table_(std::move(table)), queue_(std::move(q)), self_(self) {}

  std::shared_ptr<SimPortTable> table_;
  std::shared_ptr<SimEvtchnQueue> queue_;
  DomId self_;
};

// Closes every port of a dying domain: peers' ports become unbound, so their
// notifications are silently dropped, as Xen does.
void sim_close_domain_ports(SimPortTable& table, DomId dom) noexcept;
std::shared_ptr<SimPortTable> make_sim_port_table(SimCounters* counters) noexcept;

}  // namespace xenpath::sim
