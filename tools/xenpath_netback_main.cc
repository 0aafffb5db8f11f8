// xenpath-netback: the netif backend daemon (the "vif" device type).
//
//   xenpath-netback [--platform auto|xen|sim] [--workers N]
//                   [--port-template DEVARGS] [--eal-args ARGS] [--rx-gro on|off]
//                   [--stats-file PATH] [--stats-interval-ms N] [-v]
//
// --platform xen serves /local/domain/<self>/backend/vif through libxen
// (auto picks it when /dev/xen exists); each VIF gets a DPDK port from the
// devargs template, by default a net_tap interface vif<domid>.<devid> like
// kernel netback's, for the host's bridge/OVS to take. --platform sim runs
// the same daemon on the simulated host with a small demo: a few guests
// whose NICs transmit frames that a loopback wire (net_ring pairs, unless a
// --port-template is given) sends back to them; per-VIF packet rates are
// printed every second.
//
// The process skeleton is common/daemon.h's BackendDaemon (control reactor,
// workers, stats file, signals). SIGTERM/SIGINT: every VIF is disconnected
// (mappings and channels released), then the daemon exits. --stats-file is
// rewritten (atomically) every --stats-interval-ms with per-VIF, per-queue
// counters as JSON.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "common/daemon.h"
#include "common/log.h"
#include "common/reactor.h"
#include "common/sim/sim_host.h"
#include "common/sim/sim_toolstack.h"
#include "common/sim/sim_xenbus_frontend.h"
#include "common/xen/platform.h"
#include "netback/dpdk_port.h"
#include "netback/sim_netfront.h"
#include "netback/vif_device.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace xenpath;

// Tells the sim demo's guest threads to stop.
std::atomic<bool> g_stop{false};

struct Options {
  std::string platform = "auto";
  DaemonOptions daemon;
  VifOptions vif;
  std::string port_template;  // empty: net_tap vif<domid>.<devid> (xen), loopback rings (sim)
  std::string eal_args;
  std::string rx_gro = "on";
  unsigned stats_interval_ms = 1000;
  // Simulated host only.
  unsigned guests = 2;
  double seconds = 0;  // 0: until SIGTERM/SIGINT
};

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

// The sim demo's wire: each VIF's port is one end of a net_ring pair; this
// thread sends back whatever arrives on the other ends (a loopback switch).
class LoopbackWire {
 public:
  explicit LoopbackWire(DpdkEnv& env, PacketPool& pool) : env_(env), pool_(pool) {}
  ~LoopbackWire() { stop(); }

  VifPortFactory factory() {
    return [this](const DeviceAddress& a, uint16_t queues) -> Result<std::unique_ptr<PacketPort>> {
      if (queues != 1) return unexpected(EINVAL);  // one ring pair: one queue
      static std::atomic<unsigned> seq{0};
      auto pair = env_.open_ring_pair(pool_, fmt::format("lb{}_{}_{}", a.frontend_id, a.devid, seq++), DpdkPortConfig{});
      if (!pair) return unexpected(pair.error());
      std::lock_guard<std::mutex> lock(mu_);
      ends_.push_back(std::move((*pair)[1]));
      return std::move((*pair)[0]);
    };
  }

  void start() {
    thread_ = std::thread([this] {
      (void)env_.register_thread();
      while (!stop_.load()) {
        size_t moved = 0;
        {
          std::lock_guard<std::mutex> lock(mu_);
          for (auto& e : ends_) {
            PacketBuf* b[64];
            const size_t n = e->rx_burst(0, b);
            const size_t sent = n > 0 ? e->tx_burst(0, {b, n}) : 0;
            pkt::free_bulk({b + sent, n - sent});
            moved += n;
          }
        }
        if (moved == 0) std::this_thread::sleep_for(100us);
      }
      env_.unregister_thread();
    });
  }
  void stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& e : ends_) {
      PacketBuf* b[64];
      for (size_t n; (n = e->rx_burst(0, b)) > 0;) pkt::free_bulk({b, n});
    }
    ends_.clear();
  }

 private:
  DpdkEnv& env_;
  PacketPool& pool_;
  std::mutex mu_;
  std::vector<std::unique_ptr<PacketPort>> ends_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

struct GuestLoad {
  DomId domid = 0;
  std::atomic<uint64_t> tx{0};
  std::atomic<uint64_t> rx{0};
  std::atomic<bool> connected{false};
  std::atomic<bool> failed{false};
  uint64_t shown_tx = 0;
  uint64_t shown_rx = 0;
};

