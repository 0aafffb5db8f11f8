#include "common/sim/sim_event_channel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <deque>
#include <map>
#include <mutex>

#include "common/sim/sim_host.h"

namespace xenpath::sim {

// The queue of fired ports of one handle (what the evtchn device's ring is).
struct SimEvtchnQueue {
  int efd = -1;
  std::deque<EvtchnPort> fired;  // guarded by the port table's lock
  ~SimEvtchnQueue() {
    if (efd >= 0) close(efd);
  }
};

namespace {
enum class PortState { kUnbound, kInterdomain };

struct Port {
  PortState state = PortState::kUnbound;
  DomId remote = 0;            // unbound: who may bind; interdomain: peer domain
  EvtchnPort remote_port = 0;  // interdomain: peer port
  std::weak_ptr<SimEvtchnQueue> owner;
  bool masked = false;
  bool pending = false;  // latched while masked
};
}  // namespace

struct SimPortTable {
  std::mutex mu;
  std::map<std::pair<DomId, EvtchnPort>, Port> ports;
  std::map<DomId, EvtchnPort> next_port;
  SimCounters* counters = nullptr;

  EvtchnPort alloc(DomId dom) {
    auto& n = next_port[dom];
    // Port 0 is never valid on Xen.
    do {
      ++n;
    } while (ports.count({dom, n}) != 0);
    return n;
  }

  // Caller holds mu. Fires (dom, port): queue it on its owner unless masked.
  void raise(DomId dom, EvtchnPort port) {
    auto it = ports.find({dom, port});
    if (it == ports.end()) return;
    Port& p = it->second;
    auto q = p.owner.lock();
    if (!q) return;
    if (p.masked) {
      p.pending = true;
      return;
    }
    p.masked = true;
    const bool was_empty = q->fired.empty();
    q->fired.push_back(port);
    if (was_empty) {
      const uint64_t one = 1;
      [[maybe_unused]] ssize_t w = write(q->efd, &one, sizeof(one));
    }
  }

  // Caller holds mu: the peer of a closing port goes back to unbound.
  void detach_peer(const Port& p) {
    if (p.state != PortState::kInterdomain) return;
    auto it = ports.find({p.remote, p.remote_port});
    if (it != ports.end() && it->second.state == PortState::kInterdomain) {
      it->second.state = PortState::kUnbound;
      it->second.remote_port = 0;
    }
  }
};

std::shared_ptr<SimPortTable> make_sim_port_table(SimCounters* counters) noexcept {
  auto t = std::make_shared<SimPortTable>();
  t->counters = counters;
  return t;
}

void sim_close_domain_ports(SimPortTable& table, DomId dom) noexcept {
  std::lock_guard lock(table.mu);
  for (auto it = table.ports.begin(); it != table.ports.end();) {
    if (it->first.first == dom) {
      table.detach_peer(it->second);
      it = table.ports.erase(it);
    } else {
      ++it;
    }
  }
}

Result<std::unique_ptr<EventChannel>> SimEventChannel::open(std::shared_ptr<SimPortTable> table,
                                                            DomId self) noexcept {
  auto q = std::make_shared<SimEvtchnQueue>();
  q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (q->efd < 0) return unexpected_errno();
  return std::unique_ptr<EventChannel>(new SimEventChannel(std::move(table), std::move(q), self));
}

SimEventChannel::~SimEventChannel() {
  // Closing the handle closes its ports, as closing /dev/xen/evtchn does.
  std::lock_guard lock(table_->mu);
  for (auto it = table_->ports.begin(); it != table_->ports.end();) {
    if (it->first.first == self_ && it->second.owner.lock() == queue_) {
      table_->detach_peer(it->second);
      it = table_->ports.erase(it);
    } else {
      ++it;
    }
  }
}

Result<EvtchnPort> SimEventChannel::bind_unbound(DomId remote) noexcept {
  std::lock_guard lock(table_->mu);
  const EvtchnPort port = table_->alloc(self_);
  Port p;
  p.state = PortState::kUnbound;
  p.remote = remote;
  p.owner = queue_;
  table_->ports[{self_, port}] = p;
  return port;
}

Result<EvtchnPort> SimEventChannel::bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept {
  std::lock_guard lock(table_->mu);
  auto it = table_->ports.find({remote, remote_port});
  // Xen's evtchn_bind_interdomain: the remote port must exist, be unbound
  // and be reserved for us.
  if (it == table_->ports.end() || it->second.state != PortState::kUnbound || it->second.remote != self_) {
    return unexpected(EINVAL);
  }
  const EvtchnPort port = table_->alloc(self_);
  Port p;
  p.state = PortState::kInterdomain;
  p.remote = remote;
  p.remote_port = remote_port;
  p.owner = queue_;
  table_->ports[{self_, port}] = p;
  it->second.state = PortState::kInterdomain;
  it->second.remote = self_;
  it->second.remote_port = port;
  // Xen's evtchn_bind_interdomain conservatively sets the new local port
  // pending: notifications sent to the unbound remote port may be lost.
  table_->raise(self_, port);
  return port;
}

Status SimEventChannel::unbind(EvtchnPort local) noexcept {
  std::lock_guard lock(table_->mu);
  auto it = table_->ports.find({self_, local});
  if (it == table_->ports.end() || it->second.owner.lock() != queue_) return unexpected(EINVAL);
  table_->detach_peer(it->second);
  table_->ports.erase(it);
  std::erase(queue_->fired, local);
  return ok();
}

Status SimEventChannel::notify(EvtchnPort local) noexcept {
  std::lock_guard lock(table_->mu);
  auto it = table_->ports.find({self_, local});
  if (it == table_->ports.end() || it->second.owner.lock() != queue_) return unexpected(EINVAL);
  if (table_->counters != nullptr) table_->counters->notify_calls.fetch_add(1, std::memory_order_relaxed);
  // Xen drops a send on an unbound port silently (the peer went away).
  if (it->second.state != PortState::kInterdomain) return ok();
  table_->raise(it->second.remote, it->second.remote_port);
  return ok();
}

int SimEventChannel::fd() const noexcept { return queue_->efd; }

Result<EvtchnPort> SimEventChannel::pending() noexcept {
  std::lock_guard lock(table_->mu);
  if (queue_->fired.empty()) {
    uint64_t v;
    [[maybe_unused]] ssize_t r = read(queue_->efd, &v, sizeof(v));
    return unexpected(EAGAIN);
  }
  const EvtchnPort port = queue_->fired.front();
  queue_->fired.pop_front();
  if (queue_->fired.empty()) {
    uint64_t v;
    [[maybe_unused]] ssize_t r = read(queue_->efd, &v, sizeof(v));
  }
  return port;
}

Status SimEventChannel::unmask(EvtchnPort local) noexcept {
  std::lock_guard lock(table_->mu);
  auto it = table_->ports.find({self_, local});
  if (it == table_->ports.end() || it->second.owner.lock() != queue_) return unexpected(EINVAL);
  Port& p = it->second;
  p.masked = false;
  if (p.pending) {
    p.pending = false;
    table_->raise(self_, local);
  }
  return ok();
}

}  // namespace xenpath::sim
