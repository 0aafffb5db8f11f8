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
  // The @releaseDomain check, deferred and coalesced (handle_release_domain
  // says why).
  auto timer = reactor.add_oneshot_timer([this] {
    release_pending_ = false;  // fired: nothing to disarm
    run_release_check();
  });
  if (!timer) {
    reactor.unwatch_fd(fd);
    return unexpected(timer.error());
  }
  const Reactor::TimerId id = *timer;
  arm_release_ = [&reactor, id](std::chrono::steady_clock::time_point when) {
    return static_cast<bool>(reactor.arm_timer(id, when));
  };
  detach_ = [&reactor, fd, id] {
    reactor.cancel_timer(id);
    reactor.unwatch_fd(fd);
  };
  std::lock_guard lock(post_mu_);
  post_ = [&reactor](std::function<void()> task) { return reactor.post(std::move(task)); };
  return ok();
}

}  // namespace xenpath
