#include "netback/net_service.h"

#include <spdlog/spdlog.h>

#include <sstream>

namespace xenpath {
namespace {

std::vector<std::string> split_args(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string a; in >> a;) out.push_back(a);
  return out;
}

nlohmann::json vif_json(const DeviceAddress& a, XenbusState st, const VifDevice& d) {
  nlohmann::json v;
  v["type"] = a.type;
  v["frontend"] = a.frontend_id;
  v["devid"] = a.devid;
  v["state"] = static_cast<int>(st);
  v["connected"] = d.connected();
  if (d.mac()) v["mac"] = d.mac()->str();
  if (!d.rate().unlimited()) v["rate"] = {{"bytes", d.rate().bytes}, {"usec", d.rate().usec}};
  if (d.connected()) v["multicast_control"] = d.frontend().multicast_control;
  nlohmann::json qs = nlohmann::json::array();
  for (size_t i = 0; d.connected() && i < d.queue_count(); ++i) {
    const VifQueueStats& s = d.queue_stats(i);
    qs.push_back({{"tx_packets", s.tx_packets.get()},
                  {"tx_bytes", s.tx_bytes.get()},
                  {"tx_dropped", s.tx_dropped.get()},
                  {"tx_port_dropped", s.tx_port_dropped.get()},
                  {"tx_rate_limited", s.tx_rate_limited.get()},
                  {"tx_credit_timer", s.tx_credit_timer.get()},
                  {"tx_multicast", s.tx_multicast.get()},
                  {"tx_headers_pulled", s.tx_headers_pulled.get()},
                  {"tx_map_calls", s.tx_map_calls.get()},
                  {"tx_mapped_pages", s.tx_mapped_pages.get()},
                  {"tx_copy_calls", s.tx_copy_calls.get()},
                  {"tx_copied_bytes", s.tx_copied_bytes.get()},
                  {"rx_packets", s.rx_packets.get()},
                  {"rx_bytes", s.rx_bytes.get()},
                  {"rx_dropped", s.rx_dropped.get()},
                  {"rx_expired", s.rx_expired.get()},
                  {"rx_stall_dropped", s.rx_stall_dropped.get()},
                  {"rx_stalls", s.rx_stalls.get()},
                  {"rx_stalled", s.rx_stalled.get() != 0},
                  {"rx_copy_failures", s.rx_copy_failures.get()},
                  {"rx_gro_packets", s.rx_gro_packets.get()},
                  {"rx_gro_merged", s.rx_gro_merged.get()},
                  {"halted", s.tx_ring.halted.get() != 0 || s.rx_ring.halted.get() != 0}});
  }
  v["queues"] = std::move(qs);
  if (const NetifCtrlStats* c = d.ctrl_stats(); c != nullptr && d.connected()) {
    v["ctrl"] = {{"requests", c->ring.requests.get()}, {"hash_updates", c->hash_updates.get()}};
  }
  return v;
}

}  // namespace

DaemonCli NetbackService::cli_defaults() {
  DaemonCli c;
  c.daemon.name = "xenpath-netback";
  c.daemon.workers = 1;
  c.daemon.uring_entries = 0;  // netback's workers need no io_uring
  c.log_level = "warn";        // quiet unless asked (--log-level, -v)
  return c;
}

void NetbackService::add_cli(CLI::App& app, Options& opts) {
  app.add_option("--port-template", opts.port_template,
                 "DPDK devargs per VIF, {domid}/{devid} expanded (default: " + std::string(kDefaultVifDevargs) + ")");
  app.add_option("--eal-args", opts.eal_args, "the complete EAL argument list (default: --no-huge --no-pci ...)");
  app.add_option("--max-queues", opts.vif.max_queues, "multi-queue-max-queues (0: one per worker)");
  app.add_option("--tx-copy-below", opts.vif.tx_limits.copy_below,
                 "guest TX: grant-copy a slot's bytes (past the 128 copied header bytes) when fewer than this, "
                 "grant-map them otherwise; 0 maps every remainder, as Linux netback (default: copy all, the "
                 "crossover measured in the real-Xen lab; docs/netback-perf.md)")
      ->check(CLI::Range(0, 4097));
  app.add_option_function<std::string>(
         "--rx-gro", [&opts](const std::string& v) { opts.vif.rx_gro = v == "on"; },
         "guest RX: coalesce a port burst's in-sequence TCP/IPv4 frames of a flow into one GSO packet "
         "for frontends with feature-gso-tcpv4 (default: on; docs/netback-perf.md)")
      ->check(CLI::IsMember({"on", "off"}));
}

Result<DpdkEnv*> NetbackService::init_dpdk(const Options& opts) noexcept {
  try {
    DpdkEnvOptions eo;
    eo.eal_args = split_args(opts.eal_args);
    return DpdkEnv::init(eo);
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

Result<std::unique_ptr<NetbackService>> NetbackService::create(BackendDaemon& daemon, const Options& opts) noexcept {
  try {
    std::unique_ptr<NetbackService> s(new NetbackService());
    s->type_name_ = opts.vif.type_name;
    XP_ASSIGN_OR_RETURN(s->env_, init_dpdk(opts));
    XP_ASSIGN_OR_RETURN(s->pool_, s->env_->create_pool(opts.pool));
    for (Reactor* r : daemon.workers()) {
      Status reg = ok();
      r->call([&] { reg = s->env_->register_thread(); });
      if (!reg) spdlog::warn("worker {}: no DPDK lcore ({}): pool caches unused", r->name(), error_string(reg.error()));
    }
    XP_TRY(s->workers_.open(daemon.workers(), daemon.platform()));
    VifPortFactory ports = opts.ports;
    if (!ports) {
      const std::string tmpl = opts.port_template.empty() ? std::string(kDefaultVifDevargs) : opts.port_template;
      // A template typo fails now, not at the first guest.
      if (auto t = expand_devargs(tmpl, 1, 0); !t) {
        spdlog::critical("--port-template '{}': bad placeholder", tmpl);
        return unexpected(EINVAL);
      }
      ports = dpdk_vif_port_factory(*s->env_, *s->pool_, tmpl, DpdkPortConfig{});
    }
    BackendDaemon* d = &daemon;
    XP_TRY(daemon.add_type(std::make_unique<VifDeviceType>(s->workers(), *s->pool_, std::move(ports), opts.vif,
                                                           daemon.device_error_sink())));
    const NetbackService* self = s.get();
    daemon.add_stats([self, d](nlohmann::json& j) { self->add_stats(j, d->driver()); });
    // Every VIF is disconnected (its port closed) by now; the workers' DPDK
    // lcores go while the reactors still run.
    DpdkEnv* env = s->env_;
    daemon.add_stop_hook([d, env] {
      for (Reactor* r : d->workers()) r->call([env] { env->unregister_thread(); });
    });
    return s;
  } catch (...) {
    return unexpected(ENOMEM);
  }
}

void NetbackService::add_stats(nlohmann::json& j, const BackendDriver& driver) const {
  j["mapped_grant_pages"] = mapped_pages();
  j["packet_buffers_in_use"] = pool_->in_use();
  nlohmann::json vifs = nlohmann::json::array();
  driver.for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& dev) {
    if (a.type != type_name_) return;
    vifs.push_back(vif_json(a, st, static_cast<const VifDevice&>(dev)));
  });
  j["vifs"] = std::move(vifs);
}

}  // namespace xenpath
