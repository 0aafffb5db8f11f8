// The Reactor: pollers, the arm-then-sleep rule, fds, timers, cross-thread
// work and one io_uring submit per iteration.
#include <gtest/gtest.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "common/mailbox.h"
#include "common/reactor.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Reactor> make(unsigned uring = 64, std::chrono::microseconds window = 0us) {
  Reactor::Options o;
  o.name = "test";
  o.uring_entries = uring;
  o.poll_window = window;
  auto r = Reactor::create(o);
  EXPECT_TRUE(r.has_value());
  return std::move(*r);
}

// Does `work` units (one per poll), then is idle.
struct CountingPoller : Poller {
  std::atomic<int> work{0};
  std::atomic<int> polls{0};
  std::atomic<int> arms{0};
  bool poll() noexcept override {
    ++polls;
    if (work.load() > 0) {
      --work;
      return true;
    }
    return false;
  }
  bool arm() noexcept override {
    ++arms;
    return false;
  }
};

TEST(Reactor, RunsPollersThenSleepsWhenIdle) {
  auto r = make();
  CountingPoller p;
  p.work = 100;
  r->add_poller(&p);
  ASSERT_TRUE(r->start().has_value());
  for (int i = 0; i < 200 && p.work.load() > 0; ++i) std::this_thread::sleep_for(1ms);
  std::this_thread::sleep_for(20ms);
  uint64_t it1 = 0, it2 = 0, sleeps = 0;
  r->call([&] { it1 = r->stats().iterations; });
  std::this_thread::sleep_for(50ms);
  r->call([&] {
    it2 = r->stats().iterations;
    sleeps = r->stats().sleeps;
  });
  EXPECT_EQ(p.work.load(), 0);
  EXPECT_GE(sleeps, 1u);
  // Idle means asleep in epoll: only the wake-ups for the two call()s.
  EXPECT_LE(it2 - it1, 6u);
  EXPECT_GE(p.arms.load(), 1);
  r->stop();
}

TEST(Reactor, LateWorkFoundByArmPreventsTheSleep) {
  auto r = make();
  struct LatePoller : Poller {
    int late = 1;
    int done = 0;
    bool poll() noexcept override { return false; }
    bool arm() noexcept override {
      if (late > 0) {
        --late;
        return true;  // a request slipped in between poll and sleep
      }
      return false;
    }
  } p;
  r->add_poller(&p);
  ASSERT_TRUE(r->start().has_value());
  std::this_thread::sleep_for(20ms);
  uint64_t avoided = 0;
  r->call([&] { avoided = r->stats().wakeups_by_arm; });
  EXPECT_EQ(avoided, 1u);
  r->stop();
}

TEST(Reactor, FdHandlersAndTimersFire) {
  auto r = make(0);
  const int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  std::atomic<int> fd_hits{0}, ticks{0};
  ASSERT_TRUE(r->watch_fd(efd, EPOLLIN, [&](uint32_t) {
                 uint64_t v;
                 if (read(efd, &v, sizeof(v)) == sizeof(v)) fd_hits += static_cast<int>(v);
               }).has_value());
  auto timer = r->add_timer(2ms, [&] { ++ticks; });
  ASSERT_TRUE(timer.has_value());
  ASSERT_TRUE(r->start().has_value());
  const uint64_t three = 3;
  ASSERT_EQ(write(efd, &three, sizeof(three)), 8);
  for (int i = 0; i < 500 && (fd_hits.load() < 3 || ticks.load() < 3); ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(fd_hits.load(), 3);
  EXPECT_GE(ticks.load(), 3);
  r->call([&] { r->cancel_timer(*timer); });
  const int after = ticks.load();
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(ticks.load(), after);
  r->stop();
  close(efd);
}

TEST(Reactor, PostAndCallFromOtherThreads) {
  auto r = make(0);
  ASSERT_TRUE(r->start().has_value());
  std::atomic<int> sum{0};
  std::atomic<int> wrong_thread{0};
  std::thread producers[4];
  for (auto& t : producers) {
    t = std::thread([&] {
      for (int i = 0; i < 250; ++i) {
        ASSERT_TRUE(r->post([&] {
          if (!r->in_reactor_thread()) ++wrong_thread;
          ++sum;
        }));
      }
    });
  }
  for (auto& t : producers) t.join();
  r->call([] {});  // everything posted before this ran before it
  EXPECT_EQ(sum.load(), 1000);
  EXPECT_EQ(wrong_thread.load(), 0);
  EXPECT_FALSE(r->in_reactor_thread());
  r->stop();
  EXPECT_FALSE(r->post([] {}));  // closed after stop
}

TEST(Reactor, OneIoUringSubmitPerIteration) {
  auto r = make(64);
  struct Nop : UringCompletion {
    std::atomic<int> done{0};
    void on_complete(int32_t res, uint32_t) noexcept override {
      if (res == 0) ++done;
    }
  } nop;
  // Three queues each queue one operation in the same iteration.
  struct Prep : Poller {
    Reactor* r;
    UringCompletion* c;
    bool fired = false;
    bool poll() noexcept override {
      if (fired) return false;
      fired = true;
      io_uring_sqe* sqe = r->get_sqe();
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data(sqe, c);
      return true;
    }
    bool arm() noexcept override { return false; }
  } preps[3];
  for (auto& p : preps) {
    p.r = r.get();
    p.c = &nop;
    r->add_poller(&p);
  }
  ASSERT_TRUE(r->start().has_value());
  for (int i = 0; i < 500 && nop.done.load() < 3; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(nop.done.load(), 3);
  ReactorStats s;
  r->call([&] { s = r->stats(); });
  EXPECT_EQ(s.uring_sqes, 3u);
  EXPECT_EQ(s.uring_submits, 1u);
  EXPECT_EQ(s.uring_cqes, 3u);
  r->stop();
}

TEST(Reactor, StopIsPromptWhileAsleep) {
  auto r = make();
  ASSERT_TRUE(r->start().has_value());
  std::this_thread::sleep_for(10ms);
  const auto t0 = std::chrono::steady_clock::now();
  r->stop();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);
}

TEST(Mailbox, NoLostWakeupAndOrderPerProducer) {
  Mailbox<int> mb;
  ASSERT_TRUE(mb.valid());
  std::thread t1([&] {
    for (int i = 0; i < 1000; ++i) mb.push(i);
  });
  std::thread t2([&] {
    for (int i = 0; i < 1000; ++i) mb.push(100000 + i);
  });
  int last1 = -1, last2 = 99999, n = 0;
  while (n < 2000) {
    pollfd pfd{mb.fd(), POLLIN, 0};
    ASSERT_EQ(poll(&pfd, 1, 2000), 1) << "lost wake-up after " << n;
    n += static_cast<int>(mb.drain([&](int v) {
      if (v >= 100000) {
        EXPECT_EQ(v, last2 + 1);
        last2 = v;
      } else {
        EXPECT_EQ(v, last1 + 1);
        last1 = v;
      }
    }, 64));
  }
  t1.join();
  t2.join();
  EXPECT_TRUE(mb.empty());
}

}  // namespace
}  // namespace xenpath
