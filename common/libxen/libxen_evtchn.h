// LibxenEventChannel: the real EventChannel, over libxenevtchn and Linux's
// /dev/xen/evtchn. Production code for a Xen dom0 or driver domain.
//
// Semantics are the device's (see common/xen/event_channel.h): a fired port
// is reported once by pending() and stays masked until unmask(). fd() is
// set O_NONBLOCK so pending() returns EAGAIN when nothing is queued (Linux
// 3.12-era kernels could still block there; callers poll fd() first anyway).
// Errors are the kernel's: ENOTCONN for a port this handle did not bind,
// ESRCH/EINVAL from the hypercalls for a bad domain or remote port.
//
// Thread: owned by one thread (a reactor). Touches no guest memory.
#pragma once

#include <memory>

#include "common/libxen/libxen_log.h"
#include "common/result.h"
#include "common/xen/event_channel.h"
#include "common/xen/types.h"

struct xenevtchn_handle;

namespace xenpath {

class LibxenEventChannel final : public EventChannel {
 public:
  // ENOENT/EACCES... from opening /dev/xen/evtchn when it is missing or
  // forbidden.
  static Result<std::unique_ptr<EventChannel>> open() noexcept;
  // Closing the device unbinds every port this handle still has.
  ~LibxenEventChannel() override;

  Result<EvtchnPort> bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept override;
  Result<EvtchnPort> bind_unbound(DomId remote) noexcept override;
  Status unbind(EvtchnPort local) noexcept override;
  Status notify(EvtchnPort local) noexcept override;
  [[nodiscard]] int fd() const noexcept override { return fd_; }
  Result<EvtchnPort> pending() noexcept override;
  Status unmask(EvtchnPort local) noexcept override;

 private:
  LibxenEventChannel(xenevtchn_handle* h, int fd, std::unique_ptr<LibxenLog> log) noexcept
      : log_(std::move(log)), h_(h), fd_(fd) {}

  std::unique_ptr<LibxenLog> log_;  // the library's messages; outlives the handle
  xenevtchn_handle* h_;
  int fd_;
};

}  // namespace xenpath
