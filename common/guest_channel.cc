#include "common/guest_channel.h"

namespace xenpath {

Status GuestEvtchn::bind(XenWorker& worker, DomId frontend, EvtchnPort remote, EvtchnTarget* target) noexcept {
  unbind();
  XP_ASSIGN_OR_RETURN(local_, worker.event_channel().bind_interdomain(frontend, remote));
  worker_ = &worker;
  worker.add_port(local_, target);
  return ok();
}

void GuestEvtchn::unbind() noexcept {
  if (worker_ == nullptr) return;
  worker_->remove_port(local_);
  (void)worker_->event_channel().unbind(local_);
  worker_ = nullptr;
  masked_ = false;
}

void XenRingPoller::start_polling() noexcept {
  if (polling_) return;
  worker_.reactor().add_poller(this);
  polling_ = true;
}

void XenRingPoller::stop_polling() noexcept {
  if (!polling_) return;
  worker_.reactor().remove_poller(this);
  polling_ = false;
}

}  // namespace xenpath
