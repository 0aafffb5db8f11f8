#include "sim/sim_queue_host.h"

namespace xenpath::sim {

Result<std::unique_ptr<SimQueueHost>> SimQueueHost::create(const Options& opts) noexcept {
  std::unique_ptr<SimQueueHost> h;
  try {
    h.reset(new SimQueueHost(opts));
  } catch (...) {
    return unexpected(ENOMEM);
  }
  XP_ASSIGN_OR_RETURN(h->guest_, h->hv_.create_domain(opts.guest, opts.guest_pages, "guest"));
  Reactor::Options ro;
  ro.name = opts.reactor_name;
  ro.uring_entries = opts.uring_entries;
  ro.cpu = opts.cpu;
  XP_ASSIGN_OR_RETURN(h->reactor_, Reactor::create(ro));
  XP_TRY(h->reactor_->start());
  XP_ASSIGN_OR_RETURN(auto gt, h->hv_.open_grant_table(kDom0));
  XP_ASSIGN_OR_RETURN(auto ev, h->hv_.open_event_channel(kDom0));
  XP_ASSIGN_OR_RETURN(h->worker_, XenWorker::create(*h->reactor_, std::move(gt), std::move(ev)));
  XP_ASSIGN_OR_RETURN(h->guest_evtchn_, h->hv_.open_event_channel(opts.guest));
  return h;
}

SimQueueHost::~SimQueueHost() {
  worker_.reset();
  if (reactor_) reactor_->stop();
  guest_evtchn_.reset();
}

VbdQueue::Config vbd_queue_config(const SimBlkfront& front, DomId frontend) {
  VbdQueue::Config c;
  c.frontend = frontend;
  c.protocol = front.options().protocol;
  c.ring_refs = front.ring_refs();
  c.remote_port = front.port();
  c.persistent = front.options().persistent;
  return c;
}

VifQueue::Config vif_queue_config(const SimNetfront& front, DomId frontend) {
  VifQueue::Config c;
  c.frontend = frontend;
  c.tx_ring_ref = front.tx_ring_ref();
  c.rx_ring_ref = front.rx_ring_ref();
  c.tx_remote_port = front.tx_port();
  c.rx_remote_port = front.rx_port();
  return c;
}

}  // namespace xenpath::sim