// One simulated guest: netfront's handshake, then frames out and back.
void run_guest(sim::SimHost& h, GuestLoad& load) {
  const DomId domid = load.domid;
  auto ev = h.open_event_channel(domid);
  auto gxs = h.open_xenstore(domid);
  sim::SimDomain* dom = h.domain(domid);
  if (!ev || !gxs || dom == nullptr) {
    load.failed = true;
    return;
  }
  auto xb = sim::SimXenbusFrontend::attach(**gxs, sim::SimToolstack::frontend_path(domid, "vif", 0), 5s);
  auto nf = sim::SimNetfront::create(*dom, **ev, {});
  if (!xb || !nf) {
    load.failed = true;
    return;
  }
  sim::SimNetfront& f = **nf;
  const sim::XsKeys keys = {{"tx-ring-ref", std::to_string(f.tx_ring_ref())},
                            {"rx-ring-ref", std::to_string(f.rx_ring_ref())},
                            {"event-channel", std::to_string(f.tx_port())},
                            {"request-rx-copy", "1"},
                            {"feature-rx-notify", "1"},
                            {"feature-sg", "1"}};
  if (auto st = (*xb)->connect(keys); !st) {
    spdlog::error("guest {}: connect: {}", domid, error_string(st.error()));
    load.failed = true;
    return;
  }
  load.connected = true;
  // A UDP frame to the broadcast address, source the guest's MAC.
  std::vector<uint8_t> frame(1000, 0);
  std::fill(frame.begin(), frame.begin() + 6, uint8_t{0xff});
  const uint8_t src[6] = {0x00, 0x16, 0x3e, 0, 0, static_cast<uint8_t>(domid)};
  std::copy(src, src + 6, frame.begin() + 6);
  frame[12] = 0x08;
  frame[13] = 0x00;
  sim::SimNetfront::TxFrame tx;
  tx.bytes = frame;
  std::vector<netif_tx_response> answers;
  std::vector<sim::SimNetfront::RxFrame> received;
  while (!g_stop.load()) {
    bool progress = false;
    for (int i = 0; i < 32 && f.tx_in_flight() < 128; ++i) {
      if (!f.send(tx)) break;
      progress = true;
    }
    progress |= f.post_rx(256) > 0;
    answers.clear();
    received.clear();
    const unsigned a = f.reap_tx(answers);
    const unsigned r = f.reap_rx(received);
    load.tx.fetch_add(a, std::memory_order_relaxed);
    load.rx.fetch_add(r, std::memory_order_relaxed);
    if (!progress && a == 0 && r == 0) std::this_thread::sleep_for(50us);
  }
  (void)(*xb)->close();
  nf->reset();
}

// Everything the daemon owns for netif: DPDK, the packet pool, a NetWorker
// per worker reactor, the loopback wire of the sim demo.
struct Netback {
  DpdkEnv* env = nullptr;
  std::unique_ptr<PacketPool> pool;
  std::vector<std::unique_ptr<NetWorker>> workers;
  std::unique_ptr<LoopbackWire> wire;
};

Result<std::unique_ptr<BackendDaemon>> start_daemon(XenPlatform& platform, const Options& opt, bool sim,
                                                    Netback& nb) {
  DpdkEnvOptions eo;
  eo.eal_args = split_args(opt.eal_args);
  XP_ASSIGN_OR_RETURN(nb.env, DpdkEnv::init(eo));
  DpdkPoolConfig pc;
  pc.name = "netback";
  XP_ASSIGN_OR_RETURN(nb.pool, nb.env->create_pool(pc));
  DaemonOptions dopt = opt.daemon;
  dopt.uring_entries = 0;  // netback's workers need no io_uring
  XP_ASSIGN_OR_RETURN(auto daemon, BackendDaemon::create(platform, dopt));
  std::vector<NetWorker*> wptrs;
  for (Reactor* r : daemon->workers()) {
    Status reg = ok();
    r->call([&] { reg = nb.env->register_thread(); });
    if (!reg) spdlog::warn("worker {}: no DPDK lcore ({}): pool caches unused", r->name(), error_string(reg.error()));
    XP_ASSIGN_OR_RETURN(auto w, NetWorker::create(*r, platform));
    wptrs.push_back(w.get());
    nb.workers.push_back(std::move(w));
  }
  VifPortFactory ports;
  VifOptions vo = opt.vif;
  if (sim && opt.port_template.empty()) {
    nb.wire = std::make_unique<LoopbackWire>(*nb.env, *nb.pool);
    ports = nb.wire->factory();
    vo.max_queues = 1;  // one ring pair per VIF
    nb.wire->start();
  } else {
    const std::string tmpl = opt.port_template.empty() ? std::string(kDefaultVifDevargs) : opt.port_template;
    // A template typo fails now, not at the first guest.
    if (auto t = expand_devargs(tmpl, 1, 0); !t) {
      spdlog::critical("--port-template '{}': bad placeholder", tmpl);
      return unexpected(EINVAL);
    }
    ports = dpdk_vif_port_factory(*nb.env, *nb.pool, tmpl, DpdkPortConfig{});
  }
  BackendDaemon* d = daemon.get();
  XP_TRY(daemon->add_type(std::make_unique<VifDeviceType>(
      wptrs, *nb.pool, ports, vo, [d](const DeviceAddress& a, int err) { d->report_device_error(a, err); })));
  const std::string type_name = vo.type_name;
  daemon->add_stats([d, &nb, type_name](nlohmann::json& j) {
    uint64_t mapped = 0;
    for (auto& w : nb.workers) mapped += w->grant_table().mapped_pages();
    j["mapped_grant_pages"] = mapped;
    j["packet_buffers_in_use"] = nb.pool->in_use();
    nlohmann::json vifs = nlohmann::json::array();
    d->driver().for_each_device([&](const DeviceAddress& a, XenbusState st, BackendDevice& dev) {
      if (a.type != type_name) return;
      vifs.push_back(vif_json(a, st, static_cast<const VifDevice&>(dev)));
    });
    j["vifs"] = std::move(vifs);
  });
  XP_TRY(daemon->start());
  return daemon;
}

