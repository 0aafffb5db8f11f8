// xenpath-netback: the netif backend daemon (the "vif" device type).
//
//   xenpath-netback [--platform auto|xen|sim] [--workers N]
//                   [--port-template DEVARGS] [--eal-args ARGS]
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
// SIGTERM/SIGINT: every VIF is disconnected (mappings and channels
// released), then the daemon exits. --stats-file is rewritten (atomically)
// every --stats-interval-ms with per-VIF, per-queue counters as JSON.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/reactor.h"
#include "common/sim/sim_host.h"
#include "common/sim/sim_toolstack.h"
#include "common/sim/sim_xenbus_frontend.h"
#include "common/xen/platform.h"
#include "common/xenbus/backend_driver.h"
#include "netback/dpdk_port.h"
#include "netback/sim_netfront.h"
#include "netback/vif_device.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace xenpath;

std::atomic<bool> g_stop{false};

struct Options {
  std::string platform = "auto";
  unsigned workers = 1;
  std::string port_template;  // empty: net_tap vif<domid>.<devid> (xen), loopback rings (sim)
  std::string eal_args;
  std::string stats_file;
  unsigned stats_interval_ms = 1000;
  bool verbose = false;
  // sim demo
  unsigned guests = 2;
  double seconds = 0;  // 0: until SIGTERM/SIGINT
};

std::vector<std::string> split_args(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string a; in >> a;) out.push_back(a);
  return out;
}

nlohmann::json vif_stats(const VifRegistry& reg) {
  nlohmann::json vifs = nlohmann::json::array();
  reg.for_each([&](const VifDevice& d) {
    nlohmann::json v;
    v["domid"] = d.address().frontend_id;
    v["devid"] = d.address().devid;
    v["connected"] = d.connected();
    if (d.mac()) v["mac"] = d.mac()->str();
    nlohmann::json qs = nlohmann::json::array();
    for (size_t i = 0; i < d.queue_count(); ++i) {
      const VifQueueStats& s = d.queue_stats(i);
      nlohmann::json q;
      q["tx_packets"] = s.tx_packets.get();
      q["tx_bytes"] = s.tx_bytes.get();
      q["tx_dropped"] = s.tx_dropped.get();
      q["tx_port_dropped"] = s.tx_port_dropped.get();
      q["tx_rate_limited"] = s.tx_rate_limited.get();
      q["tx_multicast"] = s.tx_multicast.get();
      q["tx_headers_pulled"] = s.tx_headers_pulled.get();
      q["rx_packets"] = s.rx_packets.get();
      q["rx_bytes"] = s.rx_bytes.get();
      q["rx_dropped"] = s.rx_dropped.get();
      q["rx_expired"] = s.rx_expired.get();
      q["rx_stall_dropped"] = s.rx_stall_dropped.get();
      q["rx_stalls"] = s.rx_stalls.get();
      q["rx_stalled"] = s.rx_stalled.get() != 0;
      q["rx_copy_failures"] = s.rx_copy_failures.get();
      q["halted"] = s.tx_ring.halted.get() != 0 || s.rx_ring.halted.get() != 0;
      qs.push_back(std::move(q));
    }
    v["queues"] = std::move(qs);
    vifs.push_back(std::move(v));
  });
  return vifs;
}

void write_stats(const std::string& path, const VifRegistry& reg, const BackendDriverStats& ds) {
  nlohmann::json j;
  j["daemon"] = "xenpath-netback";
  j["time"] = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  j["driver"] = {{"devices", ds.devices.get()},       {"connected", ds.connected.get()},
                 {"connects", ds.connects.get()},     {"connect_failures", ds.connect_failures.get()},
                 {"disconnects", ds.disconnects.get()}, {"xs_errors", ds.xs_errors.get()}};
  j["vifs"] = vif_stats(reg);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << j.dump(2) << "\n";
    if (!out) {
      spdlog::warn("stats file {}: write failed", tmp);
      return;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) spdlog::warn("stats file {}: rename failed", path);
}

