// LatencyHistogram's buckets and its stats/metrics forms; the reactor's fine
// clock (one read per iteration, none while off).
#include "common/latency_histogram.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/metrics.h"
#include "common/reactor.h"

namespace xenpath {
namespace {

using std::chrono::steady_clock;

TEST(LatencyHistogram, BoundsAreInclusiveAndAboveTheLastIsInf) {
  LatencyHistogram h;
  h.record_ns(0);
  h.record_ns(50'000);  // le=50us
  h.record_ns(50'001);  // le=100us
  h.record_ns(1'000'000'000);
  h.record_ns(1'000'000'001);  // +Inf
  EXPECT_EQ(h.bucket(0), 2u);
  EXPECT_EQ(h.bucket(1), 1u);
  EXPECT_EQ(h.bucket(LatencyHistogram::kBuckets - 2), 1u);
  EXPECT_EQ(h.bucket(LatencyHistogram::kBuckets - 1), 1u);
  EXPECT_EQ(h.count(), 5u);
  EXPECT_EQ(h.sum_ns(), 2'000'100'002u);
}

TEST(LatencyHistogram, UnstampedOrBackwardsIsNotRecorded) {
  LatencyHistogram h;
  const auto t = steady_clock::now();
  h.record(steady_clock::time_point{}, t);
  h.record(t, t - std::chrono::microseconds(1));
  EXPECT_EQ(h.count(), 0u);
  h.record(t, t + std::chrono::microseconds(300));
  EXPECT_EQ(h.bucket(3), 1u);  // 250us < 300us <= 500us
}

TEST(LatencyHistogram, JsonSumsAndPrometheusForm) {
  LatencyHistogram a, b;
  a.record_ns(10'000);
  b.record_ns(10'000);
  b.record_ns(2'000'000);
  nlohmann::json sum;
  add_latency_json(sum, latency_json(a));
  add_latency_json(sum, latency_json(b));
  EXPECT_EQ(sum["count"], 3u);
  EXPECT_EQ(sum["sum_ns"], 2'020'000u);
  EXPECT_EQ(sum["buckets"][0], 2u);
  EXPECT_EQ(sum["buckets"][5], 1u);  // 1ms < 2ms <= 2.5ms

  MetricSet m;
  m.latency_histogram("x_seconds", "help", {{"queue", "0"}}, sum);
  m.latency_histogram("x_seconds", "help", {{"queue", "1"}}, nlohmann::json{{"buckets", {1, 2}}});  // malformed
  const std::string text = serialize_metrics(m.families());
  EXPECT_NE(text.find("# TYPE x_seconds histogram"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{queue=\"0\",le=\"5e-05\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{queue=\"0\",le=\"0.001\"} 2"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{queue=\"0\",le=\"0.0025\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_bucket{queue=\"0\",le=\"+Inf\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_count{queue=\"0\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("x_seconds_sum{queue=\"0\"} 0.00202"), std::string::npos) << text;
  EXPECT_EQ(text.find("queue=\"1\""), std::string::npos) << text;
}

TEST(ReactorFineClock, OneReadPerIterationThatAsksNoneWhileOff) {
  Reactor::Options o;
  o.uring_entries = 0;
  auto r = Reactor::create(o);
  ASSERT_TRUE(r);
  Reactor& re = **r;
  ASSERT_TRUE(re.start());
  struct Asker final : Poller {
    Reactor* re = nullptr;
    std::atomic<int> calls{0};
    std::atomic<bool> stamped{false};
    bool poll() noexcept override {
      const auto a = re->fine_now();
      const auto b = re->fine_now();  // same iteration: the same reading, no second read
      if (a != b) std::abort();
      stamped.store(a != steady_clock::time_point{});
      calls.fetch_add(1);
      return false;
    }
    bool arm() noexcept override { return false; }
  } asker;
  asker.re = &re;
  re.call([&] { re.add_poller(&asker); });
  // Off: nothing stamped, nothing read.
  for (int i = 0; i < 10'000 && asker.calls.load() < 2; ++i) re.call([] {});
  EXPECT_FALSE(asker.stamped.load());
  uint64_t reads = 0;
  re.call([&] { reads = re.stats().fine_clock_reads; });
  EXPECT_EQ(reads, 0u);
  re.set_fine_clock(true);
  // Taken at the top of the next iteration; a call() returns before its
  // iteration's pollers run (and two calls may share a drain), so wake the
  // loop until the poller ran in two more iterations.
  const int before = asker.calls.load();
  for (int i = 0; i < 10'000 && asker.calls.load() < before + 2; ++i) re.call([] {});
  EXPECT_TRUE(asker.stamped.load()) << asker.calls.load();
  uint64_t iterations = 0;
  re.call([&] {
    reads = re.stats().fine_clock_reads;
    iterations = re.stats().iterations;
  });
  EXPECT_GT(reads, 0u);
  EXPECT_LE(reads, iterations);
  re.call([&] { re.remove_poller(&asker); });
  re.stop();
}

}  // namespace
}  // namespace xenpath