void stop_daemon(std::unique_ptr<BackendDaemon>& daemon, Netback& nb) {
  if (daemon) {
    // Every VIF disconnected (its port closed) while the workers still run,
    // then their DPDK lcores go, then the reactors.
    daemon->control().call([&] { daemon->driver().stop(); });
    for (Reactor* r : daemon->workers()) r->call([&] { nb.env->unregister_thread(); });
    daemon->stop();
  }
  nb.workers.clear();  // after the reactors stopped: nothing runs on them now
  if (nb.wire) nb.wire->stop();
  daemon.reset();
}

int run_xen(const Options& opt) {
  auto platform = open_libxen_platform();
  if (!platform) {
    spdlog::critical("cannot open the Xen interfaces: {}", error_string(platform.error()));
    return 2;
  }
  Netback nb;
  auto daemon = start_daemon(**platform, opt, false, nb);
  if (!daemon) {
    spdlog::critical("cannot start: {}", error_string(daemon.error()));
    return 2;
  }
  fmt::print("xenpath-netback: serving backend/{} of domain {} ({} workers); SIGTERM to stop\n",
             opt.vif.type_name, (*platform)->self(), (*daemon)->workers().size());
  std::fflush(stdout);
  const int sig = wait_for_termination(1s, [] { return true; });
  spdlog::info("signal {}: disconnecting every vif", sig);
  stop_daemon(*daemon, nb);
  return 0;
}

