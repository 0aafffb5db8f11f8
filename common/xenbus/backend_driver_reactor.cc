// The driver's attachment to a control Reactor, apart from the driver's
// core so that tools and tests can drive process_events() from any loop.
#include <sys/epoll.h>

#include "common/reactor.h"
#include "common/xenbus/backend_driver.h"

namespace xenpath {

Status BackendDriver::attach(Reactor& reactor) noexcept {
  if (detach_) return unexpected(EALREADY);
  const int fd = xs_->watch_fd();
  // Level-triggered: a batch that stops at event_batch leaves libxenstore's
  // pipe (or the eventfd) readable and the reactor calls us again after its
  // other fds and pollers had their turn.
  XP_TRY(reactor.watch_fd(fd, EPOLLIN, [this](uint32_t) { (void)process_events(); }));
  detach_ = [&reactor, fd] { reactor.unwatch_fd(fd); };
  std::lock_guard lock(post_mu_);
  post_ = [&reactor](std::function<void()> task) { return reactor.post(std::move(task)); };
  return ok();
}

}  // namespace xenpath
