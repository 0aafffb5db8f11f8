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

// A 4 KiB piece of a resident block copied into a guest page: through a
// lookup (<true>: pin, copy, unpin) or straight out of the arena (<false>:
// the floor, the copy alone).
template <bool kThroughCache>
void BM_HitCopy4K(benchmark::State& state) {
  Shared& s = shared();
  std::vector<uint8_t> page(4096);
  const auto* base = static_cast<const uint8_t*>(s.cache->fixed_buffers().front().iov_base);
  uint64_t b = static_cast<uint64_t>(state.thread_index()) * 997;
  for (auto _ : state) {
    CacheBlock held;
    const uint8_t* src = base + (b % kHotBlocks) * s.cache->block_size();
    if constexpr (kThroughCache) {
      held = std::move(s.cache->lookup(*s.image, b % kHotBlocks, 4096, nullptr).block);
      src = held.data();
    }
    std::memcpy(page.data(), src + (b % 16) * 4096, 4096);
    benchmark::ClobberMemory();
    b += 13;
  }
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK_TEMPLATE(BM_HitCopy4K, true)->Threads(1)->Threads(2)->UseRealTime();
BENCHMARK_TEMPLATE(BM_HitCopy4K, false)->Threads(1)->Threads(2)->UseRealTime();

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
