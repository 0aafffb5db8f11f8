// Prometheus metrics of a daemon: an opt-in HTTP endpoint (`--metrics-listen
// ADDR:PORT`, prometheus-cpp's Exposer over civetweb) whose every scrape
// converts ONE stats snapshot (the document the stats file and the control
// socket's `stats` carry) into metric families. There is no second set of
// counters on the datapath: the collector reads what the queues already
// publish, through the same snapshot.
//
// MetricSet is the scrape being built: families by name (HELP/TYPE once per
// family, as the exposition format wants), samples with their labels. The
// services add their families (xenpath_vbd_*, xenpath_vif_*) from the
// snapshot with a MetricsFn (BackendDaemon::add_metrics).
//
// Threads: MetricSet is local to one scrape. MetricsEndpoint is created and
// destroyed on the daemon's owning thread; its collect function runs on
// civetweb's thread, which must not be a reactor (it waits for the control
// reactor to take the snapshot).
#pragma once

#include <prometheus/metric_family.h>

#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/result.h"

namespace prometheus {
class Exposer;
}

namespace xenpath {

class MetricSet {
 public:
  using Labels = std::map<std::string, std::string>;
  void counter(const std::string& name, const std::string& help, const Labels& labels, double value);
  void gauge(const std::string& name, const std::string& help, const Labels& labels, double value);
  // A histogram of durations in seconds from the stats document's form
  // (common/latency_histogram.h: count, sum_ns, per-bucket counts over
  // LatencyHistogram::kBoundsNs then +Inf); nothing when `h` is not that.
  void latency_histogram(const std::string& name, const std::string& help, const Labels& labels,
                         const nlohmann::json& h);
  [[nodiscard]] std::vector<prometheus::MetricFamily> take() { return std::move(families_); }
  [[nodiscard]] const std::vector<prometheus::MetricFamily>& families() const noexcept { return families_; }

 private:
  prometheus::ClientMetric& add(const std::string& name, const std::string& help, prometheus::MetricType type,
                                const Labels& labels);
  std::vector<prometheus::MetricFamily> families_;
  std::map<std::string, size_t> index_;
};

// Adds a service's families from a stats snapshot.
using MetricsFn = std::function<void(const nlohmann::json& stats, MetricSet& out)>;

// The metrics every daemon has, from the snapshot's common part: xenpath_up,
// xenpath_build_info, the xenbus device gauges and counters, per-worker busy
// time.
void add_daemon_metrics(const nlohmann::json& stats, MetricSet& out);

// Prometheus' text exposition of `families` (what the endpoint serves).
std::string serialize_metrics(const std::vector<prometheus::MetricFamily>& families);

class MetricsEndpoint {
 public:
  using CollectFn = std::function<std::vector<prometheus::MetricFamily>()>;
  // Listens on `listen` ("ADDR:PORT"; port 0 picks a free one) and serves
  // /metrics. EINVAL for a malformed address, EADDRINUSE when civetweb
  // cannot bind.
  static Result<std::unique_ptr<MetricsEndpoint>> create(const std::string& listen, CollectFn collect) noexcept;
  ~MetricsEndpoint();
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;
  // "ADDR:PORT" with the port actually bound.
  [[nodiscard]] const std::string& address() const noexcept { return address_; }

 private:
  MetricsEndpoint() = default;
  struct Collector;
  std::shared_ptr<Collector> collector_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  std::string address_;
};

}  // namespace xenpath