std::unique_ptr<Reactor> make_reactor(const std::string& name) {
  Reactor::Options o;
  o.name = name;
  o.uring_entries = 0;
  auto r = Reactor::create(o);
  if (!r) {
    spdlog::critical("reactor {}: {}", name, error_string(r.error()));
    return nullptr;
  }
  return std::move(*r);
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

int run(const Options& opt) {
  const bool sim = opt.platform == "sim" || (opt.platform == "auto" && !xen_available());
  std::unique_ptr<sim::SimHost> host;
  std::unique_ptr<XenPlatform> platform;
  if (sim) {
    auto h = sim::SimHost::create({});
    if (!h) {
      spdlog::critical("simulated host: {}", error_string(h.error()));
      return 2;
    }
    host = std::move(*h);
    platform = sim::make_sim_platform(*host);
    fmt::print("xenpath-netback on the simulated host (xenstored: {})\n", host->xenstored_path());
  } else {
    auto p = open_libxen_platform();
    if (!p) {
      spdlog::critical("Xen platform: {}", error_string(p.error()));
      return 2;
    }
    platform = std::move(*p);
  }

  DpdkEnvOptions eo;
  eo.eal_args = split_args(opt.eal_args);
  auto env = DpdkEnv::init(eo);
  if (!env) {
    spdlog::critical("DPDK EAL: {}", error_string(env.error()));
    return 2;
  }
  DpdkPoolConfig pc;
  pc.name = "netback";
  auto pool = (*env)->create_pool(pc);
  if (!pool) {
    spdlog::critical("DPDK pool: {}", error_string(pool.error()));
    return 2;
  }

  auto control = make_reactor("xp-net-control");
  if (!control || !control->start()) return 2;
  std::vector<std::unique_ptr<Reactor>> reactors;
  std::vector<std::unique_ptr<NetWorker>> workers;
  std::vector<NetWorker*> wptrs;
  for (unsigned i = 0; i < opt.workers; ++i) {
    auto r = make_reactor(fmt::format("xp-net{}", i));
    if (!r || !r->start()) return 2;
    Status reg = ok();
    r->call([&] { reg = (*env)->register_thread(); });
    if (!reg) spdlog::warn("worker {}: no DPDK lcore ({}): pool caches unused", i, error_string(reg.error()));
    auto w = NetWorker::create(*r, *platform);
    if (!w) {
      spdlog::critical("worker {}: {}", i, error_string(w.error()));
      return 2;
    }
    reactors.push_back(std::move(r));
    workers.push_back(std::move(*w));
    wptrs.push_back(workers.back().get());
  }

  std::unique_ptr<LoopbackWire> wire;
  VifPortFactory ports;
  if (sim && opt.port_template.empty()) {
    wire = std::make_unique<LoopbackWire>(**env, **pool);
    ports = wire->factory();
    wire->start();
  } else {
    const std::string tmpl = opt.port_template.empty() ? std::string(kDefaultVifDevargs) : opt.port_template;
    // Fail early on a template typo rather than at the first guest.
    if (auto t = expand_devargs(tmpl, 1, 0); !t) {
      spdlog::critical("--port-template '{}': bad placeholder", tmpl);
      return 2;
    }
    ports = dpdk_vif_port_factory(**env, **pool, tmpl, DpdkPortConfig{});
  }

  auto xs = platform->open_xenstore();
  if (!xs) {
    spdlog::critical("xenstore: {}", error_string(xs.error()));
    return 2;
  }
  BackendDriver::Options dopt;
  dopt.self = platform->self();
  auto driver = std::make_unique<BackendDriver>(std::move(*xs), dopt);
  VifRegistry registry;
  BackendDriver* d = driver.get();
  VifOptions vo;
  if (sim && wire) vo.max_queues = 1;
  if (auto st = driver->add_type(std::make_unique<VifDeviceType>(
          wptrs, **pool, ports, vo,
          [d](const DeviceAddress& a, int err) { d->report_device_error(a.type, a.frontend_id, a.devid, err); },
          &registry));
      !st) {
    spdlog::critical("vif type: {}", error_string(st.error()));
    return 2;
  }
  Status started = ok();
  control->call([&] {
    started = driver->start();
    if (started) started = driver->attach(*control);
  });
  if (!started) {
    spdlog::critical("backend driver: {}", error_string(started.error()));
    return 2;
  }
  spdlog::info("serving vif devices with {} worker(s)", opt.workers);

  // The sim demo's guests.
  std::vector<std::unique_ptr<GuestLoad>> loads;
  std::vector<std::thread> guests;
  std::unique_ptr<XenStore> tools_xs;
  if (sim) {
    auto t = host->open_xenstore(kDom0);
    if (!t) return 2;
    tools_xs = std::move(*t);
    sim::SimToolstack tool(*tools_xs);
    for (unsigned g = 0; g < opt.guests; ++g) {
      const DomId domid = static_cast<DomId>(g + 1);
      if (!host->create_domain(domid, 4096, fmt::format("guest{}", domid))) return 2;
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
    for (auto& l : loads) guests.emplace_back([&h = *host, &load = *l] { run_guest(h, load); });
  }

  const auto t0 = Clock::now();
  auto last_stats = t0;
  auto last_print = t0;
  while (!g_stop.load()) {
    std::this_thread::sleep_for(50ms);
    const auto now = Clock::now();
    if (opt.seconds > 0 && now - t0 >= std::chrono::duration<double>(opt.seconds)) g_stop.store(true);
    if (!opt.stats_file.empty() && now - last_stats >= std::chrono::milliseconds(opt.stats_interval_ms)) {
      write_stats(opt.stats_file, registry, driver->stats());
      last_stats = now;
    }
    if (sim && now - last_print >= 1s) {
      const double dt = std::chrono::duration<double>(now - last_print).count();
      last_print = now;
      fmt::print("[{:6.1f}s]", std::chrono::duration<double>(now - t0).count());
      for (auto& l : loads) {
        const uint64_t tx = l->tx.load(), rx = l->rx.load();
        fmt::print("  vif{}.0 {}: tx {:.0f} pps rx {:.0f} pps", l->domid,
                   l->failed ? "failed" : (l->connected ? "up" : "connecting"),
                   static_cast<double>(tx - l->shown_tx) / dt, static_cast<double>(rx - l->shown_rx) / dt);
        l->shown_tx = tx;
        l->shown_rx = rx;
      }
      fmt::print("\n");
      std::fflush(stdout);
    }
  }
  spdlog::info("stopping: disconnecting every vif");
  for (auto& t : guests) t.join();
  control->call([&] { driver->stop(); });
  if (!opt.stats_file.empty()) write_stats(opt.stats_file, registry, driver->stats());
  control->call([&] { driver.reset(); });
  control->stop();
  if (wire) wire->stop();
  workers.clear();
  for (auto& r : reactors) {
    r->call([&] { (*env)->unregister_thread(); });
    r->stop();
  }
  bool clean = true;
  if (host) {
    const uint64_t live = host->counters().mapped_pages_live.load();
    clean = live == 0;
    uint64_t tx = 0, rx = 0;
    for (auto& l : loads) {
      tx += l->tx.load();
      rx += l->rx.load();
      clean = clean && !l->failed;
    }
    fmt::print("summary: {} frames sent, {} received back; grant pages still mapped {} -> {}\n", tx, rx, live,
               clean ? "OK" : "FAILED");
  }
  return clean ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath-netback: the netif backend (vif devices) over DPDK"};
  Options opt;
  app.add_option("--platform", opt.platform, "auto (xen when /dev/xen exists, else sim), xen or sim")
      ->check(CLI::IsMember({"auto", "xen", "sim"}));
  app.add_option("--workers", opt.workers, "datapath worker reactors")->check(CLI::Range(1, 256));
  app.add_option("--port-template", opt.port_template,
                 "DPDK devargs per VIF, {domid}/{devid} expanded (default: " + std::string(kDefaultVifDevargs) +
                     "; sim: a loopback wire)");
  app.add_option("--eal-args", opt.eal_args, "the complete EAL argument list (default: --no-huge --no-pci ...)");
  app.add_option("--stats-file", opt.stats_file, "rewrite this JSON file with per-VIF counters");
  app.add_option("--stats-interval-ms", opt.stats_interval_ms, "stats file period")->check(CLI::Range(10, 3600000));
  app.add_flag("-v,--verbose", opt.verbose, "log at info level");
  app.add_option("--sim-guests", opt.guests, "sim: simulated guests with one vif each")->check(CLI::Range(0, 64));
  app.add_option("--sim-seconds", opt.seconds, "sim: stop after this long (0: on SIGTERM/SIGINT)")
      ->check(CLI::Range(0.0, 86400.0));
  CLI11_PARSE(app, argc, argv);
  log_init(opt.verbose ? "info" : "warn");
  signal(SIGINT, [](int) { g_stop.store(true); });
  signal(SIGTERM, [](int) { g_stop.store(true); });
  signal(SIGPIPE, SIG_IGN);
  return run(opt);
}
