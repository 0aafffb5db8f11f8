// BlockCache eviction: S3-FIFO's scan resistance (measured against the
// cache's own plain-FIFO mode on the same trace, so the trace is shown to be
// one that defeats FIFO), ghost readmission, pinning against eviction, and
// the byte budget.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "cache/block_cache.h"
#include "tests/fixtures/cache_rig.h"

namespace xenpath {
namespace {

using test::check_pattern;
using test::fake_identity;
using test::touch;
using Outcome = BlockCache::Outcome;

std::unique_ptr<BlockCache> make_cache(uint64_t blocks, unsigned shards,
                                       BlockCache::Policy policy = BlockCache::Policy::kS3Fifo) {
  BlockCache::Options o;
  o.block_size = 4096;
  o.budget_bytes = blocks * o.block_size;
  o.shards = shards;
  o.policy = policy;
  o.populate = false;
  auto c = BlockCache::create(o);
  EXPECT_TRUE(c) << c.error();
  return std::move(*c);
}

struct ScanResult {
  uint64_t working_set = 0;
  uint64_t survivors = 0;  // working-set blocks still hits after the scan
};

// Guest A's boot set (40 % of the cache) is read twice; guest B then reads
// its whole disk once (10x the cache); then A reads its boot set again.
ScanResult boot_set_then_scan(BlockCache& c) {
  auto a = *c.open(fake_identity(1));
  auto b = *c.open(fake_identity(2));
  ScanResult r;
  r.working_set = c.blocks() * 4 / 10;
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t blk = 0; blk < r.working_set; ++blk) (void)touch(c, *a, blk * 7);
  }
  for (uint64_t blk = 0; blk < 10 * c.blocks(); ++blk) (void)touch(c, *b, blk);
  for (uint64_t blk = 0; blk < r.working_set; ++blk) {
    if (touch(c, *a, blk * 7) == Outcome::kHit) ++r.survivors;
  }
  EXPECT_EQ(c.check(), "");
  return r;
}

TEST(CachePolicy, BootSetSurvivesAFullDiskScanWhereFifoLosesIt) {
  auto fifo = make_cache(256, 1, BlockCache::Policy::kFifo);
  const ScanResult f = boot_set_then_scan(*fifo);
  EXPECT_EQ(f.survivors, 0u) << "the trace defeats plain FIFO";

  auto s3 = make_cache(256, 1);
  const ScanResult s = boot_set_then_scan(*s3);
  EXPECT_EQ(s.survivors, s.working_set) << "S3-FIFO keeps every block read twice";
  const CacheCounters c = s3->counters();
  EXPECT_GE(c.evictions, 10 * 256u - 256u) << "the scan did churn the cache";
}

TEST(CachePolicy, ScanResistanceHoldsAcrossShards) {
  // The default sharding (8 shards of 128 blocks at this size): each shard
  // gets its share of the boot set give or take the hash's spread, well
  // under its main FIFO's 90 %.
  auto s3 = make_cache(1024, 0);
  ASSERT_EQ(s3->shards(), 8u);
  const ScanResult s = boot_set_then_scan(*s3);
  EXPECT_EQ(s.survivors, s.working_set);
  auto fifo = make_cache(1024, 0, BlockCache::Policy::kFifo);
  EXPECT_EQ(boot_set_then_scan(*fifo).survivors, 0u);
}

TEST(CachePolicy, OneTouchBlocksLeaveThroughTheSmallFifoAndTheGhostReadmits) {
  auto c = make_cache(100, 1);  // small FIFO: 10 blocks, ghost: 90 keys
  auto img = *c->open(fake_identity(1));
  ASSERT_EQ(touch(*c, *img, 1000), Outcome::kFill);
  // 100 other one-touch blocks push 1000 out of small (into the ghost).
  for (uint64_t b = 0; b < 100; ++b) (void)touch(*c, *img, b);
  ASSERT_EQ(touch(*c, *img, 1000), Outcome::kFill) << "evicted after one touch";
  ASSERT_EQ(touch(*c, *img, 2000), Outcome::kFill) << "a key the ghost never saw";
  // 1000 came back through the ghost into main; 2000 went to small. Another
  // scan of one-touch blocks evicts only from small.
  for (uint64_t b = 200; b < 400; ++b) (void)touch(*c, *img, b);
  EXPECT_EQ(touch(*c, *img, 1000), Outcome::kHit) << "ghost hit admitted to main";
  EXPECT_EQ(touch(*c, *img, 2000), Outcome::kFill) << "a one-touch block does not stay";
  EXPECT_EQ(c->check(), "");
}

