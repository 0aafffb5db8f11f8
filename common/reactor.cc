#include "common/reactor.h"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "common/mailbox.h"

namespace xenpath {

namespace {
// Bounds of one iteration: mailbox tasks and completions handled before the
// pollers get their turn again, so neither can starve the rings.
constexpr size_t kMailboxBurst = 64;
constexpr unsigned kCqeBurst = 64;
constexpr int kEpollBurst = 64;
}  // namespace

struct Reactor::Impl {
  Options opts;
  int epfd = -1;
  Mailbox<Task> mailbox;
  io_uring ring{};
  bool has_uring = false;
  std::vector<Poller*> pollers;
  struct FdEntry {
    FdHandler handler;
  };
  std::unordered_map<int, FdEntry> fds;
  struct Timer {
    int fd;
    Task fn;
  };
  std::unordered_map<TimerId, Timer> timers;
  TimerId next_timer = 1;
  ReactorStats stats;
  std::atomic<bool> running{false};
  std::atomic<bool> stop_requested{false};
  std::atomic<std::thread::id> owner{};
  std::thread thread;
  unsigned pending_sqes = 0;

  ~Impl() {
    for (auto& [id, t] : timers) close(t.fd);
    if (has_uring) io_uring_queue_exit(&ring);
    if (epfd >= 0) close(epfd);
  }

  unsigned submit() noexcept {
    if (!has_uring) return 0;
    const unsigned ready = io_uring_sq_ready(&ring);
    if (ready == 0) return 0;
    const int r = io_uring_submit(&ring);
    ++stats.uring_submits;
    if (r > 0) stats.uring_sqes += static_cast<unsigned>(r);
    return r > 0 ? static_cast<unsigned>(r) : 0;
  }

  unsigned reap() noexcept {
    if (!has_uring) return 0;
    io_uring_cqe* cqes[kCqeBurst];
    const unsigned n = io_uring_peek_batch_cqe(&ring, cqes, kCqeBurst);
    for (unsigned i = 0; i < n; ++i) {
      auto* target = reinterpret_cast<UringCompletion*>(io_uring_cqe_get_data(cqes[i]));
      const int32_t res = cqes[i]->res;
      const uint32_t flags = cqes[i]->flags;
      if (target != nullptr) target->on_complete(res, flags);
    }
    if (n > 0) io_uring_cq_advance(&ring, n);
    stats.uring_cqes += n;
    return n;
  }

  size_t drain_mailbox() noexcept {
    const size_t n = mailbox.drain([](Task& t) { t(); }, kMailboxBurst);
    stats.mailbox_tasks += n;
    return n;
  }

  void dispatch_epoll(int timeout_ms) noexcept {
    epoll_event evs[kEpollBurst];
    const int n = epoll_wait(epfd, evs, kEpollBurst, timeout_ms);
    for (int i = 0; i < n; ++i) {
      const int fd = evs[i].data.fd;
      if (fd == mailbox.fd()) continue;  // drained at the top of each iteration
      if (has_uring && fd == ring.ring_fd) continue;
      if (auto it = fds.find(fd); it != fds.end()) {
        // Copy: the handler may unwatch its own fd.
        FdHandler h = it->second.handler;
        h(evs[i].events);
      }
    }
  }

