#include "common/latency_histogram.h"

#include <nlohmann/json.hpp>

namespace xenpath {

uint64_t LatencyHistogram::count() const noexcept {
  uint64_t n = 0;
  for (const Counter& b : buckets_) n += b.get();
  return n;
}

nlohmann::json latency_json(const LatencyHistogram& h) {
  nlohmann::json b = nlohmann::json::array();
  uint64_t n = 0;
  for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
    const uint64_t v = h.bucket(i);
    n += v;
    b.push_back(v);
  }
  // The count is the buckets' sum (not a counter of its own), so the
  // histogram is consistent with itself whatever the writer does meanwhile.
  return {{"count", n}, {"sum_ns", h.sum_ns()}, {"buckets", std::move(b)}};
}

void add_latency_json(nlohmann::json& into, const nlohmann::json& from) {
  if (!from.is_object()) return;
  if (!into.is_object()) {
    into = from;
    return;
  }
  into["count"] = into.value("count", uint64_t{0}) + from.value("count", uint64_t{0});
  into["sum_ns"] = into.value("sum_ns", uint64_t{0}) + from.value("sum_ns", uint64_t{0});
  auto& a = into["buckets"];
  const auto fb = from.find("buckets");
  if (!a.is_array() || fb == from.end() || !fb->is_array() || a.size() != fb->size()) return;
  for (size_t i = 0; i < a.size(); ++i) a[i] = a[i].get<uint64_t>() + (*fb)[i].get<uint64_t>();
}

nlohmann::json latency_bounds_json() {
  nlohmann::json b = nlohmann::json::array();
  for (uint64_t ns : LatencyHistogram::kBoundsNs) b.push_back(ns);
  return b;
}

}  // namespace xenpath
