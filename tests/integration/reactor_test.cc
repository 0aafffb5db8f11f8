#include "common/reactor.h"

#include <gtest/gtest.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include "tests/fixtures/eventually.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using test::eventually;

std::unique_ptr<Reactor> make_reactor(Reactor::Options o = {}) {
  auto r = Reactor::create(o);
  EXPECT_TRUE(r) << error_string(r.error());
  return r ? std::move(*r) : nullptr;
}

// A reactor that sleeps as soon as it is idle (no poll window), with
// `uring_entries` (0: none).
std::unique_ptr<Reactor> make_sleeper(unsigned uring_entries = Reactor::Options{}.uring_entries) {
  Reactor::Options o;
  o.poll_window = 0us;
  o.uring_entries = uring_entries;
  return make_reactor(o);
}

class IdlePoller : public Poller {
 public:
  bool poll() noexcept override {
    polls.fetch_add(1);
    return false;
  }
  bool arm() noexcept override {
    arms.fetch_add(1);
    return false;
  }
  std::atomic<uint64_t> polls{0};
  std::atomic<uint64_t> arms{0};
};

// A reactor with no poll window serving `p`, started and asleep (p armed
// at least once).
void start_asleep(std::unique_ptr<Reactor>& r, IdlePoller& p) {
  r = make_sleeper();
  ASSERT_TRUE(r);
  r->add_poller(&p);
  ASSERT_TRUE(r->start());
  ASSERT_TRUE(eventually([&] { return p.arms.load() >= 1; }));
}

TEST(ReactorTest, SleepsWhenIdle) {
  IdlePoller p;
  std::unique_ptr<Reactor> r;
  ASSERT_NO_FATAL_FAILURE(start_asleep(r, p));
  // Idle: a busy loop would run thousands of iterations here.
  std::this_thread::sleep_for(30ms);
  r->stop();
  const ReactorStats& s = r->stats();
  EXPECT_EQ(s.iterations, 1u) << "one iteration, then asleep until stop()";
  EXPECT_EQ(s.sleeps, 1u);
  EXPECT_EQ(s.busy_iterations, 0u);
  EXPECT_EQ(s.busy_ns, 0u) << "sleeping is not busy time";
  EXPECT_EQ(s.wakeups_by_arm, 0u);
  EXPECT_EQ(p.polls.load(), 1u);
  EXPECT_EQ(p.arms.load(), 1u);
}

// A poller that works for a measured while on its first few polls: the
// reactor's busy time covers at least that work and none of the idle spin or
// the sleep that follow.
class TimedWorkPoller : public Poller {
 public:
  bool poll() noexcept override {
    if (done >= 3) return false;
    const auto t0 = std::chrono::steady_clock::now();
    // Several coarse-clock ticks (4 ms at HZ=250) per poll: busy time is
    // measured on that clock.
    while (std::chrono::steady_clock::now() - t0 < 20ms) {
    }
    worked += std::chrono::steady_clock::now() - t0;
    ++done;
    return true;
  }
  bool arm() noexcept override { return false; }
  int done = 0;
  std::chrono::nanoseconds worked{0};
};

TEST(ReactorTest, BusyTimeCountsWorkNotSpinOrSleep) {
  Reactor::Options o;
  o.poll_window = 20ms;  // a long spin after the work, which is not busy time
  o.uring_entries = 0;
  auto r = make_reactor(o);
  ASSERT_TRUE(r);
  TimedWorkPoller p;
  r->add_poller(&p);
  ASSERT_TRUE(r->start());
  std::this_thread::sleep_for(250ms);
  r->stop();
  const ReactorStats& s = r->stats();
  ASSERT_EQ(p.done, 3);
  EXPECT_EQ(s.busy_iterations, 3u);
  // Each busy iteration is measured to the next clock read on the coarse
  // clock: within one tick of the truth.
  const uint64_t tick = static_cast<uint64_t>(r->clock_resolution().count());
  EXPECT_GE(s.busy_ns + 3 * tick, static_cast<uint64_t>(p.worked.count()));
  // The spin and the sleep until stop() are ~190 ms of wall time that must
  // not count; the margin is for a preempted thread on a shared machine.
  EXPECT_LT(s.busy_ns, static_cast<uint64_t>(p.worked.count()) + 3 * tick + 50'000'000u);
  EXPECT_EQ(s.clock_reads, s.iterations) << "one clock read per iteration";
  EXPECT_LE(s.epoll_waits, s.iterations / Reactor::kFdPollInterval + s.sleeps + 1);
}

