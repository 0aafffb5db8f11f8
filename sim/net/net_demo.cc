// `xenpath-sim netback`: xenpath-netback's daemon (BackendDaemon +
// NetbackService, the production code) on the simulated Xen host: a few
// guests whose netfronts transmit frames that a loopback wire (net_ring
// pairs, unless a --port-template is given) sends back to them; per-VIF
// packet rates every second; at the end the toolstack removes the NICs and
// the run checks that every mapping and device was released.
//
// Threads: the caller's thread reports and tears down; one thread per guest
// drives its netfront; the wire has its own thread; the daemon's reactors do
// the backend work.
#include "sim/net/net_demo.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/reactor.h"
#include "netback/net_service.h"
#include "sim/net/sim_netfront.h"
#include "sim/sim_demo.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenbus_frontend.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Tells the demo's guest threads to stop.
std::atomic<bool> g_stop{false};

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
      auto pair =
          env_.open_ring_pair(pool_, fmt::format("lb{}_{}_{}", a.frontend_id, a.devid, seq++), DpdkPortConfig{});
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
void run_guest(SimHost& h, GuestLoad& load) {
  const DomId domid = load.domid;
  auto guest = SimGuestHandles::open(h, domid);
  if (!guest) {
    load.failed = true;
    return;
  }
  auto xb = SimXenbusFrontend::attach(*guest->xs, SimToolstack::frontend_path(domid, "vif", 0), 5s);
  auto nf = SimNetfront::create(*guest->domain, *guest->evtchn, {});
  if (!xb || !nf) {
    load.failed = true;
    return;
  }
  SimNetfront& f = **nf;
  const XsKeys keys = {{"tx-ring-ref", std::to_string(f.tx_ring_ref())},
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
  SimNetfront::TxFrame tx;
  tx.bytes = frame;
  std::vector<netif_tx_response> answers;
  std::vector<SimNetfront::RxFrame> received;
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

}  // namespace

int run_netback_demo(const DaemonCli& cli, NetbackOptions nopt, const NetDemoOptions& opt) {
  auto demo = SimDemoHost::create();
  if (!demo) return 2;
  SimHost& host = (*demo)->host();
  fmt::print("xenpath-netback on the simulated host (xenstored: {})\n", host.xenstored_path());
  // Without a --port-template, each VIF's port is one end of a net_ring
  // pair whose other end the loopback wire owns (one queue per VIF).
  auto env = NetbackService::init_dpdk(nopt);
  if (!env) {
    spdlog::critical("DPDK: {}", error_string(env.error()));
    return 2;
  }
  // Declared so that, on every way out, the wire goes before the daemon (its
  // ring ends hold buffers of the service's pool) and the daemon (its ports
  // on the wire's rings) before the wire's pool.
  std::unique_ptr<PacketPool> wire_pool;
  ServedDaemon<NetbackService> nb;
  std::unique_ptr<LoopbackWire> wire;
  if (nopt.port_template.empty()) {
    DpdkPoolConfig pc;
    pc.name = "wire";
    auto pool = (*env)->create_pool(pc);
    if (!pool) {
      spdlog::critical("DPDK pool: {}", error_string(pool.error()));
      return 2;
    }
    wire_pool = std::move(*pool);
    wire = std::make_unique<LoopbackWire>(**env, *wire_pool);
    nopt.ports = wire->factory();
    nopt.vif.max_queues = 1;
    wire->start();
  }
  if (auto st = nb.start((*demo)->platform(), cli.daemon, nopt); !st) {
    spdlog::critical("cannot start: {}", error_string(st.error()));
    return 2;
  }
  SimToolstack& tool = (*demo)->tool();
  if (!(*demo)->create_guests(opt.run.guests, 4096)) return 2;
  std::vector<std::unique_ptr<GuestLoad>> loads;
  for (unsigned g = 0; g < opt.run.guests; ++g) {
    const DomId domid = SimDemoHost::guest_id(g);
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
    return !failed && (opt.run.seconds <= 0 || now - t0 < std::chrono::duration<double>(opt.run.seconds));
  });
  g_stop.store(true);
  for (auto& t : guests) t.join();
  // The toolstack removes the NICs; then nothing may be left.
  for (auto& l : loads) (void)tool.remove_device("vif", l->domid, 0, kDom0, 5s);
  nlohmann::json stats;
  for (int i = 0; i < 500; ++i) {
    stats = nb.daemon->stats();
    if (stats["xenbus"]["devices"] == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  // The wire's ring ends may hold buffers of the service's pool: they go first.
  if (wire) wire->stop();
  nb.stop();
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
  write_summary(opt.run.json, {{"sent", tx}, {"received", rx}, {"self_check", clean}});
  return clean ? 0 : 1;
}

void add_netback_demo_cli(CLI::App& app, NetDemoOptions& opt) { add_run_cli(app, opt.run, 64, 0.0); }

}  // namespace xenpath::sim
