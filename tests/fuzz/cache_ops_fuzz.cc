// Fuzz target: a random sequence of cache operations (lookups with and
// without waiters, fills completed, failed, short or abandoned, pins held
// and released, wake-ups drained, images dropped, replaced and closed,
// everything dropped) on a small cache, one thread. After every operation
// the cache's structure must check out (BlockCache::check), every byte read
// must be the pattern of its key, every waiter is woken exactly once, and at
// the end, with every handle released, every block is free or queued.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "cache/block_cache.h"
#include "tests/fixtures/cache_rig.h"

using namespace xenpath;

namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cache_ops_fuzz: %s\n", what);
  std::abort();
}

class FuzzWaiter : public CacheWaiter {
 public:
  explicit FuzzWaiter(CacheWakeQueue* q) : CacheWaiter(q) {}
  bool busy = false;
  IdentityId id = 0;
  uint64_t block = 0;
  std::vector<CacheBlock>* keep = nullptr;

 protected:
  void on_cache_fill(CacheBlock b, int err) noexcept override {
    if (!busy) fail("a waiter woken twice or unasked");
    busy = false;
    if (err == 0) {
      if (!b || !test::check_pattern(b.data(), b.length(), id, block)) fail("a waiter got wrong bytes");
      keep->push_back(std::move(b));
    } else if (b) {
      fail("an error came with a block");
    }
  }
};

struct Pending {
  CacheBlock block;
  IdentityId id;
  uint64_t blk;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  BlockCache::Options o;
  o.block_size = 4096;
  o.budget_bytes = (8 + data[0] % 57) * uint64_t{4096};
  o.shards = (data[1] & 1) != 0 ? 2 : 1;
  o.small_percent = 5 + data[1] % 40;
  o.policy = (data[1] & 0x80) != 0 ? BlockCache::Policy::kFifo : BlockCache::Policy::kS3Fifo;
  o.populate = false;
  auto cr = BlockCache::create(o);
  if (!cr) fail("create");
  BlockCache& c = **cr;

  CacheWakeQueue q(nullptr);
  std::vector<CacheBlock> pins;
  std::vector<Pending> pending;
  std::vector<std::unique_ptr<FuzzWaiter>> waiters;
  for (int i = 0; i < 6; ++i) {
    waiters.push_back(std::make_unique<FuzzWaiter>(&q));
    waiters.back()->keep = &pins;
  }
  std::vector<std::shared_ptr<CacheImage>> images;
  int64_t mtime = 1;
  for (uint64_t ino = 1; ino <= 3; ++ino) images.push_back(*c.open(test::fake_identity(ino, mtime)));

  // At most 160 operations: enough to fill, churn and drop a 64-block cache
  // a few times; the full structure check runs every 4th (the replay in CI
  // runs 20000 inputs under ASan), the cheap counts after every one.
  const size_t end = size < 2 + 2 * 160 ? size : 2 + 2 * 160;
  for (size_t pos = 2; pos + 1 < end; pos += 2) {
    const uint8_t op = data[pos];
    const uint8_t arg = data[pos + 1];
    CacheImage& img = *images[arg % images.size()];
    switch (op % 10) {
      case 0:
      case 1:
      case 2: {  // lookup
        const uint64_t blk = arg / 3 % 48;
        FuzzWaiter* w = nullptr;
        if ((op & 0x10) != 0) {
          for (auto& cand : waiters) {
            if (!cand->busy) {
              w = cand.get();
              break;
            }
          }
        }
        auto r = c.lookup(img, blk, 4096, w);
        switch (r.outcome) {
          case BlockCache::Outcome::kHit:
            if (!r.block || r.block.filling()) fail("hit without a pinned block");
            if (!test::check_pattern(r.block.data(), r.block.length(), img.id(), blk)) fail("hit with wrong bytes");
            if ((op & 0x20) != 0) pins.push_back(std::move(r.block));
            break;
          case BlockCache::Outcome::kFill:
            if (!r.block.filling()) fail("fill without a reserved block");
            pending.push_back({std::move(r.block), img.id(), blk});
            break;
          case BlockCache::Outcome::kWait:
            if (w == nullptr || r.block) fail("wait without a waiter");
            w->busy = true;
            w->id = img.id();
            w->block = blk;
            break;
          case BlockCache::Outcome::kBypass:
            if (r.block) fail("bypass with a block");
            break;
        }
        break;
      }
      case 3:
      case 4: {  // complete a fill: whole, short, failed or abandoned
        if (pending.empty()) break;
        Pending p = std::move(pending[arg % pending.size()]);
        pending.erase(pending.begin() + static_cast<long>(arg % (pending.size())));
        test::fill_pattern(p.block.data(), p.block.capacity(), p.id, p.blk);
        switch (op >> 6) {
          case 0:
          case 1:
            c.complete(p.block, 4096);
            break;
          case 2:
            c.complete(p.block, (op & 0x20) != 0 ? 512 : -EIO);
            break;
          default:
            p.block.reset();
            break;
        }
        if ((op & 0x10) != 0 && p.block) pins.push_back(std::move(p.block));
        break;
      }
      case 5:  // release a pin
        if (!pins.empty()) pins.erase(pins.begin() + static_cast<long>(arg % pins.size()));
        break;
      case 6:
        (void)q.drain();
        break;
      case 7:
        (void)c.drop(img.id());
        break;
      case 8:
        if ((arg & 0x0f) == 0) (void)c.drop_all();
        break;
      case 9: {  // the file behind an image changes: reopen it with new attributes
        const size_t k = arg % images.size();
        ImageIdentity now = images[k]->identity();
        now.mtime_ns = ++mtime;
        if ((op & 0x10) != 0) {
          if (!c.revalidate(*images[k], now)) fail("revalidate missed a change");
        }
        auto fresh = c.open(now);
        if (!fresh) fail("reopen");
        if (!images[k]->retired()) fail("a changed file's image was not retired");
        images[k] = *fresh;
        break;
      }
    }
    const std::string err = pos % 8 == 0 ? c.check() : std::string();
    if (!err.empty()) {
      std::fprintf(stderr, "cache_ops_fuzz: %s\n", err.c_str());
      std::abort();
    }
    const CacheGauges g = c.gauges();
    if (g.free + g.small + g.main + g.filling + g.doomed != c.blocks()) fail("blocks lost");
    // Fills in flight are filling, or doomed when their image was dropped.
    if (pending.size() < g.filling || pending.size() > g.filling + g.doomed) fail("filling count");
  }
  // Wind down: every fill completed, every waiter woken, every pin released.
  for (auto& p : pending) {
    test::fill_pattern(p.block.data(), p.block.capacity(), p.id, p.blk);
    c.complete(p.block, 4096);
  }
  pending.clear();
  (void)q.drain();
  for (auto& w : waiters) {
    if (w->busy) fail("a waiter was never woken");
  }
  pins.clear();
  const CacheGauges g = c.gauges();
  if (g.filling != 0 || g.doomed != 0 || g.free + g.small + g.main != c.blocks()) fail("blocks held at the end");
  const CacheCounters k = c.counters();
  if (k.fills + k.fill_errors > k.misses) fail("more fills than misses");
  if (!c.check().empty()) fail("final check");
  return 0;
}
