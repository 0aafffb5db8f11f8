// The shared read cache's datapath costs, each next to its floor:
// - a hit (lookup, pin, unpin) with 1 and 2 threads over one cache, and a
//   hit plus the 4 KiB copy into the guest's page, against the bare copy
//   (the cache's whole point is that a hit costs about a copy);
// - a miss (lookup, reserve a block by evicting one, publish, unpin) with 1
//   and 2 threads: the cache's own cost on top of the disk read it stands
//   for (tens of microseconds on NVMe).
// With 2 threads the shards make the threads meet on one lock only when
// they touch the same shard at once; the ratio of the per-item times at 1
// and 2 threads tells whether they scale.
#include <benchmark/benchmark.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "cache/block_cache.h"
#include "tests/fixtures/cache_rig.h"

namespace xenpath {
namespace {

constexpr uint64_t kHotBlocks = 4096;  // 256 MiB of 64 KiB blocks, all resident

struct Shared {
  std::unique_ptr<BlockCache> cache;
  std::shared_ptr<CacheImage> image;
};

// One 512 MiB cache of 64 KiB blocks (the defaults but the budget) for every
// benchmark, its first kHotBlocks filled; built once, by whichever thread
// gets here first.
Shared& shared() {
  static Shared s = [] {
    Shared out;
    BlockCache::Options o;
    o.budget_bytes = uint64_t{512} << 20;
    out.cache = std::move(*BlockCache::create(o));
    out.image = *out.cache->open(test::fake_identity(1));
    for (uint64_t b = 0; b < kHotBlocks; ++b) (void)test::touch(*out.cache, *out.image, b);
    return out;
  }();
  return s;
}

void BM_CacheHit(benchmark::State& state) {
  Shared& s = shared();
  uint64_t b = static_cast<uint64_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    auto r = s.cache->lookup(*s.image, b % kHotBlocks, 4096, nullptr);
    benchmark::DoNotOptimize(r.block.data());
    b += 13;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_CacheHit)->Threads(1)->Threads(2)->UseRealTime();

void BM_CacheHitCopy4K(benchmark::State& state) {
  Shared& s = shared();
  std::vector<uint8_t> page(4096);
  uint64_t b = static_cast<uint64_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    auto r = s.cache->lookup(*s.image, b % kHotBlocks, 4096, nullptr);
    std::memcpy(page.data(), r.block.data() + (b % 16) * 4096, 4096);
    benchmark::ClobberMemory();
    b += 13;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_CacheHitCopy4K)->Threads(1)->Threads(2)->UseRealTime();

// The floor: the same copy out of the same arena, no lookup.
void BM_Copy4KFloor(benchmark::State& state) {
  Shared& s = shared();
  std::vector<uint8_t> page(4096);
  const auto arena = s.cache->fixed_buffers();
  const auto* base = static_cast<const uint8_t*>(arena.front().iov_base);
  uint64_t b = static_cast<uint64_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    std::memcpy(page.data(), base + (b % kHotBlocks) * s.cache->block_size() + (b % 16) * 4096, 4096);
    benchmark::ClobberMemory();
    b += 13;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(BM_Copy4KFloor)->Threads(1)->Threads(2)->UseRealTime();

// Blocks never seen before: every lookup is a miss that evicts (once the
// cache is full) and a publish of the block without touching its bytes.
void BM_CacheMissFill(benchmark::State& state) {
  Shared& s = shared();
  uint64_t b = (uint64_t{1} << 40) * static_cast<uint64_t>(state.thread_index() + 1);
  static std::atomic<uint64_t> round{0};
  b += round.fetch_add(1) << 32;  // fresh keys on every run of the benchmark
  for (auto _ : state) {
    auto r = s.cache->lookup(*s.image, b++, 4096, nullptr);
    if (r.outcome == BlockCache::Outcome::kFill) s.cache->complete(r.block, static_cast<int>(r.block.capacity()));
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
  if (state.thread_index() == 0) {
    state.counters["evictions"] = static_cast<double>(s.cache->counters().evictions);
  }
}
BENCHMARK(BM_CacheMissFill)->Threads(1)->Threads(2)->UseRealTime();

}  // namespace
}  // namespace xenpath