TEST(CachePolicy, MainFifoKeepsTheBlocksReadMostOften) {
  auto c = make_cache(100, 1);  // small FIFO 10 blocks, main 90, ghost 90 keys
  auto img = *c->open(fake_identity(1));
  // Blocks 0..89 read twice, then a scan: they move to main (access bits
  // cleared on the way, as S3-FIFO does), the scan churns small and leaves
  // its last 90 keys in the ghost.
  for (int pass = 0; pass < 2; ++pass) {
    for (uint64_t b = 0; b < 90; ++b) (void)touch(*c, *img, b);
  }
  for (uint64_t b = 2000; b < 2100; ++b) (void)touch(*c, *img, b);
  // The even blocks are read again and again.
  for (int pass = 0; pass < 3; ++pass) {
    for (uint64_t b = 0; b < 90; b += 2) ASSERT_EQ(touch(*c, *img, b), Outcome::kHit);
  }
  // 90 ghost keys come back: admitted straight to main, which must now shed
  // 80 blocks: the ones without accesses left go, the even ones stay.
  for (uint64_t b = 2000; b < 2090; ++b) ASSERT_EQ(touch(*c, *img, b), Outcome::kFill);
  uint64_t hot = 0;
  for (uint64_t b = 0; b < 90; b += 2) hot += touch(*c, *img, b) == Outcome::kHit;
  EXPECT_EQ(hot, 45u);
  uint64_t cold = 0;
  for (uint64_t b = 1; b < 90; b += 2) cold += touch(*c, *img, b) == Outcome::kHit;
  EXPECT_EQ(cold, 0u) << "the blocks read twice only were the ones shed";
  EXPECT_EQ(c->check(), "");
}

TEST(CachePolicy, PinnedBlocksAreNeverEvictedOrReused) {
  auto c = make_cache(64, 1);
  auto img = *c->open(fake_identity(1));
  ASSERT_EQ(touch(*c, *img, 5), Outcome::kFill);
  auto hit = c->lookup(*img, 5, 4096, nullptr);
  ASSERT_EQ(hit.outcome, Outcome::kHit);
  uint8_t* const data = hit.block.data();
  // 20x the cache in one-touch blocks: block 5 has one access, so unpinned
  // it would be promoted and eventually cycled out; pinned it must stay put.
  for (uint64_t b = 100; b < 100 + 20 * 64; ++b) {
    auto r = c->lookup(*img, b, 4096, nullptr);
    ASSERT_EQ(r.outcome, Outcome::kFill);
    ASSERT_NE(r.block.data(), data) << "a pinned block's memory was handed to a fill";
    test::fill_pattern(r.block.data(), 4096, img->id(), b);
    c->complete(r.block, 4096);
  }
  EXPECT_TRUE(check_pattern(hit.block.data(), hit.block.length(), img->id(), 5));
  EXPECT_EQ(c->check(), "");
  hit.block.reset();

  // Every block pinned: the next miss is a bypass, not an eviction.
  std::vector<CacheBlock> pins;
  for (uint64_t b = 10000; pins.size() < c->blocks(); ++b) {
    auto r = c->lookup(*img, b, 4096, nullptr);
    if (r.outcome == Outcome::kFill) c->complete(r.block, 4096);
    ASSERT_TRUE(r.block);
    pins.push_back(std::move(r.block));
  }
  const uint64_t evictions = c->counters().evictions;
  auto r = c->lookup(*img, 999999, 4096, nullptr);
  EXPECT_EQ(r.outcome, Outcome::kBypass);
  EXPECT_FALSE(r.block);
  EXPECT_EQ(c->counters().evictions, evictions);
  EXPECT_EQ(c->counters().bypasses, 1u);
  pins.pop_back();
  EXPECT_EQ(c->lookup(*img, 999999, 4096, nullptr).outcome, Outcome::kFill) << "one unpinned block is enough";
  pins.clear();
  EXPECT_EQ(c->check(), "");
}