  void loop() noexcept {
    owner.store(std::this_thread::get_id());
    running.store(true);
    auto last_busy = std::chrono::steady_clock::now();
    while (!stop_requested.load(std::memory_order_relaxed)) {
      ++stats.iterations;
      bool busy = drain_mailbox() > 0;
      // Pollers may add or remove pollers while running: iterate by index
      // over a snapshot size.
      for (size_t i = 0; i < pollers.size(); ++i) busy |= pollers[i]->poll();
      submit();
      busy |= reap() > 0;
      const auto now = std::chrono::steady_clock::now();
      if (busy) {
        ++stats.busy_iterations;
        last_busy = now;
        continue;
      }
      if (now - last_busy < opts.poll_window) {
        dispatch_epoll(0);
        continue;
      }
      // Going to sleep: every poller re-arms and checks once more.
      bool late = false;
      for (size_t i = 0; i < pollers.size(); ++i) late |= pollers[i]->arm();
      if (has_uring && io_uring_cq_ready(&ring) > 0) late = true;
      if (!mailbox.empty()) late = true;
      if (late) {
        ++stats.wakeups_by_arm;
        last_busy = std::chrono::steady_clock::now();
        continue;
      }
      ++stats.sleeps;
      dispatch_epoll(-1);
      last_busy = std::chrono::steady_clock::now();
    }
    // Stopping is final: refuse new work, then run what was posted before so
    // callers blocked in call() return.
    for (auto& task : mailbox.close_and_take()) task();
    running.store(false);
  }
};

Reactor::Reactor(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

Reactor::~Reactor() { stop(); }

Result<std::unique_ptr<Reactor>> Reactor::create(const Options& opts) noexcept {
  auto impl = std::make_unique<Impl>();
  impl->opts = opts;
  if (!impl->mailbox.valid()) return unexpected_errno();
  impl->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (impl->epfd < 0) return unexpected_errno();
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = impl->mailbox.fd();
  if (epoll_ctl(impl->epfd, EPOLL_CTL_ADD, impl->mailbox.fd(), &ev) != 0) return unexpected_errno();
  if (opts.uring_entries > 0) {
    const int r = io_uring_queue_init(opts.uring_entries, &impl->ring, 0);
    if (r < 0) return unexpected(-r);
    impl->has_uring = true;
    ev.data.fd = impl->ring.ring_fd;
    if (epoll_ctl(impl->epfd, EPOLL_CTL_ADD, impl->ring.ring_fd, &ev) != 0) return unexpected_errno();
  }
  return std::unique_ptr<Reactor>(new Reactor(std::move(impl)));
}

Status Reactor::start() noexcept {
  if (impl_->thread.joinable() || impl_->running.load()) return unexpected(EALREADY);
  impl_->stop_requested.store(false);
  try {
    impl_->thread = std::thread([this] {
      pthread_setname_np(pthread_self(), impl_->opts.name.substr(0, 15).c_str());
      if (impl_->opts.cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(impl_->opts.cpu, &set);
        pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
      }
      impl_->loop();
    });
  } catch (...) {
    return unexpected(EAGAIN);
  }
  return ok();
}

void Reactor::run_here() noexcept {
  impl_->stop_requested.store(false);
  impl_->loop();
}

void Reactor::stop() noexcept {
  if (!impl_) return;
  impl_->stop_requested.store(true);
  // Wake it if it sleeps in epoll.
  impl_->mailbox.push([] {});
  if (impl_->thread.joinable()) {
    if (impl_->thread.get_id() == std::this_thread::get_id()) {
      impl_->thread.detach();
    } else {
      impl_->thread.join();
    }
  }
}

bool Reactor::post(Task task) noexcept { return impl_->mailbox.push(std::move(task)); }

void Reactor::call(const Task& fn) noexcept {
  if (in_reactor_thread() || (!impl_->running.load() && !impl_->thread.joinable())) {
    fn();
    return;
  }
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  const bool queued = post([&] {
    fn();
    std::lock_guard lock(mu);
    done = true;
    cv.notify_one();
  });
  if (!queued) return;
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done; });
}

bool Reactor::in_reactor_thread() const noexcept {
  return impl_->owner.load() == std::this_thread::get_id() && impl_->running.load();
}

void Reactor::add_poller(Poller* p) noexcept { impl_->pollers.push_back(p); }

void Reactor::remove_poller(Poller* p) noexcept {
  auto& v = impl_->pollers;
  v.erase(std::remove(v.begin(), v.end(), p), v.end());
}

Status Reactor::watch_fd(int fd, uint32_t epoll_events, FdHandler handler) noexcept {
  epoll_event ev{};
  ev.events = epoll_events;
  ev.data.fd = fd;
  const bool exists = impl_->fds.count(fd) != 0;
  if (epoll_ctl(impl_->epfd, exists ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0) return unexpected_errno();
  impl_->fds[fd] = Impl::FdEntry{std::move(handler)};
  return ok();
}

void Reactor::unwatch_fd(int fd) noexcept {
  if (impl_->fds.erase(fd) > 0) epoll_ctl(impl_->epfd, EPOLL_CTL_DEL, fd, nullptr);
}

Result<Reactor::TimerId> Reactor::add_timer(std::chrono::nanoseconds period, Task fn) noexcept {
  if (period.count() <= 0) return unexpected(EINVAL);
  const int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) return unexpected_errno();
  itimerspec its{};
  its.it_interval.tv_sec = static_cast<time_t>(period.count() / 1000000000);
  its.it_interval.tv_nsec = static_cast<long>(period.count() % 1000000000);
  its.it_value = its.it_interval;
  if (timerfd_settime(tfd, 0, &its, nullptr) != 0) {
    const int e = errno;
    close(tfd);
    return unexpected(e);
  }
  const TimerId id = impl_->next_timer++;
  impl_->timers[id] = Impl::Timer{tfd, std::move(fn)};
  auto r = watch_fd(tfd, EPOLLIN, [this, id, tfd](uint32_t) {
    uint64_t expirations;
    if (read(tfd, &expirations, sizeof(expirations)) != sizeof(expirations)) return;
    if (auto it = impl_->timers.find(id); it != impl_->timers.end()) {
      Task fn = it->second.fn;  // the task may cancel its own timer
      fn();
    }
  });
  if (!r) {
    impl_->timers.erase(id);
    close(tfd);
    return unexpected(r.error());
  }
  return id;
}

void Reactor::cancel_timer(TimerId id) noexcept {
  auto it = impl_->timers.find(id);
  if (it == impl_->timers.end()) return;
  unwatch_fd(it->second.fd);
  close(it->second.fd);
  impl_->timers.erase(it);
}

io_uring* Reactor::uring() noexcept { return impl_->has_uring ? &impl_->ring : nullptr; }

io_uring_sqe* Reactor::get_sqe() noexcept {
  if (!impl_->has_uring) return nullptr;
  io_uring_sqe* sqe = io_uring_get_sqe(&impl_->ring);
  if (sqe != nullptr) return sqe;
  impl_->submit();
  return io_uring_get_sqe(&impl_->ring);
}

const ReactorStats& Reactor::stats() const noexcept { return impl_->stats; }
const std::string& Reactor::name() const noexcept { return impl_->opts.name; }

}  // namespace xenpath
