// Per-VBD QoS token buckets (blkback/blk_qos.h), with an explicit clock.
#include "blkback/blk_qos.h"

#include <gtest/gtest.h>

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using Clock = TokenBucket::Clock;

const Clock::time_point t0 = Clock::time_point{} + 1000s;

// Requests of `cost` taken whenever the bucket allows, polled every `step`
// for `span`: how many started.
uint64_t drive(TokenBucket& b, double cost, Clock::time_point from, std::chrono::nanoseconds span,
               std::chrono::nanoseconds step) {
  uint64_t n = 0;
  for (auto t = from; t < from + span; t += step) {
    b.refill(t);
    while (b.ready()) {
      b.charge(cost);
      ++n;
    }
  }
  return n;
}

TEST(BlkQos, UnlimitedAlwaysReady) {
  TokenBucket b;
  EXPECT_TRUE(b.unlimited());
  b.configure(0, 100, t0);
  for (int i = 0; i < 1000; ++i) b.charge(1e9);
  EXPECT_TRUE(b.ready());
  EXPECT_EQ(b.tokens(), 0);
}

TEST(BlkQos, StartsFullAndRefillsAtTheRateUpToTheBurst) {
  TokenBucket b;
  b.configure(1000, 100, t0);  // 1000/s, burst 100
  EXPECT_EQ(b.tokens(), 100);
  b.charge(100);
  EXPECT_FALSE(b.ready());  // exactly empty: no credit
  b.refill(t0 + 10ms);      // 10 tokens
  EXPECT_NEAR(b.tokens(), 10, 1e-9);
  EXPECT_TRUE(b.ready());
  b.refill(t0 + 10s);  // far more than the burst
  EXPECT_EQ(b.tokens(), 100);
  b.refill(t0 + 5s);  // time going back is ignored
  EXPECT_EQ(b.tokens(), 100);
}

TEST(BlkQos, LongRunRateIsTheLimitWhateverTheBurst) {
  // Down to a burst of one step's credit: 4 ms steps (a coarse clock's
  // tick) at 2000/s are 8 tokens. 10 s at 2000/s, plus the burst.
  for (double burst : {8.0, 20.0, 200.0}) {
    TokenBucket b;
    b.configure(2000, burst, t0);
    const uint64_t n = drive(b, 1, t0, 10s, 4ms);
    EXPECT_NEAR(static_cast<double>(n), 20000 + burst, 10) << "burst " << burst;
  }
  // A burst below that loses what a step brings beyond it: why VbdQos
  // floors the burst at kQosMinBurstMs.
  TokenBucket small;
  small.configure(2000, 1, t0);
  EXPECT_LT(drive(small, 1, t0, 10s, 4ms), 5000u);
}

TEST(BlkQos, RequestLargerThanTheBurstPassesAndItsDebtDelaysTheNext) {
  TokenBucket b;
  b.configure(1 << 20, 128 << 10, t0);  // 1 MiB/s, burst 128 KiB
  ASSERT_TRUE(b.ready());
  b.charge(4 << 20);  // a 4 MiB request: more than the burst, still goes
  EXPECT_FALSE(b.ready());
  EXPECT_NEAR(b.tokens(), -(4 << 20) + (128 << 10), 1e-6);
  // The debt is repaid at the rate: ready again once it is positive.
  b.refill(t0 + 3875ms - 1ms);
  EXPECT_FALSE(b.ready());
  b.refill(t0 + 3875ms + 1ms);
  EXPECT_TRUE(b.ready());
  // Never starves: a stream of 4 MiB requests still gets 1 MiB/s.
  TokenBucket big;
  big.configure(1 << 20, 128 << 10, t0);
  const uint64_t n = drive(big, 4 << 20, t0, 40s, 4ms);
  EXPECT_NEAR(static_cast<double>(n), 10, 1);
}

