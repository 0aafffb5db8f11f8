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
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void BlkbackService::add_stats(nlohmann::json& j, const BackendDriver& driver) const {
  j["mapped_grant_pages"] = mapped_pages();
  j["bound_ports"] = bound_ports();
  nlohmann::json devs = nlohmann::json::array();
  driver.for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& dev) {
    const auto& vbd = static_cast<const VbdDevice&>(dev);
    nlohmann::json e = {{"type", a.type},
                        {"frontend", a.frontend_id},
                        {"devid", a.devid},
                        {"state", static_cast<int>(st)},
                        {"connected", vbd.connected()},
                        {"sectors", vbd.image().info().size_bytes / 512}};
    uint64_t reads = 0, writes = 0, read_bytes = 0, write_bytes = 0, flushes = 0, barriers = 0, discards = 0;
    uint64_t errors = 0, in_flight = 0, halted = 0;
    const size_t queues = vbd.connected() ? vbd.queue_count() : 0;
    for (size_t q = 0; q < queues; ++q) {
      const VbdQueueStats& s = vbd.queue_stats(q);
      reads += s.reads.get();
      writes += s.writes.get();
      read_bytes += s.read_bytes.get();
      write_bytes += s.write_bytes.get();
      flushes += s.flushes.get();
      barriers += s.barriers.get();
      discards += s.discards.get();
      errors += s.errors.total();
      in_flight += s.in_flight.get();
      halted += s.ring.halted.get();
    }
    e["queues"] = queues;
    e["reads"] = reads;
    e["writes"] = writes;
    e["read_bytes"] = read_bytes;
    e["write_bytes"] = write_bytes;
    e["flushes"] = flushes;
    e["barriers"] = barriers;
    e["discards"] = discards;
    e["errors"] = errors;
    e["in_flight"] = in_flight;
    e["halted"] = halted;
    devs.push_back(std::move(e));
  });
  j["devices"] = std::move(devs);
}

}  // namespace xenpath
