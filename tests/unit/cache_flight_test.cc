// BlockCache single-flight fills, wake-ups on the waiter's own thread,
// failing and abandoned fills, invalidation (operator drop, a file changed
// underneath, drop everything) and the per-image counters.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <thread>
#include <vector>

#include "cache/block_cache.h"
#include "common/reactor.h"
#include "tests/fixtures/cache_rig.h"
#include "tests/fixtures/eventually.h"

namespace xenpath {
namespace {

using test::check_pattern;
using test::fake_identity;
using test::fill_pattern;
using test::PatternWaiter;
using test::touch;
using Outcome = BlockCache::Outcome;

std::unique_ptr<BlockCache> make_cache(uint64_t blocks = 256, unsigned shards = 4) {
  BlockCache::Options o;
  o.block_size = 4096;
  o.budget_bytes = blocks * o.block_size;
  o.shards = shards;
  o.populate = false;
  return std::move(*BlockCache::create(o));
}

// A wake queue whose kick only raises a flag: the owning test thread drains
// it itself (what a reactor does through Reactor::post).
struct FlagQueue {
  std::atomic<int> kicks{0};
  CacheWakeQueue q{[this] { kicks.fetch_add(1); }};
};

TEST(CacheFlight, ConcurrentMissesMakeOneFillAndWakeEveryWaiterOnItsThread) {
  constexpr int kThreads = 8;
  auto c = make_cache();
  auto img = *c->open(fake_identity(1));
  std::barrier start(kThreads);
  std::atomic<int> looked_up{0};
  std::atomic<int> fills{0};
  std::atomic<int> waits{0};
  std::atomic<bool> completed{false};
  std::vector<int> wake_calls(kThreads, 0);
  std::vector<char> right_thread(kThreads, 0);  // not vector<bool>: each thread writes its own element
  std::vector<char> right_data(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      FlagQueue fq;
      PatternWaiter w(&fq.q);
      start.arrive_and_wait();
      auto r = c->lookup(*img, 42, 512, &w);
      looked_up.fetch_add(1);
      if (r.outcome == Outcome::kFill) {
        fills.fetch_add(1);
        // Publish only once every thread has looked up: they must all join.
        while (looked_up.load() < kThreads) std::this_thread::yield();
        fill_pattern(r.block.data(), 4096, img->id(), 42);
        c->complete(r.block, 4096);
        completed = true;
        right_thread[t] = right_data[t] = true;
        wake_calls[t] = 1;
        EXPECT_EQ(fq.kicks.load(), 0) << "the filler's own queue is not kicked";
        return;
      }
      ASSERT_EQ(r.outcome, Outcome::kWait);
      waits.fetch_add(1);
      ASSERT_TRUE(test::eventually([&] { return fq.kicks.load() > 0; }));
      EXPECT_EQ(w.calls, 0) << "woken only through its own queue";
      EXPECT_EQ(fq.q.drain(), 1u);
      EXPECT_EQ(fq.q.drain(), 0u);
      EXPECT_EQ(fq.kicks.load(), 1);
      wake_calls[t] = w.calls;
      right_thread[t] = w.woken_on == std::this_thread::get_id();
      right_data[t] = w.error == 0 && w.block && check_pattern(w.block.data(), w.block.length(), img->id(), 42);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_TRUE(completed);
  EXPECT_EQ(fills.load(), 1) << "exactly one disk read";
  EXPECT_EQ(waits.load(), kThreads - 1);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(wake_calls[t], 1) << "thread " << t;
    EXPECT_TRUE(right_thread[t]) << "thread " << t;
    EXPECT_TRUE(right_data[t]) << "thread " << t;
  }
  const CacheCounters k = img->counters();
  EXPECT_EQ(k.misses, 1u);
  EXPECT_EQ(k.fills, 1u);
  EXPECT_EQ(k.joins, kThreads - 1u);
  EXPECT_EQ(k.bytes_from_disk, 4096u);
  EXPECT_EQ(k.bytes_from_memory, 512u * (kThreads - 1));
  EXPECT_EQ(c->gauges().free, c->blocks() - 1) << "one block for everyone";
  EXPECT_EQ(c->check(), "");
}

TEST(CacheFlight, AFailedFillWakesWaitersWithItsErrorAndDropsTheEntry) {
  auto c = make_cache();
  auto img = *c->open(fake_identity(1));
  FlagQueue fq;
  PatternWaiter w1(&fq.q), w2(&fq.q);
  auto fill = c->lookup(*img, 7, 4096, &w1);
  ASSERT_EQ(fill.outcome, Outcome::kFill);
  ASSERT_EQ(c->lookup(*img, 7, 4096, &w1).outcome, Outcome::kWait);
  ASSERT_EQ(c->lookup(*img, 7, 4096, &w2).outcome, Outcome::kWait);
  EXPECT_EQ(c->lookup(*img, 7, 4096, nullptr).outcome, Outcome::kBypass) << "no waiter: read around the cache";
  c->complete(fill.block, -EIO);
  EXPECT_FALSE(fill.block) << "a failed fill leaves the filler nothing";
  EXPECT_EQ(fq.q.drain(), 2u);
  EXPECT_EQ(w1.calls, 1);
  EXPECT_EQ(w1.error, EIO);
  EXPECT_FALSE(w1.block);
  EXPECT_EQ(w2.error, EIO);
  EXPECT_EQ(c->gauges().free, c->blocks()) << "the entry is gone";
  EXPECT_EQ(touch(*c, *img, 7), Outcome::kFill) << "the next reader retries the read";
  // A fill of 0 bytes or more than a block is an error too.
  auto again = c->lookup(*img, 8, 4096, nullptr);
  c->complete(again.block, 4097);
  EXPECT_FALSE(again.block);
  const CacheCounters k = img->counters();
  EXPECT_EQ(k.fill_errors, 2u);
  EXPECT_EQ(k.fills, 1u);
  EXPECT_EQ(k.bytes_from_memory, 0u) << "nothing was served from memory";
  EXPECT_EQ(c->check(), "");
}

TEST(CacheFlight, AnAbandonedFillCancelsItsWaiters) {
  auto c = make_cache();
  auto img = *c->open(fake_identity(1));
  FlagQueue fq;
  PatternWaiter w(&fq.q);
  {
    auto fill = c->lookup(*img, 3, 4096, nullptr);
    ASSERT_EQ(fill.outcome, Outcome::kFill);
    ASSERT_EQ(c->lookup(*img, 3, 4096, &w).outcome, Outcome::kWait);
  }  // the filler went away (its channel was torn down) without completing
  EXPECT_EQ(fq.q.drain(), 1u);
  EXPECT_EQ(w.error, ECANCELED);
  EXPECT_EQ(c->gauges().filling, 0u);
  EXPECT_EQ(c->check(), "");
}

TEST(CacheFlight, ATailBlockKeepsItsShortLength) {
  auto c = make_cache();
  auto img = *c->open(fake_identity(1));
  auto fill = c->lookup(*img, 9, 100, nullptr);
  ASSERT_EQ(fill.outcome, Outcome::kFill);
  EXPECT_EQ(fill.block.length(), 0u);
  EXPECT_EQ(fill.block.capacity(), 4096u);
  c->complete(fill.block, 1536);
  ASSERT_TRUE(fill.block) << "the filler keeps a pinned handle";
  EXPECT_FALSE(fill.block.filling());
  EXPECT_EQ(fill.block.length(), 1536u);
  auto hit = c->lookup(*img, 9, 100, nullptr);
  ASSERT_EQ(hit.outcome, Outcome::kHit);
  EXPECT_EQ(hit.block.length(), 1536u);
  EXPECT_EQ(hit.block.data(), fill.block.data());
}

TEST(CacheFlight, DroppingAnImageSparesPinnedMemoryUntilReleased) {
  auto c = make_cache();
  auto a = *c->open(fake_identity(1));
  auto b = *c->open(fake_identity(2));
  for (uint64_t blk = 0; blk < 20; ++blk) {
    (void)touch(*c, *a, blk);
    (void)touch(*c, *b, blk);
  }
  auto pinned = c->lookup(*a, 4, 4096, nullptr);
  ASSERT_EQ(pinned.outcome, Outcome::kHit);
  FlagQueue fq;
  PatternWaiter w(&fq.q);
  auto filling = c->lookup(*a, 100, 4096, nullptr);
  ASSERT_EQ(filling.outcome, Outcome::kFill);
  ASSERT_EQ(c->lookup(*a, 100, 4096, &w).outcome, Outcome::kWait);

  EXPECT_EQ(c->drop(a->id()), 21u) << "20 ready and one filling";
  EXPECT_EQ(c->gauges().doomed, 2u) << "the pinned one and the one being filled";
  EXPECT_TRUE(check_pattern(pinned.block.data(), 4096, a->id(), 4)) << "a holder's bytes stay put";
  EXPECT_EQ(c->check(), "");
  // The fill finishes into a dropped entry: nobody gets its data.
  fill_pattern(filling.block.data(), 4096, a->id(), 100);
  c->complete(filling.block, 4096);
  EXPECT_FALSE(filling.block);
  EXPECT_EQ(fq.q.drain(), 1u);
  EXPECT_EQ(w.error, ESTALE);
  pinned.block.reset();
  EXPECT_EQ(c->gauges().doomed, 0u);
  EXPECT_EQ(touch(*c, *a, 4), Outcome::kFill) << "a's entries are gone";
  EXPECT_EQ(touch(*c, *b, 4), Outcome::kHit) << "b's are not";
  EXPECT_FALSE(a->retired()) << "an operator drop does not retire the image";

  EXPECT_EQ(c->drop_all(), 21u);
  EXPECT_EQ(c->gauges().free, c->blocks());
  EXPECT_EQ(touch(*c, *b, 4), Outcome::kFill);
  EXPECT_EQ(c->check(), "");
}

// Real files: a base image changed in place is a new identity; the old one
// is retired (lookups bypass) and its entries dropped.
TEST(CacheFlight, AFileChangedUnderneathIsRetiredAndItsEntriesDropped) {
  char path[] = "/tmp/xenpath-cache-base-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 1 << 20), 0);
  const timespec t1[2] = {{1000, 0}, {1000, 0}};
  ASSERT_EQ(::futimens(fd, t1), 0);
  auto c = make_cache();
  auto id1 = *identity_of_fd(fd, 1 << 20, nullptr);
  auto img = *c->open(id1);
  auto same = *c->open(*identity_of_fd(fd, 1 << 20, nullptr));
  EXPECT_EQ(same.get(), img.get()) << "a second VBD on the same base shares it";
  for (uint64_t blk = 0; blk < 30; ++blk) (void)touch(*c, *img, blk);
  EXPECT_FALSE(c->revalidate(*img, *identity_of_fd(fd, 1 << 20, nullptr))) << "unchanged";

  // Someone writes the base image.
  ASSERT_EQ(::pwrite(fd, "x", 1, 0), 1);
  const timespec t2[2] = {{2000, 0}, {2000, 0}};
  ASSERT_EQ(::futimens(fd, t2), 0);
  auto id2 = *identity_of_fd(fd, 1 << 20, nullptr);
  ASSERT_NE(id1, id2);
  auto fresh = *c->open(id2);  // the next VBD to open it notices
  EXPECT_NE(fresh->id(), img->id());
  EXPECT_TRUE(img->retired());
  EXPECT_FALSE(fresh->retired());
  EXPECT_EQ(c->gauges().free, c->blocks()) << "the old entries are dropped";
  EXPECT_EQ(c->lookup(*img, 0, 4096, nullptr).outcome, Outcome::kBypass) << "holders of the old one read around";
  EXPECT_EQ(img->counters().bypasses, 1u);
  EXPECT_EQ(touch(*c, *fresh, 0), Outcome::kFill);

  // The periodic check (revalidate) finds the next change by itself.
  const timespec t3[2] = {{3000, 0}, {3000, 0}};
  ASSERT_EQ(::futimens(fd, t3), 0);
  EXPECT_TRUE(c->revalidate(*fresh, *identity_of_fd(fd, 1 << 20, nullptr)));
  EXPECT_TRUE(fresh->retired());
  EXPECT_EQ(c->gauges().free, c->blocks());
  EXPECT_EQ(c->images().size(), 2u) << "both still referenced";
  img.reset();
  same.reset();
  fresh.reset();
  EXPECT_EQ(c->images().size(), 0u) << "released with their last reference";
  ::close(fd);
  ::unlink(path);
  EXPECT_EQ(c->check(), "");
}

TEST(CacheFlight, ClosingTheLastReferenceDropsTheEntries) {
  auto c = make_cache();
  auto a = *c->open(fake_identity(1));
  for (uint64_t blk = 0; blk < 10; ++blk) (void)touch(*c, *a, blk);
  auto a2 = *c->open(fake_identity(1));
  a.reset();
  EXPECT_EQ(c->gauges().free, c->blocks() - 10) << "still open by another VBD";
  a2.reset();
  EXPECT_EQ(c->gauges().free, c->blocks());
  EXPECT_EQ(c->counters().fills, 10u) << "global counters outlive the image";
}

TEST(CacheFlight, CountersAddUpPerImageAndGlobally) {
  auto c = make_cache(64, 1);
  auto a = *c->open(fake_identity(1));
  auto b = *c->open(fake_identity(2));
  for (uint64_t blk = 0; blk < 40; ++blk) (void)touch(*c, *a, blk);
  for (uint64_t blk = 0; blk < 40; ++blk) (void)touch(*c, *a, blk);  // 40 hits
  for (uint64_t blk = 0; blk < 64; ++blk) (void)touch(*c, *b, blk);  // evicts some of a's
  const CacheCounters ka = a->counters();
  const CacheCounters kb = b->counters();
  const CacheCounters g = c->counters();
  EXPECT_EQ(ka.misses, 40u);
  EXPECT_EQ(ka.hits, 40u);
  EXPECT_EQ(ka.bytes_from_memory, 40u * 4096);
  EXPECT_EQ(ka.bytes_from_disk, 40u * 4096);
  EXPECT_EQ(kb.misses, 64u);
  EXPECT_EQ(ka.evictions, 0u) << "a's blocks were read twice: promoted, not evicted";
  EXPECT_EQ(kb.evictions, 40u) << "every block beyond the 64 evicted one of b's";
  EXPECT_EQ(g.hits, ka.hits + kb.hits);
  EXPECT_EQ(g.misses, ka.misses + kb.misses);
  EXPECT_EQ(g.evictions, ka.evictions + kb.evictions);
  EXPECT_EQ(g.bytes_from_disk, ka.bytes_from_disk + kb.bytes_from_disk);
}

TEST(CacheFlight, ReactorWakeQueueRunsWaitersOnTheReactorThread) {
  Reactor::Options ro;
  ro.name = "cache-test";
  ro.uring_entries = 0;
  auto reactor = std::move(*Reactor::create(ro));
  ASSERT_TRUE(reactor->start());
  auto c = make_cache();
  auto img = *c->open(fake_identity(1));
  auto q = CacheWakeQueue::on_reactor(*reactor);

  struct ReactorWaiter : CacheWaiter {
    ReactorWaiter(CacheWakeQueue* q, Reactor* r) : CacheWaiter(q), reactor(r) {}
    Reactor* reactor;
    std::atomic<int> calls{0};
    std::atomic<bool> on_reactor{false};
    std::atomic<uint32_t> length{0};
    void on_cache_fill(CacheBlock b, int err) noexcept override {
      on_reactor = reactor->in_reactor_thread();
      length = err == 0 ? b.length() : 0;
      calls.fetch_add(1);
    }
  } w(q.get(), reactor.get());

  auto fill = c->lookup(*img, 1, 4096, nullptr);
  ASSERT_EQ(fill.outcome, Outcome::kFill);
  BlockCache::Outcome joined{};
  reactor->call([&] { joined = c->lookup(*img, 1, 4096, &w).outcome; });
  ASSERT_EQ(joined, Outcome::kWait);
  c->complete(fill.block, 4096);  // from the test thread: the wake-up crosses threads
  ASSERT_TRUE(test::eventually([&] { return w.calls.load() == 1; }));
  EXPECT_TRUE(w.on_reactor.load());
  EXPECT_EQ(w.length.load(), 4096u);
  reactor->call([] {});
  EXPECT_EQ(w.calls.load(), 1);
  fill.block.reset();
  reactor->stop();
  EXPECT_EQ(c->gauges().free + c->gauges().small + c->gauges().main, c->blocks()) << "the waiter's pin was released";
}

}  // namespace
}  // namespace xenpath