TEST(ReactorTest, IterationsBoundedWhileIdleWithPollWindow) {
  auto r = make_reactor();  // default 50us poll window
  ASSERT_TRUE(r);
  IdlePoller p;
  r->add_poller(&p);
  ASSERT_TRUE(r->start());
  uint64_t it1 = 0, sl1 = 0, it2 = 0, sl2 = 0;
  r->call([&] {
    it1 = r->stats().iterations;
    sl1 = r->stats().sleeps;
  });
  std::this_thread::sleep_for(50ms);
  r->call([&] {
    it2 = r->stats().iterations;
    sl2 = r->stats().sleeps;
  });
  r->stop();
  EXPECT_GE(sl2, sl1 + 1) << "slept in between";
  // One wake for the second call plus the spin of one poll window: far
  // below what 50ms of busy looping would do.
  EXPECT_LT(it2 - it1, 2000u);
  EXPECT_GE(it2 - it1, 2u);
}

// arm() reports late work three times, then lets the reactor sleep (and asks
// it to stop, so run_here() returns). Everything is on one thread: the
// counts are exact.
class LateWorkPoller : public Poller {
 public:
  explicit LateWorkPoller(Reactor& r) : r_(r) {}
  bool poll() noexcept override {
    if (!pending_) return false;
    pending_ = false;
    ++work_done;
    return true;
  }
  bool arm() noexcept override {
    ++arms;
    if (arms <= 3) {
      pending_ = true;  // "work arrived while re-arming"
      return true;
    }
    r_.stop();
    return false;
  }
  unsigned arms = 0;
  unsigned work_done = 0;

 private:
  Reactor& r_;
  bool pending_ = false;
};

TEST(ReactorTest, ArmReportingWorkPreventsSleep) {
  auto r = make_sleeper(0);
  ASSERT_TRUE(r);
  LateWorkPoller p(*r);
  r->add_poller(&p);
  IdlePoller quiet;  // armed too, every time, even when the other reports work
  r->add_poller(&quiet);
  r->run_here();
  const ReactorStats& s = r->stats();
  EXPECT_EQ(p.arms, 4u);
  EXPECT_EQ(p.work_done, 3u);
  EXPECT_EQ(quiet.arms.load(), 4u);
  EXPECT_EQ(s.wakeups_by_arm, 3u);
  // arm, work, arm, work, arm, work, arm + sleep (woken by stop()).
  EXPECT_EQ(s.iterations, 7u);
  EXPECT_EQ(s.busy_iterations, 3u);
  EXPECT_EQ(s.sleeps, 1u);
  EXPECT_EQ(r->uring(), nullptr);
  EXPECT_EQ(r->get_sqe(), nullptr);
}

