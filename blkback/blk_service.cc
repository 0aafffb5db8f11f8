#include "blkback/blk_service.h"

namespace xenpath {

DaemonCli BlkbackService::cli_defaults() {
  DaemonCli c;
  c.daemon.name = "xenpath-blkback";
  return c;
}

void BlkbackService::add_cli(CLI::App& app, Options& opts) {
  app.add_option("--backend-type", opts.type_name,
                 "xenstore device type to serve: vbd (kernel blkback's) or qdisk (QEMU's), or another name");
  app.add_option("--max-queues", opts.max_queues, "multi-queue-max-queues (0: one per worker)");
  app.add_option("--max-ring-page-order", opts.max_ring_order, "max-ring-page-order")->check(CLI::Range(0, 4));
  app.add_option("--max-indirect-segments", opts.max_indirect_segments, "feature-max-indirect-segments")
      ->check(CLI::Range(0, 4096));
  app.add_flag("!--no-persistent", opts.persistent, "do not offer feature-persistent");
}

Result<std::unique_ptr<BlkbackService>> BlkbackService::create(BackendDaemon& daemon, const VbdOptions& opts) noexcept {
  try {
    std::unique_ptr<BlkbackService> s(new BlkbackService());
    s->type_name_ = opts.type_name;
    XP_TRY(s->workers_.open(daemon.workers(), daemon.platform()));
    BackendDaemon* d = &daemon;
    XP_TRY(daemon.add_type(std::make_unique<VbdDeviceType>(s->workers(), opts, daemon.device_error_sink())));
    const BlkbackService* self = s.get();
    daemon.add_stats([self, d](nlohmann::json& j) { self->add_stats(j, d->driver()); });
    daemon.add_metrics(&BlkbackService::add_metrics);
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void BlkbackService::add_stats(nlohmann::json& j, const BackendDriver& driver) const {
  j["mapped_grant_pages"] = mapped_pages();
  j["bound_ports"] = bound_ports();
  j["devices"] = driver.describe_devices(type_name());
}

void BlkbackService::add_metrics(const nlohmann::json& stats, MetricSet& out) {
  auto devs = stats.find("devices");
  if (devs == stats.end() || !devs->is_array()) return;
  struct Family {
    const char* name;
    const char* key;
    const char* help;
  };
  static constexpr Family kCounters[] = {
      {"xenpath_vbd_read_requests_total", "reads", "read requests completed or in flight"},
      {"xenpath_vbd_write_requests_total", "writes", "write requests"},
      {"xenpath_vbd_read_bytes_total", "read_bytes", "bytes read for the guest"},
      {"xenpath_vbd_write_bytes_total", "write_bytes", "bytes written for the guest"},
      {"xenpath_vbd_flush_requests_total", "flushes", "cache flush requests"},
      {"xenpath_vbd_barrier_requests_total", "barriers", "write barrier requests"},
      {"xenpath_vbd_discard_requests_total", "discards", "discard requests"},
      {"xenpath_vbd_errors_total", "errors", "requests answered with an error"},
  };
  for (const auto& d : *devs) {
    const MetricSet::Labels dev = {{"domain", std::to_string(d.value("frontend", 0))},
                                   {"device", std::to_string(d.value("devid", 0))}};
    out.gauge("xenpath_vbd_connected", "1 while the VBD's rings are connected", dev, d.value("connected", false));
    out.gauge("xenpath_vbd_size_bytes", "capacity the guest sees", dev,
              static_cast<double>(d.value("sectors", uint64_t{0})) * 512);
    for (const Family& f : kCounters) out.counter(f.name, f.help, dev, d.value(f.key, 0.0));
    if (auto qs = d.find("per_queue"); qs != d.end() && qs->is_array()) {
      for (const auto& q : *qs) {
        MetricSet::Labels ql = dev;
        ql["queue"] = std::to_string(q.value("queue", 0));
        out.gauge("xenpath_vbd_queue_in_flight_requests", "requests a queue consumed and not yet answered", ql,
                  q.value("in_flight", 0.0));
      }
    }
  }
}

}  // namespace xenpath