TEST(CachePolicy, BudgetIsNeverExceeded) {
  for (uint32_t bs : {4096u, 65536u}) {
    BlockCache::Options o;
    o.block_size = bs;
    o.budget_bytes = 100 * bs + bs / 2;  // not a whole number of blocks
    o.shards = 4;
    o.populate = false;
    auto cr = BlockCache::create(o);
    ASSERT_TRUE(cr);
    BlockCache& c = **cr;
    EXPECT_LE(c.blocks() * bs, o.budget_bytes);
    EXPECT_EQ(c.blocks(), 100u) << "whole blocks, a multiple of the shards";
    uint64_t registered = 0;
    for (const iovec& v : c.fixed_buffers()) {
      registered += v.iov_len;
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.iov_base) % 4096, 0u) << "page aligned";
    }
    EXPECT_EQ(registered, c.blocks() * bs);
    const auto arena = c.fixed_buffers();
    const auto* lo = static_cast<const uint8_t*>(arena.front().iov_base);
    const uint8_t* hi = lo + registered;

    // Every live handle has its own block inside the arena, however many
    // keys pass through.
    auto img = *c.open(fake_identity(1));
    std::vector<CacheBlock> held;
    std::set<const uint8_t*> seen;
    for (uint64_t b = 0; b < 5000; ++b) {
      auto r = c.lookup(img.operator*(), b % 700, bs, nullptr);
      if (r.outcome == Outcome::kFill) c.complete(r.block, static_cast<int>(bs));
      if (r.block) {
        ASSERT_GE(r.block.data(), lo);
        ASSERT_LE(r.block.data() + bs, hi);
        ASSERT_EQ(reinterpret_cast<uintptr_t>(r.block.data()) % 4096, 0u);
        held.push_back(std::move(r.block));
      }
      if (held.size() > 40 || b % 97 == 0) {
        seen.clear();
        for (auto& h : held) ASSERT_TRUE(seen.insert(h.data()).second) << "two live handles share memory";
        held.erase(held.begin(), held.begin() + static_cast<long>(held.size() / 2));
      }
      const CacheGauges g = c.gauges();
      ASSERT_EQ(g.free + g.small + g.main + g.filling + g.doomed, c.blocks());
    }
    held.clear();
    EXPECT_EQ(c.check(), "");
  }
}

TEST(CachePolicy, OptionsAreChecked) {
  BlockCache::Options o;
  o.populate = false;
  o.budget_bytes = 1 << 20;
  o.block_size = 3000;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL) << "not a power of two";
  o.block_size = 4 << 20;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL) << "over 2 MiB";
  o.block_size = 64 << 10;
  o.shards = 3;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL) << "shards not a power of two";
  o.shards = 32;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL) << "fewer blocks (16) than shards";
  o.shards = 0;
  o.budget_bytes = 1000;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL) << "no whole block";
  o.budget_bytes = 1 << 30;
  o.small_percent = 0;
  EXPECT_EQ(BlockCache::create(o).error(), EINVAL);
  o.small_percent = 10;
  auto c = BlockCache::create(o);
  ASSERT_TRUE(c);
  EXPECT_EQ((*c)->blocks(), 16384u);
  EXPECT_EQ((*c)->shards(), 64u) << "the default sharding at 1 GiB / 64 KiB";
  EXPECT_EQ((*c)->fixed_buffers().size(), 1u);
  o.budget_bytes = 8 << 20;
  auto small = BlockCache::create(o);
  ASSERT_TRUE(small);
  EXPECT_EQ((*small)->shards(), 1u) << "128 blocks make one shard";
}

}  // namespace
}  // namespace xenpath
