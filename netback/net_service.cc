#include "netback/net_service.h"

#include <spdlog/spdlog.h>

#include <sstream>

#include "netback/link_netlink.h"

namespace xenpath {
namespace {

std::vector<std::string> split_args(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string a; in >> a;) out.push_back(a);
  return out;
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
  app.add_option(
      "--port-template", opts.port_template,
      "DPDK devargs per VIF, {domid}/{devid}/{queues} expanded (default: " + std::string(kVhostNetVifDevargs) +
          " when /dev/vhost-net opens, else " + std::string(kTapVifDevargs) + ")");
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
  app.add_option_function<std::string>(
         "--vif-link", [&opts](const std::string& v) { opts.vif_link = v == "on"; },
         "attach each VIF's dom0 interface to the bridge named by the toolstack's `bridge` key, set its MTU "
         "(`mtu` key, else the bridge's) and bring it up, through rtnetlink (default: on; off leaves the interface "
         "to udev or the operator)")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--vif-hook", opts.vif_hook,
                 "instead of rtnetlink, run this executable as `HOOK add|remove <ifname> <bridge>` (environment: "
                 "XENPATH_DOMID, XENPATH_DEVID, XENPATH_MTU, XENPATH_IP, XENBUS_PATH, vif), e.g. for Open vSwitch")
      ->check(CLI::ExistingFile);
  app.add_option("--vif-hook-timeout-ms", opts.vif_hook_timeout_ms,
                 "a --vif-hook run longer than this is killed and counted as failed (default: 10000)")
      ->check(CLI::Range(1u, 600'000u));
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
      std::string tmpl = opts.port_template;
      if (tmpl.empty()) {
        std::string why;
        tmpl = default_vif_devargs(&why);
        if (tmpl == kVhostNetVifDevargs) {
          spdlog::info("VIF ports: virtio_user over vhost-net (TSO and checksum offloads into dom0's stack)");
        } else {
          spdlog::warn("VIF ports: net_tap fallback, no offloads and a system call per frame ({})", why);
        }
      }
      // A template typo fails now, not at the first guest.
      if (auto t = expand_devargs(tmpl, 1, 0); !t) {
        spdlog::critical("--port-template '{}': bad placeholder", tmpl);
        return unexpected(EINVAL);
      }
      ports = dpdk_vif_port_factory(*s->env_, *s->pool_, tmpl, DpdkPortConfig{});
    }
    // opts.vif.link set: the caller's own (a test's, in its network namespace).
    VifOptions vif = opts.vif;
    if (vif.link == nullptr && !opts.vif_hook.empty()) {
      s->link_ = std::make_unique<VifLinkHook>(opts.vif_hook, std::chrono::milliseconds(opts.vif_hook_timeout_ms));
    } else if (vif.link == nullptr && opts.vif_link) {
      s->link_ = std::make_unique<RtnlVifLink>();  // its socket opens at the first attach
    }
    if (s->link_) vif.link = s->link_.get();
    BackendDaemon* d = &daemon;
    XP_TRY(daemon.add_type(std::make_unique<VifDeviceType>(s->workers(), *s->pool_, std::move(ports), std::move(vif),
                                                           daemon.device_error_sink())));
    const NetbackService* self = s.get();
    daemon.add_stats([self, d](nlohmann::json& j) { self->add_stats(j, d->driver()); });
    daemon.add_metrics(&NetbackService::add_metrics);
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
  j["vifs"] = driver.describe_devices(type_name_);
  if (link_) {
    const VifLinkStats& l = link_->stats();
    j["vif_link"] = {{"mode", link_->mode()},
                     {"attached", l.attached},
                     {"unattached", l.unattached},
                     {"failures", l.failures},
                     {"requests", l.requests}};
  }
}

void NetbackService::add_metrics(const nlohmann::json& stats, MetricSet& out) {
  auto vifs = stats.find("vifs");
  if (vifs == stats.end() || !vifs->is_array()) return;
  // Directions as the guest sees them (libvirt's exporter does the same):
  // receive = what the backend delivered to the guest (its RX ring),
  // transmit = what the guest sent (its TX ring).
  struct Family {
    const char* name;
    const char* help;
    std::initializer_list<const char*> keys;  // per-queue counters summed
  };
  static const Family kCounters[] = {
      {"xenpath_vif_receive_bytes_total", "bytes delivered to the guest", {"rx_bytes"}},
      {"xenpath_vif_receive_packets_total", "packets delivered to the guest", {"rx_packets"}},
      {"xenpath_vif_receive_drops_total",
       "packets for the guest dropped (too big, filtered, no buffers, stalled)",
       {"rx_dropped", "rx_expired", "rx_stall_dropped"}},
      {"xenpath_vif_transmit_bytes_total", "bytes the guest sent", {"tx_bytes"}},
      {"xenpath_vif_transmit_packets_total", "packets the guest sent", {"tx_packets"}},
      {"xenpath_vif_transmit_drops_total",
       "packets from the guest dropped (bad chains, grants, port refused)",
       {"tx_dropped", "tx_port_dropped"}},
      {"xenpath_vif_transmit_rate_limited_total", "times the guest's TX waited for rate credit", {"tx_rate_limited"}},
  };
  for (const auto& v : *vifs) {
    const MetricSet::Labels dev = {{"domain", std::to_string(v.value("frontend", 0))},
                                   {"device", std::to_string(v.value("devid", 0))}};
    out.gauge("xenpath_vif_connected", "1 while the VIF's rings are connected", dev, v.value("connected", false));
    const nlohmann::json* qs = nullptr;
    if (auto it = v.find("queues"); it != v.end() && it->is_array()) qs = &*it;
    for (const Family& f : kCounters) {
      double sum = 0;
      for (size_t q = 0; qs != nullptr && q < qs->size(); ++q) {
        for (const char* k : f.keys) sum += (*qs)[q].value(k, 0.0);
      }
      out.counter(f.name, f.help, dev, sum);
    }
    for (size_t q = 0; qs != nullptr && q < qs->size(); ++q) {
      MetricSet::Labels ql = dev;
      ql["queue"] = std::to_string(q);
      out.gauge("xenpath_vif_queue_rx_stalled", "1 while a queue's guest posts no receive buffers", ql,
                (*qs)[q].value("rx_stalled", false));
    }
  }
}

}  // namespace xenpath
