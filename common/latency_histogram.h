// LatencyHistogram: request latencies in fixed exponential buckets (50 us to
// 1 s, the 1-2.5-5 series Prometheus' own defaults use), for the metrics'
// `_seconds` histograms.
//
// Written by one thread (the queue's worker), read by any (the stats
// snapshot): every bucket is a single-writer Counter (relaxed load + store,
// no locked instruction), as the queues' other counters. A reader may see a
// bucket incremented before the sum; a snapshot is consistent to within the
// requests of one iteration, as the other counters are.
//
// The times come from the worker's fine clock (Reactor::fine_now()): both
// ends of a request are stamped with their iteration's reading, so a time
// is exact to within one iteration of the reactor, never a clock read per
// request.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>

#include "common/stats.h"

namespace xenpath {

class LatencyHistogram {
 public:
  // Upper bounds (inclusive, as Prometheus' `le`), nanoseconds; one more
  // bucket counts everything above the last (+Inf).
  static constexpr std::array<uint64_t, 14> kBoundsNs = {
      50'000,     100'000,    250'000,    500'000,     1'000'000,   2'500'000,   5'000'000,
      10'000'000, 25'000'000, 50'000'000, 100'000'000, 250'000'000, 500'000'000, 1'000'000'000};
  static constexpr size_t kBuckets = kBoundsNs.size() + 1;

  // Writer thread. A default `start` (the clock was off when the request
  // was taken) or an `end` before it is not recorded: a request taken
  // before timing was switched on is not timed.
  void record(std::chrono::steady_clock::time_point start, std::chrono::steady_clock::time_point end) noexcept {
    if (start == std::chrono::steady_clock::time_point{} || end < start) return;
    record_ns(static_cast<uint64_t>(std::chrono::nanoseconds(end - start).count()));
  }
  void record_ns(uint64_t ns) noexcept {
    size_t i = 0;
    while (i < kBoundsNs.size() && ns > kBoundsNs[i]) ++i;
    buckets_[i].add();
    sum_ns_.add(ns);
  }

  // Any thread.
  [[nodiscard]] uint64_t bucket(size_t i) const noexcept { return buckets_[i].get(); }
  [[nodiscard]] uint64_t sum_ns() const noexcept { return sum_ns_.get(); }
  [[nodiscard]] uint64_t count() const noexcept;

 private:
  std::array<Counter, kBuckets> buckets_;  // per bucket, not cumulative
  Counter sum_ns_;
};

// The stats document's form: {"count", "sum_ns", "buckets": [per bucket,
// not cumulative, the last is +Inf]}; the bounds are kBoundsNs (the
// document says them once, latency_bounds_json()).
nlohmann::json latency_json(const LatencyHistogram& h);
// Adds `from` (that form) into `into` (the same form, or null): a VBD's
// histogram is the sum of its queues'.
void add_latency_json(nlohmann::json& into, const nlohmann::json& from);
nlohmann::json latency_bounds_json();

}  // namespace xenpath