TEST(ReactorTest, FdHandlersFire) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  const int efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  std::atomic<uint64_t> total{0};
  std::atomic<int> calls{0};
  ASSERT_TRUE(r->watch_fd(efd, EPOLLIN, [&](uint32_t ev) {
    EXPECT_TRUE(ev & EPOLLIN);
    uint64_t v = 0;
    ASSERT_EQ(::read(efd, &v, sizeof v), static_cast<ssize_t>(sizeof v));
    total.fetch_add(v);
    if (calls.fetch_add(1) + 1 == 2) r->unwatch_fd(efd);  // unwatch from inside its own handler
  }));
  EXPECT_EQ(r->watch_fd(efd, EPOLLIN, [](uint32_t) {}).error(), EEXIST);
  EXPECT_EQ(r->watch_fd(-1, EPOLLIN, [](uint32_t) {}).error(), EINVAL);
  ASSERT_TRUE(r->start());

  const uint64_t one = 5;
  ASSERT_EQ(::write(efd, &one, sizeof one), 8);
  ASSERT_TRUE(eventually([&] { return total.load() == 5; }));
  ASSERT_EQ(::write(efd, &one, sizeof one), 8);
  ASSERT_TRUE(eventually([&] { return total.load() == 10; }));
  // Unwatched: a third write is not seen.
  ASSERT_EQ(::write(efd, &one, sizeof one), 8);
  r->call([] {});  // one more full iteration including epoll
  r->call([] {});
  EXPECT_EQ(calls.load(), 2);
  EXPECT_EQ(total.load(), 10u);
  r->stop();
  ::close(efd);
}

TEST(ReactorTest, TimersFireAndCancel) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  std::atomic<int> fired{0};
  auto id = r->add_timer(2ms, [&] { fired.fetch_add(1); });
  ASSERT_TRUE(id);
  EXPECT_EQ(r->add_timer(0ns, [] {}).error(), EINVAL);
  ASSERT_TRUE(r->start());
  ASSERT_TRUE(eventually([&] { return fired.load() >= 3; }));
  int at_cancel = 0;
  r->call([&] {
    r->cancel_timer(*id);
    at_cancel = fired.load();
  });
  std::this_thread::sleep_for(20ms);
  r->call([] {});
  EXPECT_EQ(fired.load(), at_cancel) << "no firing after cancel_timer";
  r->stop();
  EXPECT_GT(r->stats().sleeps, 0u) << "slept between timer expirations";
}

TEST(ReactorTest, OneShotTimersFireOncePerArming) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  std::atomic<int> fired{0};
  auto id = r->add_oneshot_timer([&] { fired.fetch_add(1); });
  ASSERT_TRUE(id);
  auto periodic = r->add_timer(1h, [] {});
  ASSERT_TRUE(periodic);
  EXPECT_EQ(r->arm_timer(*periodic, std::chrono::steady_clock::now()).error(), EINVAL);
  EXPECT_EQ(r->arm_timer(*id + 1000, std::chrono::steady_clock::now()).error(), EINVAL);
  EXPECT_EQ(r->add_oneshot_timer({}).error(), EINVAL);
  ASSERT_TRUE(r->start());
  // Created disarmed: it never fires on its own.
  std::this_thread::sleep_for(10ms);
  r->call([] {});
  EXPECT_EQ(fired.load(), 0);
  Status st;
  r->call([&] { st = r->arm_timer(*id, std::chrono::steady_clock::now() + 2ms); });
  ASSERT_TRUE(st);
  ASSERT_TRUE(eventually([&] { return fired.load() == 1; }));
  std::this_thread::sleep_for(10ms);
  r->call([] {});
  EXPECT_EQ(fired.load(), 1) << "one expiry per arming";
  // A deadline already past fires at once; re-arming moves it.
  r->call([&] { st = r->arm_timer(*id, std::chrono::steady_clock::now() - 1s); });
  ASSERT_TRUE(st);
  ASSERT_TRUE(eventually([&] { return fired.load() == 2; }));
  r->call([&] {
    st = r->arm_timer(*id, std::chrono::steady_clock::now() + 1h);
    if (st) st = r->arm_timer(*id, std::chrono::steady_clock::now() + 1ms);
  });
  ASSERT_TRUE(st);
  ASSERT_TRUE(eventually([&] { return fired.load() == 3; }));
  // Disarmed before its expiry: it does not fire.
  r->call([&] {
    st = r->arm_timer(*id, std::chrono::steady_clock::now() + 5ms);
    if (st) st = r->arm_timer(*id, {});
  });
  ASSERT_TRUE(st);
  std::this_thread::sleep_for(20ms);
  r->call([] {});
  EXPECT_EQ(fired.load(), 3);
  r->call([&] { r->cancel_timer(*id); });
  r->stop();
}

