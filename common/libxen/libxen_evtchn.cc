#include "common/libxen/libxen_evtchn.h"

// Sets the Xen interface version before any <xen/...> header comes in.
#include "common/xen/ring_protocol.h"

#include <fcntl.h>
// The libxen tool headers have no extern "C" of their own.
extern "C" {
#include <xenevtchn.h>
#include <xentoollog.h>
}

#include <cerrno>
#include <new>

namespace xenpath {

Result<std::unique_ptr<EventChannel>> LibxenEventChannel::open() noexcept {
  XP_ASSIGN_OR_RETURN(auto log, LibxenLog::make("evtchn: "));
  errno = 0;
  // O_CLOEXEC by default; the library reports through `log`, not stderr.
  xenevtchn_handle* h = xenevtchn_open(static_cast<xentoollog_logger*>(log->xtl()), 0);
  if (h == nullptr) return unexpected_errno();
  const int fd = xenevtchn_fd(h);
  const int fl = fd < 0 ? -1 : fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    const auto err = unexpected_errno();
    xenevtchn_close(h);
    return err;
  }
  auto* ec = new (std::nothrow) LibxenEventChannel(h, fd, std::move(log));
  if (ec == nullptr) {
    xenevtchn_close(h);
    return unexpected(ENOMEM);
  }
  return std::unique_ptr<EventChannel>(ec);
}

LibxenEventChannel::~LibxenEventChannel() { xenevtchn_close(h_); }

namespace {

// libxenevtchn's two return conventions, with errno cleared first so a
// failure that forgot to set it still reads as an error (unexpected_errno).
template <typename Call>
Result<EvtchnPort> port_or_errno(Call call) noexcept {
  errno = 0;
  const xenevtchn_port_or_error_t p = call();
  if (p < 0) return unexpected_errno();
  return static_cast<EvtchnPort>(p);
}

template <typename Call>
Status zero_or_errno(Call call) noexcept {
  errno = 0;
  if (call() != 0) return unexpected_errno();
  return ok();
}

}  // namespace

Result<EvtchnPort> LibxenEventChannel::bind_interdomain(DomId remote, EvtchnPort remote_port) noexcept {
  return port_or_errno([&] { return xenevtchn_bind_interdomain(h_, remote, remote_port); });
}

Result<EvtchnPort> LibxenEventChannel::bind_unbound(DomId remote) noexcept {
  return port_or_errno([&] { return xenevtchn_bind_unbound_port(h_, remote); });
}

Result<EvtchnPort> LibxenEventChannel::pending() noexcept {
  return port_or_errno([&] { return xenevtchn_pending(h_); });
}

Status LibxenEventChannel::unbind(EvtchnPort local) noexcept {
  return zero_or_errno([&] { return xenevtchn_unbind(h_, local); });
}

Status LibxenEventChannel::notify(EvtchnPort local) noexcept {
  return zero_or_errno([&] { return xenevtchn_notify(h_, local); });
}

Status LibxenEventChannel::unmask(EvtchnPort local) noexcept {
  return zero_or_errno([&] { return xenevtchn_unmask(h_, local); });
}

}  // namespace xenpath
