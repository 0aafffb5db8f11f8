#include "common/reactor.h"

#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cassert>
#include <condition_variable>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/coarse_clock.h"
#include "common/cpu_affinity.h"
#include "common/log.h"
#include "common/mailbox.h"

namespace xenpath {

namespace {

// epoll keys: fixed ones for the mailbox and the io_uring, then one fresh
// key per watch (never reused, so an event already returned by epoll_wait
// for a watch removed meanwhile finds no entry instead of a newcomer that
// got the same fd number).
constexpr uint64_t kKeyMailbox = 1;
constexpr uint64_t kKeyUring = 2;
constexpr uint64_t kFirstWatchKey = 16;

// Mailbox tasks per iteration: control work must not starve the pollers.
constexpr size_t kMailboxBurst = 64;
constexpr int kMaxEpollEvents = 64;
// CQEs copied out per peek; completions are dispatched after the CQ head
// moved so handlers may queue new I/O without pressure on the CQ.
constexpr unsigned kCqeBatch = 64;

enum class State { kIdle, kRunning, kStopped };

}  // namespace

struct Reactor::Impl {
  struct Watch {
    int fd;
    bool timer;
    FdHandler handler;
    bool oneshot = false;                              // a timer armed by arm_timer()
    std::chrono::steady_clock::time_point deadline{};  // oneshot: the armed expiry
  };

  explicit Impl(const Options& o)
      : opts(o), log("reactor " + o.name + ": "), resolution(CoarseClock::resolution()), now(CoarseClock::now()) {}
  ~Impl() {
    for (auto& [key, w] : watches) {
      if (w->timer) ::close(w->fd);
    }
    if (have_uring) io_uring_queue_exit(&ring);
    if (epfd >= 0) ::close(epfd);
  }

  Status init() noexcept;
  void loop() noexcept;
  bool run_work() noexcept;
  bool dispatch_events(const epoll_event* evs, int n) noexcept;
  void submit_sqes() noexcept;
  bool reap_cqes() noexcept;
  void finish_loop() noexcept;
  Status add_watch(int fd, uint32_t events, bool timer, FdHandler handler, uint64_t* key_out) noexcept;
  // Watches timerfd `tfd` (closed on failure) and runs fn on each expiry.
  Result<TimerId> add_timer_fd(int tfd, Task fn, bool oneshot) noexcept;
  void remove_watch(uint64_t key) noexcept;
  [[nodiscard]] bool on_owner_side() const noexcept;

  Options opts;
  DeviceLog log;
  int epfd = -1;
  std::unique_ptr<Mailbox<Task>> mailbox;
  io_uring ring{};
  bool have_uring = false;
  // Fixed-file table: registered sparse on first use; slots below
  // next_file_slot are in use unless listed in free_file_slots.
  bool files_registered = false;
  unsigned next_file_slot = 0;
  std::vector<unsigned> free_file_slots;
  std::vector<bool> file_slot_used;

  // Reactor thread only. Removal leaves a hole (nullptr) so that a poller
  // removing itself or another one during the poll loop does not shift the
  // vector under the loop; holes are compacted after the loop.
  std::vector<Poller*> pollers;
  bool pollers_dirty = false;
  bool in_poll_loop = false;
  std::unordered_map<uint64_t, std::shared_ptr<Watch>> watches;
  std::unordered_map<int, uint64_t> fd_keys;  // watch_fd fds (timers are not here)
  uint64_t next_key = kFirstWatchKey;
  ReactorStats stats;
  const std::chrono::nanoseconds resolution;  // CoarseClock's
  // The iteration's time (reactor thread; set before the loop from the
  // owner's thread).
  std::chrono::steady_clock::time_point now;
  // The fine clock (fine_now()): switched from any thread, sampled into
  // fine_on at the top of each iteration; fine_at is this iteration's
  // reading once taken (default until then).
  std::atomic<bool> fine_requested{false};
  bool fine_on = false;
  std::chrono::steady_clock::time_point fine_at{};

