#include "common/xen_worker.h"

#include <sys/epoll.h>

namespace xenpath {

Result<std::unique_ptr<XenWorker>> XenWorker::create(Reactor& reactor, XenPlatform& platform) noexcept {
  XP_ASSIGN_OR_RETURN(auto gt, platform.open_grant_table());
  XP_ASSIGN_OR_RETURN(auto ev, platform.open_event_channel());
  return create(reactor, std::move(gt), std::move(ev));
}

Result<std::unique_ptr<XenWorker>> XenWorker::create(Reactor& reactor, std::unique_ptr<GrantTable> gt,
                                                     std::unique_ptr<EventChannel> evtchn) noexcept {
  if (!gt || !evtchn) return unexpected(EINVAL);
  std::unique_ptr<XenWorker> w(new (std::nothrow) XenWorker(reactor, std::move(gt), std::move(evtchn)));
  if (!w) return unexpected(ENOMEM);
  Status st = unexpected(EIO);
  XenWorker* raw = w.get();
  reactor.call([&] {
    st = reactor.watch_fd(raw->evtchn_->fd(), EPOLLIN, [raw](uint32_t) { raw->on_events(); });
    raw->watching_ = st.has_value();
  });
  XP_TRY(st);
  return w;
}

XenWorker::~XenWorker() {
  if (watching_) reactor_.call([this] { reactor_.unwatch_fd(evtchn_->fd()); });
}

void XenWorker::add_port(EvtchnPort port, EvtchnTarget* target) noexcept {
  try {
    ports_[port] = target;
  } catch (...) {
    // Without the entry the queue still runs: it is polled every iteration
    // and its arm() final check catches requests; only the wake-up is lost.
  }
}

void XenWorker::remove_port(EvtchnPort port) noexcept { ports_.erase(port); }

void XenWorker::on_events() noexcept {
  // Bounded: a reported port stays masked until its target unmasks it, so
  // one pass sees each port at most once; the cap only guards a broken
  // event-channel device.
  for (unsigned i = 0; i < 1024; ++i) {
    auto p = evtchn_->pending();
    if (!p) break;
    auto it = ports_.find(*p);
    if (it != ports_.end()) {
      it->second->on_event(*p);
    } else {
      (void)evtchn_->unmask(*p);  // unbound meanwhile
    }
  }
}

Status XenWorkerSet::open(const std::vector<Reactor*>& reactors, XenPlatform& platform) noexcept {
  try {
    for (Reactor* r : reactors) {
      XP_ASSIGN_OR_RETURN(auto w, XenWorker::create(*r, platform));
      workers_.push_back(std::move(w));
    }
    return ok();
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

std::vector<XenWorker*> XenWorkerSet::get() const {
  std::vector<XenWorker*> v;
  for (const auto& w : workers_) v.push_back(w.get());
  return v;
}

uint64_t XenWorkerSet::mapped_pages() const noexcept {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->grant_table().mapped_pages();
  return n;
}

uint64_t XenWorkerSet::bound_ports() const noexcept {
  uint64_t n = 0;
  for (const auto& w : workers_) n += w->queues();
  return n;
}

}  // namespace xenpath