int run_sim(const Options& opt) {
  auto h = sim::SimHost::create({});
  if (!h) {
    spdlog::critical("simulated host: {}", error_string(h.error()));
    return 2;
  }
  sim::SimHost& host = **h;
  auto platform = sim::make_sim_platform(host);
  fmt::print("xenpath-netback on the simulated host (xenstored: {})\n", host.xenstored_path());
  Netback nb;
  auto daemon = start_daemon(*platform, opt, true, nb);
  if (!daemon) {
    spdlog::critical("cannot start: {}", error_string(daemon.error()));
    return 2;
  }
  auto t = host.open_xenstore(kDom0);
  if (!t) return 2;
  sim::SimToolstack tool(**t);
  std::vector<std::unique_ptr<GuestLoad>> loads;
  for (unsigned g = 0; g < opt.guests; ++g) {
    const DomId domid = static_cast<DomId>(g + 1);
    if (!host.create_domain(domid, 4096, fmt::format("guest{}", domid))) return 2;
    const std::string mac = fmt::format("00:16:3e:00:00:{:02x}", domid & 0xff);
    if (auto r = tool.add_device("vif", domid, 0, kDom0,
                                 {{"mac", mac}, {"handle", "0"}, {"script", "/bin/true"}, {"type", "vif"}},
                                 {{"mac", mac}, {"handle", "0"}});
        !r) {
      spdlog::critical("add vif {}/0: {}", domid, error_string(r.error()));
      return 2;
    }
    auto l = std::make_unique<GuestLoad>();
    l->domid = domid;
    loads.push_back(std::move(l));
  }
  std::vector<std::thread> guests;
  for (auto& l : loads) guests.emplace_back([&host, &load = *l] { run_guest(host, load); });

  const auto t0 = Clock::now();
  auto last = t0;
  const int sig = wait_for_termination(1s, [&] {
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    fmt::print("[{:6.1f}s]", std::chrono::duration<double>(now - t0).count());
    bool failed = false;
    for (auto& l : loads) {
      const uint64_t tx = l->tx.load(), rx = l->rx.load();
      fmt::print("  vif{}.0 {}: tx {:.0f} pps rx {:.0f} pps", l->domid,
                 l->failed ? "failed" : (l->connected ? "up" : "connecting"),
                 static_cast<double>(tx - l->shown_tx) / dt, static_cast<double>(rx - l->shown_rx) / dt);
      l->shown_tx = tx;
      l->shown_rx = rx;
      failed |= l->failed.load();
    }
    fmt::print("\n");
    std::fflush(stdout);
    return !failed && (opt.seconds <= 0 || now - t0 < std::chrono::duration<double>(opt.seconds));
  });
  g_stop.store(true);
  for (auto& t : guests) t.join();
  // The toolstack removes the NICs; then nothing may be left.
  for (auto& l : loads) (void)tool.remove_device("vif", l->domid, 0, kDom0, 5s);
  nlohmann::json stats;
  for (int i = 0; i < 500; ++i) {
    stats = (*daemon)->stats();
    if (stats["xenbus"]["devices"] == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  stop_daemon(*daemon, nb);
  const uint64_t live = host.counters().mapped_pages_live.load();
  uint64_t tx = 0, rx = 0;
  bool clean = live == 0 && stats["xenbus"]["devices"] == 0 && stats["mapped_grant_pages"] == 0;
  for (auto& l : loads) {
    tx += l->tx.load();
    rx += l->rx.load();
    clean = clean && !l->failed;
  }
  fmt::print("summary: {} frames sent, {} received back{}; devices left {}, grant pages still mapped {} -> {}\n", tx,
             rx, sig ? " (interrupted)" : "", stats["xenbus"]["devices"].get<uint64_t>(), live,
             clean ? "OK" : "FAILED");
  return clean ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath-netback: the netif backend daemon (Xen when /dev/xen exists, else the simulated host)"};
  Options opt;
  opt.daemon.name = "xenpath-netback";
  opt.daemon.workers = 1;
  bool verbose = false;
  app.add_option("--platform", opt.platform, "auto (Xen when /dev/xen exists), xen or sim")
      ->check(CLI::IsMember({"auto", "xen", "sim"}));
  app.add_option("--workers", opt.daemon.workers, "worker reactors (datapath threads); 0: one per CPU");
  app.add_option("--first-cpu", opt.daemon.first_cpu, "pin worker i to CPU first-cpu + i");
  app.add_option("--port-template", opt.port_template,
                 "DPDK devargs per VIF, {domid}/{devid} expanded (default: " + std::string(kDefaultVifDevargs) +
                     "; sim: a loopback wire)");
  app.add_option("--eal-args", opt.eal_args, "the complete EAL argument list (default: --no-huge --no-pci ...)");
  app.add_option("--max-queues", opt.vif.max_queues, "multi-queue-max-queues (0: one per worker)");
  app.add_option("--tx-copy-below", opt.vif.tx_limits.copy_below,
                 "guest TX: grant-copy a slot's bytes (past the 128 copied header bytes) when fewer than this, "
                 "grant-map them otherwise; 0 maps every remainder, as Linux netback (default: copy all, the "
                 "crossover measured on the simulated host; docs/netback-perf.md)")
      ->check(CLI::Range(0, 4097));
  app.add_option("--rx-gro", opt.rx_gro,
                 "guest RX: coalesce a port burst's in-sequence TCP/IPv4 frames of a flow into one GSO packet "
                 "for frontends with feature-gso-tcpv4 (default: on; docs/netback-perf.md)")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--stats-file", opt.daemon.stats_file, "JSON stats document, rewritten every interval");
  app.add_option("--stats-interval-ms", opt.stats_interval_ms, "stats file interval")->check(CLI::Range(50, 3600000));
  app.add_flag("-v,--verbose", verbose, "info logging (default: warnings)");
  auto* sim_opts = app.add_option_group("simulated host", "used with --platform sim (or auto without Xen)");
  sim_opts->add_option("--guests", opt.guests, "simulated guests, one vif each")->check(CLI::Range(1, 64));
  sim_opts->add_option("--seconds", opt.seconds, "stop after this long (0: on SIGTERM/SIGINT)")
      ->check(CLI::Range(0.0, 86400.0));
  CLI11_PARSE(app, argc, argv);
  opt.daemon.stats_interval = std::chrono::milliseconds(opt.stats_interval_ms);
  opt.vif.rx_gro = opt.rx_gro == "on";
  log_init(verbose ? "info" : "warn");
  // Before any thread (EAL's included): the signals reach only this one.
  block_termination_signals();
  const bool sim = opt.platform == "sim" || (opt.platform == "auto" && !xen_available());
  return sim ? run_sim(opt) : run_xen(opt);
}
