#include "common/libxen/libxen_evtchn.h"

#include <fcntl.h>
#include <xenevtchn.h>

namespace xenpath {
namespace {

class LibxenEventChannelImpl final : public EventChannel {
 public:
  explicit LibxenEventChannelImpl(xenevtchn_handle* h) noexcept : h_(h) {}
  ~LibxenEventChannelImpl() override { xenevtchn_close(h_); }

  Result<EvtchnPort> bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept override {
    const xenevtchn_port_or_error_t p = xenevtchn_bind_interdomain(h_, remote, remote_port);
    if (p < 0) return unexpected_errno();
    return static_cast<EvtchnPort>(p);
  }
  Result<EvtchnPort> bind_unbound(DomId remote) noexcept override {
    const xenevtchn_port_or_error_t p = xenevtchn_bind_unbound_port(h_, remote);
    if (p < 0) return unexpected_errno();
    return static_cast<EvtchnPort>(p);
  }
  Status unbind(EvtchnPort local) noexcept override {
    if (xenevtchn_unbind(h_, local) != 0) return unexpected_errno();
    return ok();
  }
  Status notify(EvtchnPort local) noexcept override {
    if (xenevtchn_notify(h_, local) != 0) return unexpected_errno();
    return ok();
  }
  int fd() const noexcept override { return xenevtchn_fd(h_); }
  Result<EvtchnPort> pending() noexcept override {
    const xenevtchn_port_or_error_t p = xenevtchn_pending(h_);
    if (p < 0) return unexpected_errno();  // EAGAIN when none (non-blocking fd)
    return static_cast<EvtchnPort>(p);
  }
  Status unmask(EvtchnPort local) noexcept override {
    if (xenevtchn_unmask(h_, local) != 0) return unexpected_errno();
    return ok();
  }

 private:
  xenevtchn_handle* h_;
};

}  // namespace

Result<std::unique_ptr<EventChannel>> LibxenEventChannel::open() noexcept {
  xenevtchn_handle* h = xenevtchn_open(nullptr, 0);
  if (h == nullptr) return unexpected_errno();
  const int fd = xenevtchn_fd(h);
  const int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    const auto e = unexpected_errno();
    xenevtchn_close(h);
    return e;
  }
  return std::unique_ptr<EventChannel>(new LibxenEventChannelImpl(h));
}

}  // namespace xenpath
