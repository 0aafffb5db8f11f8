// Reactor: one thread that runs a core's pollers.
//
// Owned by the thread that creates it; after start() everything but post()
// and stop() runs on the reactor thread. It touches no guest memory itself:
// its pollers do (rings, mapped grants), always in bounded bursts.
//
// One iteration: read the clock once (CLOCK_MONOTONIC_COARSE, never a
// system call: common/coarse_clock.h; pollers and timers use this cached
// now() instead of reading a clock themselves), run the fd handlers of the
// last epoll_wait, drain the mailbox, run every poller once (each does a
// burst of at most 32-64 items and returns whether it did anything), submit
// the io_uring once, reap completions in a batch. Its own system calls are
// few because each one is a trip through Xen on a PV dom0 (~50 us): the
// epoll fd is polled (epoll_wait(..., 0)) only every kFdPollInterval
// iterations while there is work or the poll window spins, and always before
// sleeping. While pollers found work within the last `poll_window` (and for
// at most kMaxPollSpins empty iterations) it spins; then it asks every poller
// to arm() (RING_FINAL_CHECK_FOR_REQUESTS, unmask event channels) and only
// sleeps in epoll_wait when none reports late work. This is the "re-arm
// with a final check" rule: an event that races with going to sleep is
// either seen by arm() or wakes epoll. Fd handlers and timers alone do not
// open a poll window: a periodic timer costs one iteration per expiry.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/result.h"

struct io_uring;
struct io_uring_sqe;

namespace xenpath {

class Poller {
 public:
  virtual ~Poller() = default;
  // A bounded burst of work; true when it did any.
  virtual bool poll() noexcept = 0;
  // Before sleeping: re-arm notifications, then final check. True when work
  // arrived meanwhile (the reactor then does not sleep).
  virtual bool arm() noexcept = 0;
};

// Target of an io_uring completion: sqe->user_data is a UringCompletion*.
class UringCompletion {
 public:
  virtual ~UringCompletion() = default;
  virtual void on_complete(int32_t res, uint32_t cqe_flags) noexcept = 0;
};

struct ReactorStats {
  uint64_t iterations = 0;
  uint64_t busy_iterations = 0;
  // Wall time spent in iterations that did work (pollers, fd handlers,
  // completions), not in spinning or sleeping: what the thread's datapath
  // costs, as SPDK's busy_tsc. Divided by packets or requests it gives a
  // per-item cost that does not depend on how long the poll window spins.
  // Measured on the coarse clock, iteration by iteration (each busy
  // iteration adds the time to the next one's clock read; one that went to
  // sleep adds nothing): exact over many iterations, not for one.
  uint64_t busy_ns = 0;
  // The loop's own system calls and clock reads (issues 13/14: each is a
  // trip through Xen on a PV dom0, except the coarse clock read).
  uint64_t epoll_waits = 0;  // epoll_wait calls, blocking or not
  uint64_t clock_reads = 0;  // coarse clock reads: one per iteration
  // CLOCK_MONOTONIC reads for fine_now() (a system call on a PV dom0): at
  // most one per iteration that asked, none while the fine clock is off.
  uint64_t fine_clock_reads = 0;
  uint64_t sleeps = 0;          // epoll_wait calls that blocked
  uint64_t wakeups_by_arm = 0;  // sleeps avoided by a final check
  uint64_t uring_submits = 0;   // io_uring_submit calls
  uint64_t uring_sqes = 0;
  uint64_t uring_cqes = 0;
  uint64_t mailbox_tasks = 0;
};

class Reactor {
 public:
  // Poll the epoll fd every this many iterations while pollers find work
  // or the poll window spins (and always before sleeping): fd-driven work
  // (timers, the port's and the mailbox's fds, a queue's event channel
  // when it is not polled) waits at most this many iterations, and a busy
  // worker on a PV dom0 pays one ~56 us epoll_wait per 16 iterations instead
  // of per iteration. Rings, the mailbox and io_uring completions are read
  // from memory every iteration and need no epoll to be seen.
  static constexpr unsigned kFdPollInterval = 16;
  // The poll window's bound in empty iterations. The coarse clock moves
  // once a tick (4 ms at HZ=250), far beyond a 50 us window: below a tick
  // this count is what ends the spin. An empty iteration is a ring read
  // per poller (tens to hundreds of ns natively, microseconds under
  // emulation), so 256 of them are of the order of the default 50 us window
  // and cost 16 epoll_waits.
  static constexpr unsigned kMaxPollSpins = 256;

  struct Options {
    std::string name = "reactor";
    unsigned uring_entries = 256;  // 0: no io_uring
    // Spin this long after work (coarse clock: at least this, up to one tick
    // more), and for at most kMaxPollSpins empty iterations.
    std::chrono::microseconds poll_window{50};
    int cpu = -1;                // pin when >= 0
    unsigned fixed_files = 256;  // io_uring fixed-file table slots
  };
  using Task = std::function<void()>;
  using FdHandler = std::function<void(uint32_t epoll_events)>;
  using TimerId = uint64_t;

