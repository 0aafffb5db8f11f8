// Kernel netback's "rate" credit scheduler, with an explicit clock.
#include "netback/net_rate.h"

#include <gtest/gtest.h>

#include <limits>

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using Clock = RateLimiter::Clock;

const Clock::time_point t0 = Clock::time_point{} + 1000s;

TEST(NetRate, ParsesTheXenstoreKeyLikeNetback) {
  auto r = parse_rate("10000000,20000");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->bytes, 10000000u);
  EXPECT_EQ(r->usec, 20000u);
  EXPECT_FALSE(r->unlimited());
  EXPECT_TRUE(parse_rate("0,0"));
  for (const char* bad :
       {"", "10", "10,", ",10", "10,20x", "10;20", " 1,2", "1, 2", "-1,2", "1,2,3", "99999999999999999999999,1"}) {
    EXPECT_FALSE(parse_rate(bad)) << bad;
  }
  EXPECT_TRUE(RateSpec{}.unlimited());
}

TEST(NetRate, UnlimitedPassesEverything) {
  RateLimiter rl;
  rl.start(RateSpec{}, t0);
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(rl.admit(65535, t0));
  EXPECT_FALSE(rl.limited());
}

TEST(NetRate, APacketBeyondTheCreditWaitsForTheNextWindow) {
  RateLimiter rl;
  rl.start({10000, 100000}, t0);  // 10 kB per 100 ms
  EXPECT_TRUE(rl.admit(6000, t0));
  EXPECT_EQ(rl.remaining(), 4000u);
  EXPECT_FALSE(rl.admit(6000, t0 + 10ms));
  ASSERT_TRUE(rl.replenish_at());
  EXPECT_EQ(*rl.replenish_at(), t0 + 100ms);
  EXPECT_TRUE(rl.limited());
  EXPECT_FALSE(rl.admit(6000, t0 + 99ms));
  // What still fits the credit passes, as in Linux (the ring is served in
  // order, so in practice the refused packet at its head blocks the rest).
  EXPECT_TRUE(rl.admit(100, t0 + 99ms));
  EXPECT_TRUE(rl.admit(6000, t0 + 100ms));
  EXPECT_EQ(rl.remaining(), 3900u + 10000u - 6000u);
  EXPECT_FALSE(rl.limited());
}

TEST(NetRate, CreditAccumulatesUpTo128KiBForLargeFrames) {
  RateLimiter rl;
  rl.start({1000, 1000}, t0);  // 1000 bytes per ms
  EXPECT_TRUE(rl.admit(1000, t0));
  // A 64 KiB GSO frame waits window after window while credit builds up.
  auto now = t0;
  int refusals = 0;
  while (!rl.admit(65535, now)) {
    ++refusals;
    ASSERT_LT(refusals, 1000);
    now = *rl.replenish_at();
  }
  EXPECT_GE(refusals, 60);
  // The cap: a long idle spell does not bank more than 128 KiB.
  RateLimiter cap;
  cap.start({100000, 1000}, t0);
  EXPECT_TRUE(cap.admit(120000, t0 + 5s));  // window over: 100000 + 100000 capped at 131072
  EXPECT_EQ(cap.remaining(), 131072u - 120000u);
  RateLimiter above;  // the cap is max(bytes, 128 KiB)
  above.start({200000, 1000}, t0);
  EXPECT_TRUE(above.admit(10, t0));
  EXPECT_TRUE(above.admit(199995, t0 + 5s));  // 199990 + 200000 capped at 200000
  EXPECT_EQ(above.remaining(), 5u);
}

TEST(NetRate, AddingCreditSaturatesInsteadOfWrapping) {
  RateLimiter rl;
  rl.start({1000, 1000000}, t0);
  ASSERT_TRUE(rl.admit(500, t0));
  ASSERT_FALSE(rl.admit(1500, t0));  // replenish pending, 500 left
  // The operator raises the rate to nearly 2^64 bytes: the pending replenish
  // adds it to the 500 left. Wrapping would leave 498 bytes of credit.
  const uint64_t huge = std::numeric_limits<uint64_t>::max() - 1;
  rl.update({huge, 1000000}, t0);
  EXPECT_EQ(rl.remaining(), huge);
  EXPECT_TRUE(rl.admit(65535, t0));
}

TEST(NetRate, SubMillisecondWindowsAreHonoured) {
  RateLimiter rl;
  rl.start({1500, 500}, t0);  // one full frame per 500 us
  EXPECT_TRUE(rl.admit(1500, t0));
  EXPECT_FALSE(rl.admit(1500, t0 + 300us));
  EXPECT_FALSE(rl.admit(1500, t0 + 499us));
  EXPECT_TRUE(rl.admit(1500, t0 + 500us));
}

TEST(NetRate, ChangingTheRateFiresAPendingReplenishOrClampsTheCredit) {
  RateLimiter rl;
  rl.start({10000, 100000}, t0);
  EXPECT_TRUE(rl.admit(9000, t0));
  EXPECT_FALSE(rl.admit(5000, t0));
  ASSERT_TRUE(rl.limited());
  rl.update({20000, 100000}, t0 + 1ms);
  EXPECT_FALSE(rl.limited());
  EXPECT_EQ(rl.remaining(), 1000u + 20000u);
  EXPECT_TRUE(rl.admit(5000, t0 + 1ms));
  // No replenish pending: the credit shrinks to the new size.
  RateLimiter r2;
  r2.start({50000, 100000}, t0);
  r2.update({8000, 100000}, t0);
  EXPECT_EQ(r2.remaining(), 8000u);
  EXPECT_EQ(r2.spec().bytes, 8000u);
  // And to unlimited.
  r2.update(RateSpec{}, t0);
  EXPECT_TRUE(r2.admit(65535, t0));
}

}  // namespace
}  // namespace xenpath
