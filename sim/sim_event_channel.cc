#include "sim/sim_event_channel.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <new>

namespace xenpath::sim {

namespace {

constexpr DomId kDomidSelf = 0x7FF0;  // DOMID_SELF
using State = EvtchnStatus::State;

void eventfd_signal(int efd) noexcept {
  const uint64_t one = 1;
  // Cannot block or fail short of a counter at 2^64-2: readers drain it.
  [[maybe_unused]] ssize_t n = write(efd, &one, sizeof(one));
}

void eventfd_drain(int efd) noexcept {
  uint64_t v = 0;
  [[maybe_unused]] ssize_t n = read(efd, &v, sizeof(v));
}

}  // namespace

// ---- SimPortTable --------------------------------------------------------

void SimPortTable::domain_created(DomId dom) noexcept {
  std::lock_guard lk(mu_);
  try {
    live_.insert(dom);
  } catch (const std::bad_alloc&) {
    // The domain then cannot use event channels (ESRCH), which it will see.
  }
}

void SimPortTable::domain_destroyed(DomId dom) noexcept {
  std::lock_guard lk(mu_);
  live_.erase(dom);
  auto it = ports_.find(dom);
  if (it == ports_.end()) return;
  for (EvtchnPort p = 1; p < it->second.size(); ++p) {
    if (it->second[p].state != State::kClosed) close_locked(dom, p);
  }
  ports_.erase(dom);
}

EvtchnStatus SimPortTable::status(DomId dom, EvtchnPort port) const noexcept {
  std::lock_guard lk(mu_);
  auto it = ports_.find(dom);
  if (it == ports_.end() || port == 0 || port >= it->second.size()) return {};
  const Port& p = it->second[port];
  return EvtchnStatus{p.state, p.remote_dom, p.remote_port};
}

SimPortTable::Port* SimPortTable::find_locked(DomId dom, EvtchnPort port) noexcept {
  auto it = ports_.find(dom);
  if (it == ports_.end() || port == 0 || port >= it->second.size()) return nullptr;
  return &it->second[port];
}

SimPortTable::Port* SimPortTable::owned_locked(SimEventChannel& h, EvtchnPort port) noexcept {
  Port* p = find_locked(h.self_, port);
  return p != nullptr && p->state != State::kClosed && p->user == &h ? p : nullptr;
}

Result<EvtchnPort> SimPortTable::alloc_port_locked(DomId dom) noexcept {
  try {
    auto& v = ports_[dom];
    if (v.empty()) v.resize(1);  // port 0 is reserved
    // Lowest free port, as Xen's get_free_port() hands them out.
    for (EvtchnPort p = 1; p < v.size(); ++p) {
      if (v[p].state == State::kClosed) return p;
    }
    if (v.size() >= kMaxPorts) return unexpected(ENOSPC);
    v.emplace_back();
    return static_cast<EvtchnPort>(v.size() - 1);
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
}

void SimPortTable::close_locked(DomId dom, EvtchnPort port) noexcept {
  Port* p = find_locked(dom, port);
  if (p == nullptr || p->state == State::kClosed) return;
  if (p->state == State::kInterdomain) {
    // Xen's evtchn_close(): the other end survives as an unbound port that
    // only we may bind again; its owner sees the change in EVTCHNOP_status.
    Port* peer = find_locked(p->remote_dom, p->remote_port);
    if (peer != nullptr && peer->state == State::kInterdomain && peer->remote_dom == dom && peer->remote_port == port) {
      peer->state = State::kUnbound;
      peer->remote_dom = dom;
      peer->remote_port = 0;
    }
  }
  if (p->user != nullptr) --p->user->bound_;
  *p = Port{};
}

void SimPortTable::fire_locked(DomId dom, EvtchnPort port) noexcept {
  Port* p = find_locked(dom, port);
  if (p == nullptr || p->state == State::kClosed || p->user == nullptr) return;
  if (p->enabled) {
    // The device masks a port when it reports it (lateeoi) ...
    p->enabled = false;
    p->user->push_locked(port);
  } else {
    // ... and Xen's pending bit remembers, once, what came in meanwhile.
    p->latched = true;
  }
}

Result<EvtchnPort> SimPortTable::bind_unbound(SimEventChannel& h, DomId remote) noexcept {
  std::lock_guard lk(mu_);
  if (live_.count(h.self_) == 0) return unexpected(ESRCH);
  if (remote == kDomidSelf) remote = h.self_;
  XP_ASSIGN_OR_RETURN(const EvtchnPort port, alloc_port_locked(h.self_));
  Port& p = *find_locked(h.self_, port);
  p = Port{};
  p.state = State::kUnbound;
  p.remote_dom = remote;
  p.user = &h;
  p.enabled = true;
  ++h.bound_;
  return port;
}

Result<EvtchnPort> SimPortTable::bind_interdomain(SimEventChannel& h, DomId remote, EvtchnPort remote_port) noexcept {
  std::lock_guard lk(mu_);
  const DomId self = h.self_;
  if (remote == kDomidSelf) remote = self;
  if (live_.count(self) == 0 || live_.count(remote) == 0) return unexpected(ESRCH);
  // Xen allocates the local port before it looks at the remote one.
  XP_ASSIGN_OR_RETURN(const EvtchnPort lport, alloc_port_locked(self));
  Port* r = find_locked(remote, remote_port);
  if (r == nullptr || r->state != State::kUnbound || r->remote_dom != self) return unexpected(EINVAL);
  Port* l = find_locked(self, lport);
  *l = Port{};
  l->state = State::kInterdomain;
  l->remote_dom = remote;
  l->remote_port = remote_port;
  l->user = &h;
  l->enabled = true;
  r->state = State::kInterdomain;
  r->remote_dom = self;
  r->remote_port = lport;
  ++h.bound_;
  // Xen: "We may have lost notifications on the remote unbound port. Fix
  // that up here by conservatively always setting a notification on the
  // local port." A backend therefore sees one event right after binding.
  fire_locked(self, lport);
  return lport;
}

Status SimPortTable::unbind(SimEventChannel& h, EvtchnPort port) noexcept {
  if (port >= kMaxPorts) return unexpected(EINVAL);
  std::lock_guard lk(mu_);
  if (owned_locked(h, port) == nullptr) return unexpected(ENOTCONN);
  close_locked(h.self_, port);
  return ok();
}

Status SimPortTable::notify(SimEventChannel& h, EvtchnPort port) noexcept {
  std::lock_guard lk(mu_);
  Port* p = owned_locked(h, port);
  if (p == nullptr) return unexpected(ENOTCONN);
  counters_.notify_calls.fetch_add(1, std::memory_order_relaxed);
  // A send on an unbound port (peer not bound yet, or gone) is dropped.
  if (p->state == State::kInterdomain) fire_locked(p->remote_dom, p->remote_port);
  return ok();
}

Result<EvtchnPort> SimPortTable::pending(SimEventChannel& h) noexcept {
  std::lock_guard lk(mu_);
  if (h.overflow_) return unexpected(EFBIG);
  if (h.ring_.empty()) return unexpected(EAGAIN);
  const EvtchnPort port = h.ring_.front();
  h.ring_.pop_front();
  // Level-triggered like the device: the fd stays readable while ports wait.
  if (h.ring_.empty()) eventfd_drain(h.efd_);
  return port;
}

Status SimPortTable::unmask(SimEventChannel& h, EvtchnPort port) noexcept {
  std::lock_guard lk(mu_);
  Port* p = owned_locked(h, port);
  if (p == nullptr || p->enabled) return ok();
  p->enabled = true;
  if (p->latched) {
    p->latched = false;
    fire_locked(h.self_, port);
  }
  return ok();
}

void SimPortTable::close_all(SimEventChannel& h) noexcept {
  std::lock_guard lk(mu_);
  auto it = ports_.find(h.self_);
  if (it == ports_.end()) return;
  for (EvtchnPort p = 1; p < it->second.size(); ++p) {
    if (it->second[p].state != State::kClosed && it->second[p].user == &h) close_locked(h.self_, p);
  }
}

// ---- SimEventChannel -----------------------------------------------------

Result<std::unique_ptr<SimEventChannel>> SimEventChannel::open(SimPortTable& table, DomId self) noexcept {
  {
    std::lock_guard lk(table.mu_);
    if (table.live_.count(self) == 0) return unexpected(ESRCH);
  }
  const int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (efd < 0) return unexpected_errno();
  auto* h = new (std::nothrow) SimEventChannel(table, self, efd);
  if (h == nullptr) {
    close(efd);
    return unexpected(ENOMEM);
  }
  return std::unique_ptr<SimEventChannel>(h);
}

SimEventChannel::~SimEventChannel() {
  table_.close_all(*this);
  close(efd_);
}

size_t SimEventChannel::ring_capacity_locked() const noexcept {
  // The device's ring starts at 64 entries and doubles to hold at least one
  // entry per bound port; only duplicates (a port unmasked before it was
  // read) can fill it.
  size_t cap = 64;
  while (cap < bound_) cap *= 2;
  return cap;
}

void SimEventChannel::push_locked(EvtchnPort port) noexcept {
  if (overflow_) return;
  const bool was_empty = ring_.empty();
  if (ring_.size() >= ring_capacity_locked()) {
    overflow_ = true;
  } else {
    try {
      ring_.push_back(port);
    } catch (const std::bad_alloc&) {
      overflow_ = true;
    }
  }
  if (was_empty) eventfd_signal(efd_);
}

Result<EvtchnPort> SimEventChannel::bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept {
  return table_.bind_interdomain(*this, remote, remote_port);
}
Result<EvtchnPort> SimEventChannel::bind_unbound(DomId remote) noexcept { return table_.bind_unbound(*this, remote); }
Status SimEventChannel::unbind(EvtchnPort local) noexcept { return table_.unbind(*this, local); }
Status SimEventChannel::notify(EvtchnPort local) noexcept { return table_.notify(*this, local); }
Result<EvtchnPort> SimEventChannel::pending() noexcept { return table_.pending(*this); }
Status SimEventChannel::unmask(EvtchnPort local) noexcept { return table_.unmask(*this, local); }

}  // namespace xenpath::sim