TEST(BlkQos, ReadyAtIsWhenTheCreditIsThere) {
  TokenBucket b;
  b.configure(1000, 50, t0);
  EXPECT_EQ(b.ready_at(10), t0);  // already there
  b.charge(60);                   // -10
  EXPECT_EQ(b.ready_at(5), t0 + 15ms);
  EXPECT_EQ(b.ready_at(500), t0 + 60ms);  // capped at the burst
  b.refill(b.ready_at(5));
  EXPECT_TRUE(b.ready());
  EXPECT_NEAR(b.tokens(), 5, 1e-6);
}

TEST(BlkQos, RateChangeMidwayKeepsCreditAndDebt) {
  TokenBucket b;
  b.configure(100, 10, t0);
  b.charge(30);  // -20
  // Half a second at the old rate first (+50, capped at 10), then the new one.
  b.configure(1000, 100, t0 + 500ms);
  EXPECT_NEAR(b.tokens(), 10, 1e-9);
  b.charge(110);  // -100
  b.configure(10, 1, t0 + 500ms);
  EXPECT_NEAR(b.tokens(), -100, 1e-9);  // the debt stays (capped only from above)
  EXPECT_EQ(b.ready_at(0.5), t0 + 500ms + 10050ms);
  // To unlimited and back: starts full again.
  b.configure(0, 0, t0 + 1s);
  EXPECT_TRUE(b.ready());
  b.configure(50, 5, t0 + 2s);
  EXPECT_EQ(b.tokens(), 5);
  // Rate changed from 2000/s to 500/s halfway through 10 s.
  TokenBucket c;
  c.configure(2000, 10, t0);
  uint64_t n = drive(c, 1, t0, 5s, 4ms);
  c.configure(500, 10, t0 + 5s);
  n += drive(c, 1, t0 + 5s, 5s, 4ms);
  EXPECT_NEAR(static_cast<double>(n), 10000 + 2500 + 10, 5);
}

TEST(BlkQos, CostOfEachOperation) {
  BlkRequest r;
  r.op = BLKIF_OP_READ;
  r.nr_segments = 2;
  r.seg[0] = {.gref = 1, .first_sect = 0, .last_sect = 7};
  r.seg[1] = {.gref = 2, .first_sect = 2, .last_sect = 3};
  QosCost c = qos_cost(r, 512, 256);
  EXPECT_EQ(c.dir, QosDir::kRead);
  EXPECT_EQ(c.bytes, 4096u + 1024u);
  r.op = BLKIF_OP_WRITE;
  c = qos_cost(r, 512, 256);
  EXPECT_EQ(c.dir, QosDir::kWrite);
  EXPECT_EQ(c.bytes, 5120u);
  r.seg[1].last_sect = 9;  // invalid: refused later, not charged here
  EXPECT_EQ(qos_cost(r, 512, 256).bytes, 4096u);
  // A flush with data is a write of its data; without, IOPS only.
  r.op = BLKIF_OP_FLUSH_DISKCACHE;
  EXPECT_EQ(qos_cost(r, 512, 256).bytes, 4096u);
  r.nr_segments = 0;
  EXPECT_EQ(qos_cost(r, 512, 256).bytes, 0u);
  // A discard: the write direction, no bytes whatever its range.
  BlkRequest d;
  d.op = BLKIF_OP_DISCARD;
  d.nr_sectors = 1 << 30;
  c = qos_cost(d, 512, 256);
  EXPECT_EQ(c.dir, QosDir::kWrite);
  EXPECT_EQ(c.bytes, 0u);
  // Indirect: whole pages, bounded by what the backend offered.
  BlkRequest ind;
  ind.op = BLKIF_OP_READ;
  ind.indirect = true;
  ind.nr_segments = 64;
  EXPECT_EQ(qos_cost(ind, 512, 256).bytes, 64u * 4096);
  ind.nr_segments = 60000;
  EXPECT_EQ(qos_cost(ind, 512, 256).bytes, 256u * 4096);
}