  static Result<std::unique_ptr<Reactor>> create(const Options& opts) noexcept;
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Spawns the thread. run_here() instead runs the loop on the calling
  // thread until stop() (tests, single-threaded tools).
  Status start() noexcept;
  void run_here() noexcept;
  // Any thread. Returns after the loop exited and (if started) joined.
  // Final: afterwards post() refuses work.
  void stop() noexcept;

  // Any thread: queue work for the reactor thread (cross-thread work goes
  // through here, never through shared locks). False once stopped.
  bool post(Task task) noexcept;
  // Any thread: runs fn on the reactor and waits for it.
  void call(const Task& fn) noexcept;
  [[nodiscard]] bool in_reactor_thread() const noexcept;

  // Reactor thread only (or before start()).
  void add_poller(Poller* p) noexcept;
  void remove_poller(Poller* p) noexcept;
  Status watch_fd(int fd, uint32_t epoll_events, FdHandler handler) noexcept;
  void unwatch_fd(int fd) noexcept;
  Result<TimerId> add_timer(std::chrono::nanoseconds period, Task fn) noexcept;
  // A one-shot timer, created disarmed (no fd event, no wake-up until
  // armed): arm_timer() sets or moves its expiry, and `fn` runs once per
  // arming that expires. For deadlines known exactly (a rate limiter's
  // replenish) instead of a periodic re-check.
  Result<TimerId> add_oneshot_timer(Task fn) noexcept;
  // Arms (or re-arms) a one-shot timer for `when` (steady_clock, i.e.
  // CLOCK_MONOTONIC, normally now() + a delay); a time already past fires at
  // once. When it fires, now() is at least `when` for its handler and the
  // rest of that iteration (the coarse clock may lag the timerfd by a tick
  // or more): a handler or poller comparing now() with its deadline never
  // finds it still ahead, so never re-arms for a past time and spins. A
  // default time_point disarms it. EINVAL for an unknown or periodic timer.
  Status arm_timer(TimerId id, std::chrono::steady_clock::time_point when) noexcept;

  // The time at the start of this iteration (CoarseClock: CLOCK_MONOTONIC
  // lagging by about a tick, read without a system call; moved up to a
  // one-shot timer's deadline when it fires, never backwards). Pollers and
  // timer handlers use it instead of reading a clock per item. Off the
  // reactor thread (or before the loop runs) a fresh coarse read.
  [[nodiscard]] std::chrono::steady_clock::time_point now() const noexcept;
  // How far now() may lag CLOCK_MONOTONIC (one tick).
  [[nodiscard]] std::chrono::nanoseconds clock_resolution() const noexcept;

  // The fine clock, for latency measurement (the coarse now() moves once a
  // tick, 4 ms at HZ=250, useless below a millisecond). Off by default.
  // While on, fine_now() returns CLOCK_MONOTONIC read at its first call in
  // an iteration and the same value for the rest of that iteration: at most
  // one clock read (on a PV dom0 without a vDSO clock, one ~50 us system
  // call) per iteration that has timed work, none in empty or spinning
  // iterations, never one per item. An item stamped with it is timed to
  // within the length of an iteration. While off, fine_now() returns a
  // default time_point and reads nothing; an item stamped with one is not
  // timed. Switched at the top of the next iteration.
  // set_fine_clock: any thread. fine_now: reactor thread only.
  void set_fine_clock(bool on) noexcept;
  [[nodiscard]] bool fine_clock() const noexcept;
  std::chrono::steady_clock::time_point fine_now() noexcept;
  void cancel_timer(TimerId id) noexcept;

  // io_uring of this reactor (nullptr when uring_entries == 0). Pollers get
  // SQEs here; the reactor submits once per iteration. get_sqe() flushes
  // (submits) and retries once when the SQ is full; nullptr means back off.
  [[nodiscard]] io_uring* uring() noexcept;
  io_uring_sqe* get_sqe() noexcept;
  // Installs `fd` in this io_uring's fixed-file table (created sparse, with
  // Options::fixed_files slots, on first use) so SQEs name it by slot with
  // IOSQE_FIXED_FILE and the kernel skips the per-I/O file lookup and
  // refcount. Owners of different files share the table through these two
  // calls. ENXIO without io_uring, ENOSPC when the table is full.
  Result<unsigned> register_file(int fd) noexcept;
  // Frees the slot; I/O already submitted on it holds its own reference.
  void unregister_file(unsigned slot) noexcept;

  [[nodiscard]] const ReactorStats& stats() const noexcept;
  [[nodiscard]] const std::string& name() const noexcept;

 private:
  struct Impl;
  explicit Reactor(std::unique_ptr<Impl> impl) noexcept;
  std::unique_ptr<Impl> impl_;
};

}  // namespace xenpath
