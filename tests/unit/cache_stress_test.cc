// BlockCache under several threads at once: skewed lookups over two images
// on a small cache (constant eviction), fills completed at once or later,
// some failing, pins held across other threads' work, drops of an image and
// of everything from one thread. Every byte read through the cache is
// checked against the pattern of its key, every waiter must be woken exactly
// once on its own thread, and the structure and counters must add up at the
// end. Bounded by time (about 0.6 s), not by a result.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <deque>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "cache/block_cache.h"
#include "tests/fixtures/cache_rig.h"

namespace xenpath {
namespace {

using test::check_pattern;
using test::fill_pattern;
using Outcome = BlockCache::Outcome;

constexpr int kThreads = 4;
constexpr int kWaitersPerThread = 8;

struct StressWaiter : CacheWaiter {
  StressWaiter(CacheWakeQueue* q) : CacheWaiter(q) {}
  IdentityId id = 0;
  uint64_t block = 0;
  bool busy = false;
  std::thread::id owner;
  std::atomic<uint64_t>* bad = nullptr;
  uint64_t woken = 0;
  uint64_t errors = 0;
  void on_cache_fill(CacheBlock b, int err) noexcept override {
    if (!busy || std::this_thread::get_id() != owner) bad->fetch_add(1);
    busy = false;
    ++woken;
    if (err != 0) {
      ++errors;
      if (b) bad->fetch_add(1);
      return;
    }
    if (!b || !check_pattern(b.data(), b.length(), id, block)) bad->fetch_add(1);
  }
};

struct Totals {
  std::atomic<uint64_t> lookups{0}, hits{0}, fills{0}, waits{0}, bypasses{0}, woken{0}, bad{0};
};

void worker(BlockCache& c, const std::vector<std::shared_ptr<CacheImage>>& images, int t, Totals& tot,
            std::atomic<int>& phase, std::atomic<int>& filling_done) {
  std::atomic<int> kicks{0};
  CacheWakeQueue q([&kicks] { kicks.fetch_add(1); });
  std::vector<std::unique_ptr<StressWaiter>> waiters;
  for (int i = 0; i < kWaitersPerThread; ++i) {
    waiters.push_back(std::make_unique<StressWaiter>(&q));
    waiters.back()->owner = std::this_thread::get_id();
    waiters.back()->bad = &tot.bad;
  }
  struct Pending {
    CacheBlock block;
    IdentityId id;
    uint64_t blk;
  };
  std::deque<Pending> pending;
  std::deque<CacheBlock> pins;
  std::mt19937_64 rng(1234 + t);
  uint64_t lookups = 0, hits = 0, fills = 0, waits = 0, bypasses = 0;
  auto finish_one = [&] {
    Pending p = std::move(pending.front());
    pending.pop_front();
    if (rng() % 20 == 0) {
      c.complete(p.block, -EIO);
      return;
    }
    fill_pattern(p.block.data(), p.block.capacity(), p.id, p.blk);
    c.complete(p.block, static_cast<int>(p.block.capacity()));
    if (p.block && !check_pattern(p.block.data(), p.block.length(), p.id, p.blk)) tot.bad.fetch_add(1);
  };
  while (phase.load(std::memory_order_relaxed) == 0) {
    CacheImage& img = *images[rng() % images.size()];
    // 80 % of lookups over a hot fifth of the blocks.
    const uint64_t blk = rng() % 5 != 0 ? rng() % 100 : rng() % 2000;
    StressWaiter* w = nullptr;
    for (auto& cand : waiters) {
      if (!cand->busy) {
        w = cand.get();
        break;
      }
    }
    auto r = c.lookup(img, blk, 4096, w);
    ++lookups;
    switch (r.outcome) {
      case Outcome::kHit:
        ++hits;
        if (!check_pattern(r.block.data(), r.block.length(), img.id(), blk)) tot.bad.fetch_add(1);
        if (rng() % 4 == 0) pins.push_back(std::move(r.block));
        break;
      case Outcome::kFill:
        ++fills;
        if (rng() % 2 == 0) {
          pending.push_back({std::move(r.block), img.id(), blk});
        } else {
          pending.push_front({std::move(r.block), img.id(), blk});
          finish_one();
        }
        break;
      case Outcome::kWait:
        ++waits;
        w->busy = true;
        w->id = img.id();
        w->block = blk;
        break;
      case Outcome::kBypass:
        ++bypasses;
        break;
    }
    while (pending.size() > 6) finish_one();
    while (pins.size() > 5) pins.pop_front();
    if (rng() % 8 == 0) (void)q.drain();
    if (t == 0 && rng() % 4000 == 0) (void)c.drop(images[rng() % images.size()]->id());
    if (t == 0 && rng() % 20000 == 0) (void)c.drop_all();
  }
  // Finish every fill this thread owns, then wait until every other
  // thread's too, draining meanwhile; then every waiter must have been woken.
  while (!pending.empty()) finish_one();
  pins.clear();
  filling_done.fetch_add(1);
  while (filling_done.load() < kThreads) {
    (void)q.drain();
    std::this_thread::yield();
  }
  (void)q.drain();
  for (auto& w : waiters) {
    if (w->busy) tot.bad.fetch_add(1);
    tot.woken.fetch_add(w->woken);
  }
  tot.lookups += lookups;
  tot.hits += hits;
  tot.fills += fills;
  tot.waits += waits;
  tot.bypasses += bypasses;
}

TEST(CacheStress, ThreadsShareTheCacheWithoutWrongBytesOrLostWakeups) {
  BlockCache::Options o;
  o.block_size = 4096;
  o.budget_bytes = 256 * 4096;  // a small cache: constant eviction
  o.shards = 4;
  o.populate = false;
  auto c = std::move(*BlockCache::create(o));
  std::vector<std::shared_ptr<CacheImage>> images{*c->open(test::fake_identity(1)), *c->open(test::fake_identity(2))};
  Totals tot;
  std::atomic<int> phase{0};
  std::atomic<int> filling_done{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back(worker, std::ref(*c), std::cref(images), t, std::ref(tot), std::ref(phase),
                         std::ref(filling_done));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  phase = 1;
  for (auto& th : threads) th.join();

  EXPECT_EQ(tot.bad.load(), 0u) << "wrong bytes, a wake-up on the wrong thread, or a waiter never woken";
  EXPECT_EQ(tot.woken.load(), tot.waits.load()) << "every join woken exactly once";
  EXPECT_EQ(c->check(), "");
  const CacheGauges g = c->gauges();
  EXPECT_EQ(g.filling, 0u);
  EXPECT_EQ(g.doomed, 0u);
  EXPECT_EQ(g.free + g.small + g.main, c->blocks()) << "nothing left pinned";
  const CacheCounters k = c->counters();
  EXPECT_EQ(k.hits, tot.hits.load());
  EXPECT_EQ(k.misses, tot.fills.load());
  EXPECT_EQ(k.joins, tot.waits.load());
  EXPECT_EQ(k.bypasses, tot.bypasses.load());
  EXPECT_EQ(k.hits + k.misses + k.joins + k.bypasses, tot.lookups.load());
  EXPECT_LE(k.fills + k.fill_errors, k.misses);
  // The run did exercise what it is about.
  EXPECT_GT(tot.lookups.load(), 10000u);
  EXPECT_GT(k.joins, 0u);
  EXPECT_GT(k.evictions, 0u);
  EXPECT_GT(k.fill_errors, 0u);
  const CacheCounters a = images[0]->counters();
  const CacheCounters b = images[1]->counters();
  EXPECT_EQ(a.hits + b.hits, k.hits);
  EXPECT_EQ(a.joins + b.joins, k.joins);
}

}  // namespace
}  // namespace xenpath