TEST(ReactorTest, PostAndCallFromOtherThreads) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  ASSERT_TRUE(r->start());
  constexpr int kThreads = 4, kPerThread = 500;
  // Reactor-thread-only state: no atomics needed if everything runs there.
  std::vector<int> last(kThreads, -1);
  int ran = 0, misordered = 0, wrong_thread = 0;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        EXPECT_TRUE(r->post([&, t, i] {
          if (!r->in_reactor_thread()) ++wrong_thread;
          if (last[t] + 1 != i) ++misordered;
          last[t] = i;
          ++ran;
        }));
      }
      int seen = 0;
      r->call([&] { seen = ran; });  // waits: runs after this thread's posts
      EXPECT_GE(seen, kPerThread);
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_FALSE(r->in_reactor_thread());
  int total = 0;
  uint64_t tasks = 0;
  r->call([&] {
    total = ran;
    tasks = r->stats().mailbox_tasks;
    // call() on the reactor thread runs inline.
    bool inline_ran = false;
    r->call([&] { inline_ran = true; });
    EXPECT_TRUE(inline_ran);
  });
  EXPECT_EQ(total, kThreads * kPerThread);
  EXPECT_EQ(misordered, 0);
  EXPECT_EQ(wrong_thread, 0);
  EXPECT_EQ(tasks, uint64_t{kThreads} * kPerThread + kThreads + 1);
  r->stop();
  EXPECT_FALSE(r->post([] {})) << "refused once stopped";
  // After stop() nothing runs the loop: from another thread call() returns
  // without running fn (it does not hang); the owner thread is the reactor
  // thread again and runs it inline.
  bool ran_elsewhere = false, ran_owner = false;
  std::thread([&] { r->call([&] { ran_elsewhere = true; }); }).join();
  EXPECT_FALSE(ran_elsewhere);
  r->call([&] { ran_owner = true; });
  EXPECT_TRUE(ran_owner);
}

TEST(ReactorTest, TasksQueuedBeforeStartRunAndStopRunsLeftovers) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  std::atomic<int> ran{0};
  ASSERT_TRUE(r->post([&] { ran.fetch_add(1); }));
  ASSERT_TRUE(r->start());
  EXPECT_EQ(r->start().error(), EBUSY);
  ASSERT_TRUE(eventually([&] { return ran.load() == 1; }));
  // A task that stops the reactor from its own thread, then more tasks
  // queued behind it: accepted tasks still run before stop() returns.
  ASSERT_TRUE(r->post([&] {
    r->stop();
    ran.fetch_add(1);
  }));
  for (int i = 0; i < 10; ++i) r->post([&] { ran.fetch_add(1); });
  r->stop();
  EXPECT_EQ(ran.load(), 12);
  EXPECT_EQ(r->start().error(), ESHUTDOWN);
}

TEST(ReactorTest, StopWithoutStartDropsQueuedTasks) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  auto token = std::make_shared<int>(1);
  std::weak_ptr<int> weak = token;
  ASSERT_TRUE(r->post([t = std::move(token)] { FAIL() << "must not run"; }));
  EXPECT_TRUE(r->in_reactor_thread()) << "the owner acts as reactor thread before start()";
  r->stop();
  EXPECT_TRUE(weak.expired()) << "dropped task destroyed";
  EXPECT_FALSE(r->post([] {}));
}