  std::atomic<bool> stop_requested{false};
  std::atomic<bool> running{false};
  std::atomic<std::thread::id> loop_thread{};
  std::thread::id owner;
  std::thread thread;
  std::mutex life_mu;
  std::condition_variable life_cv;
  State state = State::kIdle;  // guarded by life_mu
};

Status Reactor::Impl::init() noexcept {
  owner = std::this_thread::get_id();
  epfd = ::epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) return unexpected_errno();
  auto mb = Mailbox<Task>::create();
  if (!mb) return unexpected(mb.error());
  mailbox = std::move(*mb);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kKeyMailbox;
  if (::epoll_ctl(epfd, EPOLL_CTL_ADD, mailbox->fd(), &ev) < 0) return unexpected_errno();
  if (opts.uring_entries != 0) {
    const int r = io_uring_queue_init(opts.uring_entries, &ring, 0);
    if (r < 0) return unexpected(-r);
    have_uring = true;
    // The ring fd polls readable while the CQ holds completions: a sleeping
    // reactor wakes for finished I/O like for any other event.
    ev.events = EPOLLIN;
    ev.data.u64 = kKeyUring;
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, ring.ring_fd, &ev) < 0) return unexpected_errno();
  }
  return ok();
}

bool Reactor::Impl::on_owner_side() const noexcept {
  // Control calls are legal from the loop thread, or from anyone while no
  // loop runs (setup before start(), teardown after stop()).
  return !running.load(std::memory_order_acquire) ||
         loop_thread.load(std::memory_order_acquire) == std::this_thread::get_id();
}

void Reactor::Impl::submit_sqes() noexcept {
  if (!have_uring || io_uring_sq_ready(&ring) == 0) return;
  const int r = io_uring_submit(&ring);
  ++stats.uring_submits;
  if (r > 0) {
    stats.uring_sqes += static_cast<uint64_t>(r);
  } else if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) {
    // EAGAIN/EBUSY: the kernel is short of resources or the CQ overflowed;
    // reaping below makes room and the next iteration retries.
    log.error("io_uring_submit: {}", error_string(-r));
  }
}