TEST(BlkQos, VbdQosSplitsOverQueuesAndCorrectsEstimates) {
  QosLimits l;
  l.read_iops = 2000;
  l.write_bps = 10'000'000;
  VbdQos q;
  q.configure(l, 2, 1 << 20, t0);
  ASSERT_TRUE(q.limited());
  EXPECT_EQ(q.iops(QosDir::kRead).rate(), 1000);
  EXPECT_EQ(q.iops(QosDir::kRead).burst(), 100);  // 100 ms default
  EXPECT_TRUE(q.iops(QosDir::kWrite).unlimited());
  EXPECT_EQ(q.bytes(QosDir::kWrite).rate(), 5e6);
  EXPECT_EQ(q.bytes(QosDir::kWrite).burst(), 1 << 20);  // floored at the largest request
  EXPECT_TRUE(q.bytes(QosDir::kRead).unlimited());
  EXPECT_EQ(q.affordable(32), 32u);  // writes are not IOPS-limited
  // Estimated 1 MiB, moved 4 KiB: the difference comes back.
  q.charge(QosDir::kWrite, 1 << 20);
  EXPECT_FALSE(q.ready(QosDir::kWrite));
  q.adjust(QosDir::kWrite, 1 << 20, 4096);
  EXPECT_TRUE(q.ready(QosDir::kWrite));
  EXPECT_NEAR(q.bytes(QosDir::kWrite).tokens(), (1 << 20) - 4096, 1e-6);
  // Reads: 100 tokens; the IOPS credit bounds what is consumed at once.
  for (int i = 0; i < 97; ++i) q.charge(QosDir::kRead, 4096);
  EXPECT_EQ(q.affordable(32), 32u);  // writes still may go
  l.write_bps = 0;
  l.write_iops = 100;  // 50/s per queue, burst 5 (100 ms)
  q.configure(l, 2, 1 << 20, t0);
  EXPECT_EQ(q.iops(QosDir::kWrite).tokens(), 5);
  EXPECT_EQ(q.affordable(32), 5u);  // writes' credit
  for (int i = 0; i < 5; ++i) q.charge(QosDir::kWrite, 0);
  EXPECT_EQ(q.affordable(32), 3u);  // reads'
  for (int i = 0; i < 3; ++i) q.charge(QosDir::kRead, 4096);
  EXPECT_FALSE(q.ready(QosDir::kRead));
  EXPECT_FALSE(q.ready(QosDir::kWrite));
  EXPECT_EQ(q.affordable(32), 1u);  // at least the head, to learn its cost
  // Woken with a quantum's worth (5 ms at 1000/s: 5 requests).
  EXPECT_EQ(q.ready_at(QosDir::kRead), t0 + 5ms);
  q.refill(t0 + 5ms);
  EXPECT_TRUE(q.ready(QosDir::kRead));
  EXPECT_EQ(q.affordable(32), 5u);
  // The burst is never below kQosMinBurstMs of the rate (a coarse tick's
  // refill must fit) nor below one request.
  l.burst_ms = 1;
  q.configure(l, 1, 4096, t0);
  EXPECT_EQ(q.iops(QosDir::kRead).burst(), 2000.0 * kQosMinBurstMs / 1000);
  EXPECT_EQ(q.iops(QosDir::kWrite).burst(), 2);
}

TEST(BlkQos, KeysAndValues) {
  QosLimits l;
  for (std::string_view k : kQosKeys) {
    ASSERT_NE(qos_field(l, k), nullptr) << k;
    *qos_field(l, k) = 7;
  }
  EXPECT_EQ(l.read_iops, 7u);
  EXPECT_EQ(l.burst_ms, 7u);
  EXPECT_EQ(qos_field(l, "rate"), nullptr);
  EXPECT_EQ(*parse_qos_value("2000"), 2000u);
  EXPECT_EQ(*parse_qos_value("0"), 0u);
  EXPECT_EQ(*parse_qos_value("unlimited"), 0u);
  for (const char* bad : {"", "-1", "1e6", " 5", "5 ", "07", "99999999999999999999", "2000000000000000"}) {
    EXPECT_FALSE(parse_qos_value(bad)) << bad;
  }
  EXPECT_EQ(qos_describe(QosLimits{}), "unlimited");
  EXPECT_EQ(qos_describe(QosLimits{.read_iops = 2000, .write_bps = 10'000'000}),
            "read 2000 IOPS, write 10 MB/s, burst 100 ms");
}

}  // namespace
}  // namespace xenpath