TEST(ReactorTest, StopIsPromptWhileAsleep) {
  IdlePoller p;
  std::unique_ptr<Reactor> r;
  ASSERT_NO_FATAL_FAILURE(start_asleep(r, p));
  auto done = std::async(std::launch::async, [&] { r->stop(); });
  // Liveness, not performance: a reactor that misses the wake never returns.
  ASSERT_EQ(done.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(r->stats().sleeps, 1u);
}

TEST(ReactorTest, RunHereStoppedFromAnotherThread) {
  auto r = make_reactor();
  ASSERT_TRUE(r);
  std::thread t;
  std::atomic<bool> started{false};
  ASSERT_TRUE(r->post([&] {
    started.store(true);
    t = std::thread([&] { r->stop(); });
  }));
  r->run_here();
  EXPECT_TRUE(started.load());
  t.join();
  EXPECT_GE(r->stats().mailbox_tasks, 1u);
}

TEST(ReactorTest, RemovePollerDuringPoll) {
  auto r = make_sleeper();
  ASSERT_TRUE(r);
  struct SelfRemoving : Poller {
    Reactor* r = nullptr;
    Poller* victim = nullptr;
    int polls = 0;
    bool poll() noexcept override {
      ++polls;
      r->remove_poller(victim);
      r->remove_poller(this);
      return true;
    }
    bool arm() noexcept override { return false; }
  };
  SelfRemoving a;
  IdlePoller b;
  a.r = r.get();
  a.victim = &b;
  r->add_poller(&a);
  r->add_poller(&b);
  ASSERT_TRUE(r->start());
  r->call([] {});
  r->call([] {});
  r->stop();
  EXPECT_EQ(a.polls, 1);
  EXPECT_EQ(b.polls.load(), 0u) << "removed before its turn in the same round";
}

TEST(ReactorTest, PinsAndNamesItsThread) {
  cpu_set_t allowed;
  ASSERT_EQ(sched_getaffinity(0, sizeof allowed, &allowed), 0);
  int cpu = -1;
  for (int c = CPU_SETSIZE - 1; c >= 0; --c) {
    if (CPU_ISSET(c, &allowed)) cpu = c;  // lowest allowed cpu
  }
  ASSERT_GE(cpu, 0);
  Reactor::Options o;
  o.name = "xp-pin-test-long-name";
  o.cpu = cpu;
  auto r = make_reactor(o);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->name(), "xp-pin-test-long-name");
  ASSERT_TRUE(r->start());
  cpu_set_t got;
  CPU_ZERO(&got);
  char name[32] = {};
  int rc_aff = -1, rc_name = -1;
  r->call([&] {
    rc_aff = pthread_getaffinity_np(pthread_self(), sizeof got, &got);
    rc_name = pthread_getname_np(pthread_self(), name, sizeof name);
  });
  r->stop();
  ASSERT_EQ(rc_aff, 0);
  EXPECT_EQ(CPU_COUNT(&got), 1);
  EXPECT_TRUE(CPU_ISSET(cpu, &got));
  ASSERT_EQ(rc_name, 0);
  EXPECT_STREQ(name, "xp-pin-test-lon") << "truncated to the kernel's 15 characters";
}

// --- io_uring ---

class NopCompletion : public UringCompletion {
 public:
  void on_complete(int32_t res, uint32_t) noexcept override {
    ++completions;
    last_res = res;
    if (on_done) on_done();
  }
  int completions = 0;
  int32_t last_res = -1;
  std::function<void()> on_done;
};

// Preps `n` NOP SQEs on its first poll only.
class NopPoller : public Poller {
 public:
  NopPoller(Reactor& r, std::vector<NopCompletion>& c) : r_(r), c_(c) {}
  bool poll() noexcept override {
    if (done_) return false;
    done_ = true;
    for (auto& c : c_) {
      io_uring_sqe* sqe = r_.get_sqe();
      if (sqe == nullptr) {
        ++no_sqe;
        continue;
      }
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, static_cast<UringCompletion*>(&c));
    }
    return true;
  }
  bool arm() noexcept override { return false; }
  int no_sqe = 0;

 private:
  Reactor& r_;
  std::vector<NopCompletion>& c_;
  bool done_ = false;
};

