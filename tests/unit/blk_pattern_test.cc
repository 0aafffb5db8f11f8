// The verify pattern of the load generator and its latency histogram.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "sim/blk/sim_blkload.h"

namespace xenpath::sim {
namespace {

constexpr size_t kBlock = 8192;
constexpr uint64_t kOffset = 1ull << 30;

std::vector<std::byte> block(uint32_t vbd, uint64_t offset, uint32_t gen) {
  std::vector<std::byte> b(kBlock);
  blk_pattern_fill(b.data(), b.size(), vbd, offset, gen);
  return b;
}

TEST(BlkPattern, IntactBlockPasses) {
  const auto b = block(51712, kOffset, 7);
  EXPECT_EQ(blk_pattern_check(b.data(), b.size(), 51712, kOffset, 7), kBlock);
}

TEST(BlkPattern, EveryCorruptedByteIsFound) {
  const auto good = block(3, kOffset, 9);
  for (size_t at : {size_t{0}, size_t{7}, size_t{511}, size_t{512}, size_t{4000}, kBlock - 1}) {
    auto b = good;
    b[at] ^= std::byte{0x01};
    EXPECT_EQ(blk_pattern_check(b.data(), b.size(), 3, kOffset, 9), at) << "flipped byte " << at;
  }
}

TEST(BlkPattern, StaleMisplacedAndForeignDataAreDetected) {
  const auto b = block(3, kOffset, 9);
  // An older generation (a lost write), the right data at the wrong place
  // (a misdirected write), another disk's data.
  EXPECT_LT(blk_pattern_check(b.data(), b.size(), 3, kOffset, 8), kBlock);
  EXPECT_LT(blk_pattern_check(b.data(), b.size(), 3, kOffset + kBlock, 9), kBlock);
  EXPECT_LT(blk_pattern_check(b.data(), b.size(), 4, kOffset, 9), kBlock);
  // A torn write: the first half new, the second half old.
  auto torn = block(3, kOffset, 10);
  std::memcpy(torn.data() + kBlock / 2, b.data() + kBlock / 2, kBlock / 2);
  // The old half's first sector header names the same vbd and LBA: the
  // generation word (bytes 16..23) is the first difference.
  EXPECT_EQ(blk_pattern_check(torn.data(), torn.size(), 3, kOffset, 10), kBlock / 2 + 16);
}

TEST(BlkPattern, EverySectorDiffers) {
  // Each sector carries its own LBA: two sectors of a block never match.
  const auto b = block(1, 0, 1);
  for (size_t s = 1; s < kBlock / 512; ++s) {
    EXPECT_NE(std::memcmp(b.data(), b.data() + s * 512, 512), 0) << s;
  }
}

TEST(BlkPattern, GenerationZeroIsZeros) {
  std::vector<std::byte> z(kBlock);
  EXPECT_EQ(blk_pattern_check(z.data(), z.size(), 1, 0, 0), kBlock);
  EXPECT_EQ(blk_pattern_check(z.data(), z.size(), 1, 0, 1), 0u);
  const auto b = block(1, 0, 1);
  EXPECT_EQ(blk_pattern_check(b.data(), b.size(), 1, 0, 0), 0u);
  z[100] = std::byte{1};
  EXPECT_EQ(blk_pattern_check(z.data(), z.size(), 1, 0, 0), 100u);
}

TEST(LatencyHistogram, BucketsCoverEveryValueInOrder) {
  std::mt19937_64 rng(5);
  for (int i = 0; i < 20000; ++i) {
    const uint64_t v = rng() >> (rng() % 64);
    const unsigned b = LatencyHistogram::bucket_of(v);
    ASSERT_LT(b, LatencyHistogram::kBuckets);
    ASSERT_LE(LatencyHistogram::bucket_low(b), v) << v;
    if (b + 1 < LatencyHistogram::kBuckets) {
      ASSERT_LT(v, LatencyHistogram::bucket_low(b + 1)) << v;
    }
  }
  for (uint64_t v = 0; v < 4096; ++v) {
    ASSERT_LE(LatencyHistogram::bucket_low(LatencyHistogram::bucket_of(v)), v);
  }
}

TEST(LatencyHistogram, PercentilesWithinABucket) {
  LatencyHistogram h;
  EXPECT_EQ(h.percentile_ns(0.5), 0u);
  // 1..10000 ns, once each: p50 = 5000, p99 = 9900.
  for (uint64_t v = 1; v <= 10000; ++v) h.record(v);
  EXPECT_EQ(h.count(), 10000u);
  EXPECT_EQ(h.max_ns(), 10000u);
  EXPECT_NEAR(static_cast<double>(h.percentile_ns(0.5)), 5000.0, 5000.0 * 0.125);
  EXPECT_NEAR(static_cast<double>(h.percentile_ns(0.99)), 9900.0, 9900.0 * 0.125);
  EXPECT_EQ(h.percentile_ns(1.0), 10000u);
  // One outlier moves the max, not the median.
  h.record(5'000'000);
  EXPECT_EQ(h.max_ns(), 5'000'000u);
  EXPECT_LT(h.percentile_ns(0.5), 6000u);
}

TEST(LatencyHistogram, AddMergesCountsAndMax) {
  LatencyHistogram a, b, sum;
  for (uint64_t v = 1; v <= 1000; ++v) a.record(v * 1000);      // 1..1000 us
  for (uint64_t v = 1; v <= 1000; ++v) b.record(v * 1000 + 7);  // the same, shifted
  b.record(9'000'000);
  sum.add(a);
  sum.add(b);
  EXPECT_EQ(sum.count(), 2001u);
  EXPECT_EQ(sum.max_ns(), 9'000'000u);
  EXPECT_NEAR(static_cast<double>(sum.percentile_ns(0.5)), 500'000.0, 500'000.0 * 0.125);
}

}  // namespace
}  // namespace xenpath::sim