bool Reactor::Impl::reap_cqes() noexcept {
  if (!have_uring) return false;
  struct Done {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
  };
  // Bounded by the CQ size per iteration: handlers that keep completing
  // I/O inline cannot hold the loop here.
  const unsigned limit = ring.cq.ring_entries;
  unsigned total = 0;
  while (total < limit) {
    io_uring_cqe* cqes[kCqeBatch];
    const unsigned n = io_uring_peek_batch_cqe(&ring, cqes, kCqeBatch);
    if (n == 0) break;
    Done done[kCqeBatch];
    for (unsigned i = 0; i < n; ++i) done[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
    io_uring_cq_advance(&ring, n);
    stats.uring_cqes += n;
    total += n;
    for (unsigned i = 0; i < n; ++i) {
      if (done[i].user_data == 0) continue;  // nobody asked to be told
      reinterpret_cast<UringCompletion*>(done[i].user_data)->on_complete(done[i].res, done[i].flags);
    }
  }
  return total != 0;
}

bool Reactor::Impl::run_work() noexcept {
  bool work = false;
  const size_t tasks = mailbox->drain(
      [this](Task&& t) {
        ++stats.mailbox_tasks;
        t();
      },
      kMailboxBurst);
  work = tasks != 0;

  in_poll_loop = true;
  for (size_t i = 0; i < pollers.size(); ++i) {
    if (Poller* p = pollers[i]) work |= p->poll();
  }
  in_poll_loop = false;
  if (pollers_dirty) {
    std::erase(pollers, nullptr);
    pollers_dirty = false;
  }

  // One submit for everything the pollers (and tasks) queued this round.
  submit_sqes();
  work |= reap_cqes();
  return work;
}

bool Reactor::Impl::dispatch_events(const epoll_event* evs, int n) noexcept {
  bool work = false;
  for (int i = 0; i < n; ++i) {
    const uint64_t key = evs[i].data.u64;
    if (key == kKeyMailbox) {
      // Messages are drained at the top of the next iteration; clearing here
      // (and only when reported readable) keeps the empty-mailbox path free
      // of syscalls.
      mailbox->clear_wakeup();
      continue;
    }
    if (key == kKeyUring) continue;  // reaped at the top of the next iteration
    auto it = watches.find(key);
    if (it == watches.end()) continue;  // removed by an earlier handler of this batch
    // Holds the watch alive while its handler runs: the handler may unwatch
    // itself.
    std::shared_ptr<Watch> w = it->second;
    w->handler(evs[i].events);
    work = true;
  }
  return work;
}

void Reactor::Impl::loop() noexcept {
  epoll_event evs[kMaxEpollEvents];
  int nevs = 0;            // events of the last epoll_wait, handled at the top of the next iteration
  bool timed = false;      // the last iteration was busy and did not sleep: its time is busy time
  unsigned spins = 0;      // empty iterations since the last work
  unsigned since_fds = 0;  // iterations since the epoll fd was polled
  auto prev = now = CoarseClock::now();
  auto last_work = now;
  while (!stop_requested.load(std::memory_order_acquire)) {
    ++stats.iterations;
    // The one clock read of the iteration (a few loads from the vDSO page);
    // never backwards, though a timer's deadline may have moved it ahead of
    // the coarse clock (add_timer_fd).
    now = std::max(now, CoarseClock::now());
    ++stats.clock_reads;
    fine_on = fine_requested.load(std::memory_order_relaxed);
    fine_at = {};
    if (timed) stats.busy_ns += static_cast<uint64_t>(std::chrono::nanoseconds(now - prev).count());
    prev = now;
    // Handlers first: a timer that asks for a poll (a rate credit) gets it
    // in this iteration.
    const bool fd_work = nevs != 0 && dispatch_events(evs, nevs);
    nevs = 0;
    const bool work = run_work();
    if (work) {
      last_work = now;
      spins = 0;
    } else if (spins < kMaxPollSpins) {
      ++spins;
    }
    // Only pollers' work opens a poll window: timers and fd handlers are
    // housekeeping, and a periodic timer must not make an idle worker spin.
    const bool window = work || (now - last_work < opts.poll_window && spins < kMaxPollSpins);
    int timeout = 0;
    if (!window && !stop_requested.load(std::memory_order_acquire)) {
      // Every poller re-arms (each must be armed before we sleep, whatever
      // the others say), and any late work cancels the sleep.
      bool late = false;
      for (size_t i = 0; i < pollers.size(); ++i) {
        if (Poller* p = pollers[i]) late |= p->arm();
      }
      if (late) {
        ++stats.wakeups_by_arm;
      } else if (mailbox->empty() && !(have_uring && io_uring_sq_ready(&ring) != 0)) {
        // A message pushed after the empty() check makes the 0 -> 1
        // transition and writes the eventfd, and stop() writes it too, so
        // epoll_wait returns for them.
        timeout = -1;
      }
    }
    const bool busy = work || fd_work;
    if (busy) ++stats.busy_iterations;
    timed = busy && timeout == 0;
    if (timeout < 0 || ++since_fds >= kFdPollInterval) {
      since_fds = 0;
      ++stats.epoll_waits;
      if (timeout < 0) ++stats.sleeps;
      nevs = ::epoll_wait(epfd, evs, kMaxEpollEvents, timeout);
      if (nevs < 0) {
        if (errno != EINTR) log.error("epoll_wait: {}", error_string(errno));
        nevs = 0;
      }
    }
  }
  finish_loop();
}

void Reactor::Impl::finish_loop() noexcept {
  // post() returned true for every task still queued: run them on this
  // thread before declaring the loop gone (call() waiters rely on it).
  mailbox->close();
  mailbox->drain(
      [this](Task&& t) {
        ++stats.mailbox_tasks;
        t();
      },
      SIZE_MAX);
  {
    std::lock_guard lk(life_mu);
    state = State::kStopped;
    running.store(false, std::memory_order_release);
    loop_thread.store(std::thread::id{}, std::memory_order_release);
  }
  life_cv.notify_all();
}

Status Reactor::Impl::add_watch(int fd, uint32_t events, bool timer, FdHandler handler, uint64_t* key_out) noexcept {
  try {
    auto w = std::make_shared<Watch>(Watch{fd, timer, std::move(handler), false});
    const uint64_t key = next_key++;
    epoll_event ev{};
    ev.events = events;
    ev.data.u64 = key;
    if (::epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return unexpected_errno();
    watches.emplace(key, std::move(w));
    if (!timer) fd_keys.emplace(fd, key);
    *key_out = key;
    return ok();
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
}

void Reactor::Impl::remove_watch(uint64_t key) noexcept {
  auto it = watches.find(key);
  if (it == watches.end()) return;
  const int fd = it->second->fd;
  // The fd may already be closed by its owner (then epoll dropped it).
  (void)::epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nullptr);
  if (it->second->timer) {
    ::close(fd);
  } else {
    fd_keys.erase(fd);
  }
  watches.erase(it);
}

// ---------------------------------------------------------------------------

Reactor::Reactor(std::unique_ptr<Impl> impl) noexcept : impl_(std::move(impl)) {}

Reactor::~Reactor() { stop(); }

Result<std::unique_ptr<Reactor>> Reactor::create(const Options& opts) noexcept {
  std::unique_ptr<Impl> impl;
  try {
    impl = std::make_unique<Impl>(opts);
  } catch (const std::bad_alloc&) {
    return unexpected(ENOMEM);
  }
  XP_TRY(impl->init());
  std::unique_ptr<Reactor> r(new (std::nothrow) Reactor(std::move(impl)));
  if (!r) return unexpected(ENOMEM);
  return r;
}

Status Reactor::start() noexcept {
  Impl& m = *impl_;
  std::lock_guard lk(m.life_mu);
  if (m.state != State::kIdle) return unexpected(m.state == State::kRunning ? EBUSY : ESHUTDOWN);
  m.running.store(true, std::memory_order_release);
  try {
    m.thread = std::thread([&m] {
      m.loop_thread.store(std::this_thread::get_id(), std::memory_order_release);
      const std::string tname = m.opts.name.substr(0, 15);  // kernel limit
      (void)pthread_setname_np(pthread_self(), tname.c_str());
      if (auto pinned = pin_current_thread(m.opts.cpu); !pinned) {
        m.log.warn("cannot pin to cpu {}: {}", m.opts.cpu, error_string(pinned.error()));
      }
      m.loop();
    });
  } catch (...) {
    m.running.store(false, std::memory_order_release);
    return unexpected(EAGAIN);
  }
  m.state = State::kRunning;
  return ok();
}

void Reactor::run_here() noexcept {
  Impl& m = *impl_;
  {
    std::lock_guard lk(m.life_mu);
    if (m.state != State::kIdle) return;
    m.state = State::kRunning;
    m.loop_thread.store(std::this_thread::get_id(), std::memory_order_release);
    m.running.store(true, std::memory_order_release);
  }
  m.loop();
}

void Reactor::stop() noexcept {
  Impl& m = *impl_;
  m.stop_requested.store(true, std::memory_order_release);
  m.mailbox->wake();
  // On the loop thread (a task or poller asked): the loop exits after the
  // current iteration; whoever owns the reactor joins later.
  if (m.running.load(std::memory_order_acquire) &&
      m.loop_thread.load(std::memory_order_acquire) == std::this_thread::get_id()) {
    return;
  }
  std::unique_lock lk(m.life_mu);
  if (m.state == State::kIdle) {
    // No loop ever ran: nothing will run the queued tasks. Dropping them
    // releases call() waiters.
    m.state = State::kStopped;
    m.mailbox->close();
    m.mailbox->discard();
    return;
  }
  m.life_cv.wait(lk, [&m] { return m.state == State::kStopped && !m.running.load(std::memory_order_acquire); });
  if (m.thread.joinable()) {
    if (m.thread.get_id() == std::this_thread::get_id()) {
      m.thread.detach();  // destroyed from its own thread: nothing left to wait for
    } else {
      m.thread.join();
    }
  }
}

bool Reactor::post(Task task) noexcept {
  if (!task) return false;
  return impl_->mailbox->push(std::move(task));
}

void Reactor::call(const Task& fn) noexcept {
  if (in_reactor_thread()) {
    fn();
    return;
  }
  struct Waiter {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
  };
  // Signals the waiter when the task is destroyed, whether it ran or was
  // dropped by a stopping reactor, so call() never waits for a task that
  // will not run.
  struct Signal {
    explicit Signal(std::shared_ptr<Waiter> waiter) noexcept : w(std::move(waiter)) {}
    Signal(const Signal&) = delete;
    Signal& operator=(const Signal&) = delete;
    std::shared_ptr<Waiter> w;
    ~Signal() {
      {
        std::lock_guard lk(w->mu);
        w->done = true;
      }
      w->cv.notify_all();
    }
  };
  std::shared_ptr<Waiter> waiter;
  Task task;
  try {
    waiter = std::make_shared<Waiter>();
    auto sig = std::make_shared<Signal>(waiter);
    task = [&fn, sig = std::move(sig)] { fn(); };
  } catch (const std::bad_alloc&) {
    impl_->log.error("call(): out of memory, not run");
    return;
  }
  if (!post(std::move(task))) return;  // stopped: the task (and signal) is gone
  std::unique_lock lk(waiter->mu);
  waiter->cv.wait(lk, [&] { return waiter->done; });
}

bool Reactor::in_reactor_thread() const noexcept {
  const auto me = std::this_thread::get_id();
  if (impl_->running.load(std::memory_order_acquire)) return impl_->loop_thread.load(std::memory_order_acquire) == me;
  return impl_->owner == me;
}

void Reactor::add_poller(Poller* p) noexcept {
  assert(impl_->on_owner_side());
  if (p == nullptr) return;
  try {
    impl_->pollers.push_back(p);
  } catch (const std::bad_alloc&) {
    impl_->log.error("add_poller: out of memory");
  }
}

void Reactor::remove_poller(Poller* p) noexcept {
  assert(impl_->on_owner_side());
  auto& v = impl_->pollers;
  for (auto& slot : v) {
    if (slot == p) slot = nullptr;
  }
  if (impl_->in_poll_loop) {
    impl_->pollers_dirty = true;
  } else {
    std::erase(v, nullptr);
  }
}

Status Reactor::watch_fd(int fd, uint32_t epoll_events, FdHandler handler) noexcept {
  assert(impl_->on_owner_side());
  if (fd < 0 || !handler) return unexpected(EINVAL);
  if (impl_->fd_keys.contains(fd)) return unexpected(EEXIST);
  uint64_t key = 0;
  return impl_->add_watch(fd, epoll_events, false, std::move(handler), &key);
}

void Reactor::unwatch_fd(int fd) noexcept {
  assert(impl_->on_owner_side());
  auto it = impl_->fd_keys.find(fd);
  if (it != impl_->fd_keys.end()) impl_->remove_watch(it->second);
}

Result<Reactor::TimerId> Reactor::add_timer(std::chrono::nanoseconds period, Task fn) noexcept {
  assert(impl_->on_owner_side());
  if (period <= std::chrono::nanoseconds::zero() || !fn) return unexpected(EINVAL);
  const int tfd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) return unexpected_errno();
  itimerspec its{};
  its.it_interval.tv_sec = static_cast<time_t>(period.count() / 1'000'000'000);
  its.it_interval.tv_nsec = static_cast<long>(period.count() % 1'000'000'000);
  its.it_value = its.it_interval;
  if (::timerfd_settime(tfd, 0, &its, nullptr) < 0) {
    const auto e = unexpected_errno();
    ::close(tfd);
    return e;
  }
  return impl_->add_timer_fd(tfd, std::move(fn), false);
}

Result<Reactor::TimerId> Reactor::Impl::add_timer_fd(int tfd, Task fn, bool oneshot) noexcept {
  // Expirations missed while the reactor was busy coalesce into one run:
  // periodic housekeeping wants "at least every period", not catch-up bursts.
  const uint64_t key = next_key;  // add_watch() takes it
  FdHandler h = [this, key, tfd, fn = std::move(fn)](uint32_t) {
    uint64_t expirations = 0;
    if (::read(tfd, &expirations, sizeof expirations) != static_cast<ssize_t>(sizeof expirations) || expirations == 0)
      return;
    // The timerfd (CLOCK_MONOTONIC) says the deadline passed; the coarse
    // now() may not show it yet (it lags by a tick, more when the tick was
    // late, as in a VM). Catching now() up keeps it a true lower bound of
    // the time and lets the handler and this iteration's pollers see their
    // deadline as reached: none re-arms for a time already past and spins.
    if (auto it = watches.find(key); it != watches.end() && it->second->oneshot)
      now = std::max(now, it->second->deadline);
    fn();
  };
  uint64_t added = 0;
  if (auto st = add_watch(tfd, EPOLLIN, true, std::move(h), &added); !st) {
    ::close(tfd);
    return unexpected(st.error());
  }
  assert(added == key);
  watches[added]->oneshot = oneshot;
  return added;
}

Result<Reactor::TimerId> Reactor::add_oneshot_timer(Task fn) noexcept {
  assert(impl_->on_owner_side());
  if (!fn) return unexpected(EINVAL);
  // Created disarmed: not readable until arm_timer().
  const int tfd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) return unexpected_errno();
  return impl_->add_timer_fd(tfd, std::move(fn), true);
}

Status Reactor::arm_timer(TimerId id, std::chrono::steady_clock::time_point when) noexcept {
  assert(impl_->on_owner_side());
  auto it = impl_->watches.find(id);
  if (it == impl_->watches.end() || !it->second->timer || !it->second->oneshot) return unexpected(EINVAL);
  itimerspec its{};
  int flags = 0;
  if (when != std::chrono::steady_clock::time_point{}) {
    // libstdc++'s steady_clock is CLOCK_MONOTONIC: an absolute expiry, so
    // the delay spent getting here is not added to it. A zero it_value
    // would disarm: the earliest expiry is 1 ns.
    const auto ns =
        std::max<int64_t>(1, std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count());
    its.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    its.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    flags = TFD_TIMER_ABSTIME;
  }
  if (::timerfd_settime(it->second->fd, flags, &its, nullptr) < 0) return unexpected_errno();
  it->second->deadline = when;
  return ok();
}

void Reactor::cancel_timer(TimerId id) noexcept {
  assert(impl_->on_owner_side());
  auto it = impl_->watches.find(id);
  if (it != impl_->watches.end() && it->second->timer) impl_->remove_watch(id);
}

io_uring* Reactor::uring() noexcept { return impl_->have_uring ? &impl_->ring : nullptr; }

io_uring_sqe* Reactor::get_sqe() noexcept {
  Impl& m = *impl_;
  if (!m.have_uring) return nullptr;
  io_uring_sqe* sqe = io_uring_get_sqe(&m.ring);
  if (sqe == nullptr) {
    m.submit_sqes();
    sqe = io_uring_get_sqe(&m.ring);
    if (sqe == nullptr) return nullptr;
  }
  // liburing's prep helpers leave user_data alone: a stale value from the
  // slot's previous use would be dispatched as a UringCompletion*.
  io_uring_sqe_set_data64(sqe, 0);
  return sqe;
}

Result<unsigned> Reactor::register_file(int fd) noexcept {
  Impl& m = *impl_;
  assert(m.on_owner_side());
  if (!m.have_uring) return unexpected(ENXIO);
  if (fd < 0) return unexpected(EBADF);
  if (!m.files_registered) {
    if (m.opts.fixed_files == 0) return unexpected(ENOSPC);
    try {
      m.file_slot_used.assign(m.opts.fixed_files, false);
    } catch (const std::bad_alloc&) {
      return unexpected(ENOMEM);
    }
    const int r = io_uring_register_files_sparse(&m.ring, m.opts.fixed_files);
    if (r < 0) return unexpected(-r);
    m.files_registered = true;
  }
  unsigned slot;
  if (!m.free_file_slots.empty()) {
    slot = m.free_file_slots.back();
    m.free_file_slots.pop_back();
  } else if (m.next_file_slot < m.opts.fixed_files) {
    slot = m.next_file_slot++;
  } else {
    return unexpected(ENOSPC);
  }
  const int r = io_uring_register_files_update(&m.ring, slot, &fd, 1);
  if (r < 0) {
    try {
      m.free_file_slots.push_back(slot);
    } catch (const std::bad_alloc&) {
      // The slot stays unusable; better than handing it out twice.
    }
    return unexpected(-r);
  }
  m.file_slot_used[slot] = true;
  return slot;
}

void Reactor::unregister_file(unsigned slot) noexcept {
  Impl& m = *impl_;
  assert(m.on_owner_side());
  if (!m.files_registered || slot >= m.next_file_slot || !m.file_slot_used[slot]) return;
  m.file_slot_used[slot] = false;
  int none = -1;
  (void)io_uring_register_files_update(&m.ring, slot, &none, 1);
  try {
    m.free_file_slots.push_back(slot);
  } catch (const std::bad_alloc&) {
  }
}

const ReactorStats& Reactor::stats() const noexcept { return impl_->stats; }

std::chrono::steady_clock::time_point Reactor::now() const noexcept {
  // The loop writes `now` on its thread only; anyone else reads the clock.
  if (impl_->running.load(std::memory_order_acquire) &&
      impl_->loop_thread.load(std::memory_order_acquire) == std::this_thread::get_id()) {
    return impl_->now;
  }
  return CoarseClock::now();
}

std::chrono::nanoseconds Reactor::clock_resolution() const noexcept { return impl_->resolution; }

void Reactor::set_fine_clock(bool on) noexcept { impl_->fine_requested.store(on, std::memory_order_relaxed); }

bool Reactor::fine_clock() const noexcept { return impl_->fine_requested.load(std::memory_order_relaxed); }

std::chrono::steady_clock::time_point Reactor::fine_now() noexcept {
  Impl& m = *impl_;
  if (!m.fine_on) return {};
  if (m.fine_at == std::chrono::steady_clock::time_point{}) {
    m.fine_at = std::chrono::steady_clock::now();
    ++m.stats.fine_clock_reads;
  }
  return m.fine_at;
}

const std::string& Reactor::name() const noexcept { return impl_->opts.name; }

}  // namespace xenpath