TEST(ReactorTest, UringOneSubmitPerIterationForAllPollers) {
  auto r = make_sleeper();
  ASSERT_TRUE(r);
  ASSERT_NE(r->uring(), nullptr);
  constexpr int kPollers = 3, kPerPoller = 4;
  std::vector<std::vector<NopCompletion>> comps(kPollers, std::vector<NopCompletion>(kPerPoller));
  std::vector<std::unique_ptr<NopPoller>> pollers;
  int outstanding = kPollers * kPerPoller;
  for (auto& v : comps) {
    for (auto& c : v)
      c.on_done = [&] {
        if (--outstanding == 0) r->stop();
      };
    pollers.push_back(std::make_unique<NopPoller>(*r, v));
    r->add_poller(pollers.back().get());
  }
  r->run_here();
  const ReactorStats& s = r->stats();
  EXPECT_EQ(outstanding, 0);
  EXPECT_EQ(s.uring_submits, 1u) << "one io_uring_submit for the SQEs of all pollers";
  EXPECT_EQ(s.uring_sqes, uint64_t{kPollers} * kPerPoller);
  EXPECT_EQ(s.uring_cqes, uint64_t{kPollers} * kPerPoller);
  for (auto& v : comps) {
    for (auto& c : v) {
      EXPECT_EQ(c.completions, 1);
      EXPECT_EQ(c.last_res, 0);
    }
  }
  for (auto& p : pollers) EXPECT_EQ(p->no_sqe, 0);
}

TEST(ReactorTest, GetSqeSubmitsWhenTheQueueIsFull) {
  auto r = make_sleeper(4);
  ASSERT_TRUE(r);
  std::vector<NopCompletion> comps(6);
  int outstanding = 6;
  for (auto& c : comps)
    c.on_done = [&] {
      if (--outstanding == 0) r->stop();
    };
  NopPoller p(*r, comps);
  r->add_poller(&p);
  r->run_here();
  const ReactorStats& s = r->stats();
  EXPECT_EQ(p.no_sqe, 0);
  EXPECT_EQ(outstanding, 0);
  // 4 SQEs flushed by get_sqe() when the 5th found the SQ full, the other 2
  // by the iteration's submit.
  EXPECT_EQ(s.uring_submits, 2u);
  EXPECT_EQ(s.uring_sqes, 6u);
  EXPECT_EQ(s.uring_cqes, 6u);
}

TEST(ReactorTest, SleepingReactorWakesForUringCompletion) {
  auto r = make_sleeper();
  ASSERT_TRUE(r);
  // Blocking eventfd: io_uring would fail a read on an O_NONBLOCK one with
  // EAGAIN instead of waiting.
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  ASSERT_GE(efd, 0);
  // A read on an empty eventfd completes only once the test writes it.
  struct ReadDone : UringCompletion {
    std::atomic<int32_t> res{-1};
    void on_complete(int32_t r, uint32_t) noexcept override { res.store(r); }
  } done;
  uint64_t buf = 0;
  r->call([&] {
    io_uring_sqe* sqe = r->get_sqe();
    ASSERT_NE(sqe, nullptr);
    io_uring_prep_read(sqe, efd, &buf, sizeof buf, 0);
    io_uring_sqe_set_data(sqe, static_cast<UringCompletion*>(&done));
  });  // before start: the owner runs it inline
  ASSERT_TRUE(r->start());
  ASSERT_TRUE(eventually([&] {
    uint64_t sl = 0;
    r->call([&] { sl = r->stats().sleeps; });
    return sl >= 2;
  }));
  const uint64_t v = 42;
  ASSERT_EQ(::write(efd, &v, sizeof v), 8);
  ASSERT_TRUE(eventually([&] { return done.res.load() == 8; }));
  r->stop();
  EXPECT_EQ(buf, 42u);
  EXPECT_EQ(r->stats().uring_cqes, 1u);
  ::close(efd);
}

}  // namespace
}  // namespace xenpath
