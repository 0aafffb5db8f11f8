#include "common/metrics.h"

#include "common/latency_histogram.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <limits>
#include <sstream>

namespace xenpath {

prometheus::ClientMetric& MetricSet::add(const std::string& name, const std::string& help, prometheus::MetricType type,
                                         const Labels& labels) {
  auto [it, fresh] = index_.try_emplace(name, families_.size());
  if (fresh) families_.push_back(prometheus::MetricFamily{name, help, type, {}});
  prometheus::MetricFamily& f = families_[it->second];
  prometheus::ClientMetric& m = f.metric.emplace_back();
  for (const auto& [k, v] : labels) m.label.push_back({k, v});
  return m;
}

void MetricSet::counter(const std::string& name, const std::string& help, const Labels& labels, double value) {
  add(name, help, prometheus::MetricType::Counter, labels).counter.value = value;
}

void MetricSet::gauge(const std::string& name, const std::string& help, const Labels& labels, double value) {
  add(name, help, prometheus::MetricType::Gauge, labels).gauge.value = value;
}

void MetricSet::latency_histogram(const std::string& name, const std::string& help, const Labels& labels,
                                  const nlohmann::json& h) {
  const auto b = h.is_object() ? h.find("buckets") : h.end();
  if (b == h.end() || !b->is_array() || b->size() != LatencyHistogram::kBuckets) return;
  prometheus::ClientMetric::Histogram& out = add(name, help, prometheus::MetricType::Histogram, labels).histogram;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < LatencyHistogram::kBuckets; ++i) {
    cumulative += (*b)[i].is_number_unsigned() ? (*b)[i].get<uint64_t>() : 0;
    out.bucket.push_back({cumulative, i < LatencyHistogram::kBoundsNs.size()
                                          ? static_cast<double>(LatencyHistogram::kBoundsNs[i]) / 1e9
                                          : std::numeric_limits<double>::infinity()});
  }
  // The count is the +Inf bucket's, as the format requires.
  out.sample_count = cumulative;
  out.sample_sum = static_cast<double>(h.value("sum_ns", uint64_t{0})) / 1e9;
}

namespace {
double num(const nlohmann::json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}
}  // namespace

void add_daemon_metrics(const nlohmann::json& s, MetricSet& out) {
  const std::string daemon = s.value("daemon", std::string());
  out.gauge("xenpath_up", "1 while the daemon serves its devices", {{"daemon", daemon}},
            s.value("running", false) ? 1 : 0);
  // The platform's kind ("xen", "sim"), not its details (a socket path
  // would make a new series per run).
  std::string platform = s.value("platform", std::string());
  platform = platform.substr(0, platform.find(' '));
  out.gauge("xenpath_build_info", "xenpath build (always 1; the labels say which)",
            {{"daemon", daemon}, {"version", s.value("version", std::string())}, {"platform", platform}}, 1);
  out.gauge("xenpath_uptime_seconds", "seconds since the daemon started serving", {{"daemon", daemon}},
            num(s, "uptime_s"));
  if (auto x = s.find("xenbus"); x != s.end() && x->is_object()) {
    out.gauge("xenpath_devices", "devices the daemon knows (any xenbus state)", {{"daemon", daemon}},
              num(*x, "devices"));
    out.gauge("xenpath_devices_connected", "devices in Connected", {{"daemon", daemon}}, num(*x, "connected"));
    out.counter("xenpath_device_connects_total", "successful device connects", {{"daemon", daemon}},
                num(*x, "connects"));
    out.counter("xenpath_device_connect_failures_total", "device connects that failed", {{"daemon", daemon}},
                num(*x, "connect_failures"));
    out.counter("xenpath_xenstore_errors_total", "xenstore operations that failed unexpectedly", {{"daemon", daemon}},
                num(*x, "xs_errors"));
  }
  if (auto w = s.find("workers"); w != s.end() && w->is_array()) {
    for (const auto& e : *w) {
      const MetricSet::Labels labels{{"daemon", daemon}, {"worker", e.value("name", std::string())}};
      out.counter("xenpath_worker_busy_seconds_total",
                  "time a worker reactor spent doing work (not spinning, not asleep)", labels, num(e, "busy_ns") / 1e9);
      // The loop's own cost (issues 13/14): iterations, and the epoll_wait
      // system calls it makes, blocking (sleeps) or not.
      out.counter("xenpath_worker_iterations_total", "reactor loop iterations", labels, num(e, "iterations"));
      out.counter("xenpath_worker_epoll_waits_total", "epoll_wait calls of the reactor loop", labels,
                  num(e, "epoll_waits"));
      out.counter("xenpath_worker_sleeps_total", "times the reactor loop blocked in epoll_wait", labels,
                  num(e, "sleeps"));
    }
  }
}

std::string serialize_metrics(const std::vector<prometheus::MetricFamily>& families) {
  std::ostringstream os;
  prometheus::TextSerializer().Serialize(os, families);
  return os.str();
}

struct MetricsEndpoint::Collector : prometheus::Collectable {
  explicit Collector(CollectFn c) : collect(std::move(c)) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    try {
      return collect();
    } catch (const std::exception& e) {
      spdlog::warn("metrics scrape: {}", e.what());
      return {};
    }
  }
  MetricsEndpoint::CollectFn collect;
};

Result<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::create(const std::string& listen,
                                                                 CollectFn collect) noexcept {
  try {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size() ||
        listen.find_first_not_of("0123456789", colon + 1) != std::string::npos) {
      return unexpected(EINVAL);
    }
    std::unique_ptr<MetricsEndpoint> m(new MetricsEndpoint());
    m->collector_ = std::make_shared<Collector>(std::move(collect));
    try {
      // One civetweb thread: a scrape is one snapshot, a few ms at most.
      m->exposer_ = std::make_unique<prometheus::Exposer>(listen, 1);
    } catch (const std::exception& e) {
      spdlog::error("metrics endpoint {}: {}", listen, e.what());
      return unexpected(EADDRINUSE);
    }
    m->exposer_->RegisterCollectable(m->collector_, "/metrics");
    const auto ports = m->exposer_->GetListeningPorts();
    m->address_ = listen.substr(0, colon + 1) + std::to_string(ports.empty() ? 0 : ports.front());
    return m;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

MetricsEndpoint::~MetricsEndpoint() {
  // civetweb's threads end (and no scrape runs) before the collector goes.
  exposer_.reset();
}

}  // namespace xenpath
