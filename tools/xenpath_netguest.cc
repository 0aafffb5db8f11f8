// xenpath-netguest: one VIF end to end on the simulated host, with real
// traffic. A simulated guest's netfront is bridged to a tap device in a
// network namespace (SimTapGuest); the backend is the production VifQueue on
// a reactor; the VIF's port is the DPDK net_tap `vif<domid>.<devid>` that
// dpdk_port creates. Move that interface into another namespace, give both
// ends addresses, and programs on each side (ping, iperf3) talk through the
// netif rings, grant copies/maps and DPDK. perf/net_iperf.sh drives it.
//
// Runs until SIGINT/SIGTERM (or --seconds), then prints the counters as
// JSON on stdout.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "common/cpu_affinity.h"
#include "netback/net_queue.h"
#include "netback/port_dpdk.h"
#include "sim/net/sim_netfront.h"
#include "sim/net/sim_tap_guest.h"
#include "sim/sim_hypervisor.h"

namespace {

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop.store(true); }

}  // namespace

int main(int argc, char** argv) {
  using namespace xenpath;
  unsigned domid = 5, devid = 0;
  std::string guest_netns = "xpguest", guest_tap = "xpg0", ready_file, devargs_tmpl(default_vif_devargs());
  double seconds = 0;
  int backend_cpu = -1, guest_cpu = -1;
  unsigned copy_below = VifQueue::kTxCopyBelowDefault;
  bool zero_copy = true;
  unsigned port_poll_us = 100;
  bool offloads = true;
  std::string rx_gro = "on";
  CLI::App app{"a simulated guest bridged to a tap, through VifQueue to the DPDK vif port"};
  app.add_option("--domid", domid, "guest domain id (names the port vif<domid>.<devid>)")
      ->check(CLI::Range(1u, 32752u));
  app.add_option("--devid", devid, "device id");
  app.add_option("--guest-netns", guest_netns, "network namespace of the guest's tap (empty: this one)");
  app.add_option("--guest-tap", guest_tap, "name of the guest's tap");
  app.add_option("--devargs", devargs_tmpl, "DPDK devargs of the VIF port ({domid}, {devid} expanded)");
  app.add_option("--ready-file", ready_file, "created once both interfaces exist");
  app.add_option("--seconds", seconds, "stop after this long (0: at SIGINT/SIGTERM)");
  app.add_option("--backend-cpu", backend_cpu, "pin the backend reactor");
  app.add_option("--guest-cpu", guest_cpu, "pin the simulated guest");
  app.add_option("--copy-below", copy_below, "TX slot remainders below this are copied, others mapped")
      ->check(CLI::Range(0u, 65535u));
  app.add_flag("!--no-zero-copy", zero_copy, "copy every TX byte");
  app.add_flag("!--no-offloads", offloads, "guest without checksum offload and GSO (plain frames on its tap)");
  app.add_option("--rx-gro", rx_gro, "coalesce received TCP/IPv4 frames into GSO packets for the guest")
      ->check(CLI::IsMember({"on", "off"}));
  app.add_option("--port-poll-us", port_poll_us, "while idle, look for port packets this often")
      ->check(CLI::Range(10u, 100000u));
  CLI11_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  // The guest's tap first, while this is the only thread (setns is per thread anyway).
  auto tap = sim::open_tap(guest_tap, guest_netns, offloads);
  if (!tap) {
    std::fprintf(stderr, "cannot create tap %s in netns '%s': %s\n", guest_tap.c_str(), guest_netns.c_str(),
                 error_string(tap.error()).c_str());
    return 2;
  }
  auto env = DpdkEnv::init({});
  if (!env) {
    std::fprintf(stderr, "DPDK EAL: %s\n", error_string(env.error()).c_str());
    return 1;
  }
  DpdkPoolConfig pc;
  pc.name = "ng";
  pc.cache = 0;  // the reactor and this thread both allocate; no per-lcore caches
  auto pool = (*env)->create_pool(pc);
  if (!pool) {
    std::fprintf(stderr, "pool: %s\n", error_string(pool.error()).c_str());
    return 1;
  }
  auto devargs = expand_devargs(devargs_tmpl, static_cast<DomId>(domid), devid);
  if (!devargs) {
    std::fprintf(stderr, "bad --devargs\n");
    return 2;
  }
  DpdkPortConfig portc;
  portc.devargs = *devargs;
  auto port = (*env)->open_port(**pool, portc);
  if (!port) {
    std::fprintf(stderr, "port %s: %s\n", devargs->c_str(), error_string(port.error()).c_str());
    return 1;
  }

  const DomId guest_id = static_cast<DomId>(domid);
  sim::SimHypervisor hv;
  auto dom = hv.create_domain(guest_id, 4096, "netguest");
  Reactor::Options ro;
  ro.name = "netback";
  ro.uring_entries = 0;
  ro.cpu = backend_cpu;
  auto reactor = Reactor::create(ro);
  if (!dom || !reactor || !(*reactor)->start()) {
    std::fprintf(stderr, "simulated host setup failed\n");
    return 1;
  }
  auto gt = hv.open_grant_table(kDom0);
  auto ev = hv.open_event_channel(kDom0);
  auto gev = hv.open_event_channel(guest_id);
  if (!gt || !ev || !gev) return 1;
  auto worker = NetWorker::create(**reactor, std::move(*gt), std::move(*ev));
  if (!worker) return 1;
  sim::SimNetfront::Options fo;
  auto front = sim::SimNetfront::create(**dom, **gev, fo);
  if (!front) {
    std::fprintf(stderr, "netfront: %s\n", error_string(front.error()).c_str());
    return 1;
  }

  VifQueue::Config c;
  c.frontend = guest_id;
  c.tx_ring_ref = (*front)->tx_ring_ref();
  c.rx_ring_ref = (*front)->rx_ring_ref();
  c.tx_remote_port = (*front)->tx_port();
  c.rx_remote_port = (*front)->rx_port();
  c.port = port->get();
  c.pool = pool->get();
  c.zero_copy = zero_copy;
  c.tx_limits.copy_below = static_cast<uint16_t>(copy_below);
  // What the frontend negotiated: Linux netfront's defaults with offloads;
  // without them its tap takes finished frames only.
  c.rx_csum_offload = offloads;
  c.rx_gso_tcpv4 = c.rx_gso_tcpv6 = offloads;
  c.rx_gro = rx_gro == "on";
  // The tap port has no wake-up of its own here: while idle the reactor
  // looks for packets from the kernel this often (the latency floor of
  // host -> guest traffic after a pause, e.g. an ACK-clocked TCP flow).
  c.port_poll = std::chrono::microseconds(port_poll_us);
  c.log_prefix = "vif" + std::to_string(domid) + "." + std::to_string(devid) + ": ";
  VifQueueStats stats;
  std::unique_ptr<VifQueue> queue;
  Status st = ok();
  (*reactor)->call([&] {
    if (auto r = DpdkEnv::get()->register_thread(); !r) st = r;
    auto q = VifQueue::start(**worker, c, stats);
    if (q) queue = std::move(*q);
    else st = unexpected(q.error());
  });
  if (!st) {
    std::fprintf(stderr, "VifQueue: %s\n", error_string(st.error()).c_str());
    return 1;
  }

  sim::SimTapGuest guest(**front, **gev, *tap, offloads);
  if (!ready_file.empty()) std::ofstream(ready_file) << (*port)->name() << "\n";
  std::printf("ready: guest tap %s (netns %s) <-> %s\n", guest_tap.c_str(),
              guest_netns.empty() ? "-" : guest_netns.c_str(), (*port)->name().c_str());
  std::fflush(stdout);

  (void)pin_current_thread(guest_cpu);  // best effort, as before
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  auto last_work = std::chrono::steady_clock::now();
  while (!g_stop.load()) {
    const auto now = std::chrono::steady_clock::now();
    if (seconds > 0 && now >= end) break;
    if (guest.step()) {
      last_work = now;
    } else if (now - last_work > std::chrono::microseconds(50)) {
      // As netfront: spin briefly after work, then sleep on the event
      // channel and the tap.
      guest.wait(std::chrono::milliseconds(5));
    }
  }

  for (int i = 0; i < 5000; ++i) {
    Status s;
    (*reactor)->call([&] { s = queue->stop(); });
    if (s) break;
    (void)guest.step();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  (*reactor)->call([&] {
    queue.reset();
    DpdkEnv::get()->unregister_thread();
  });
  const auto& gs = guest.stats();
  nlohmann::json j = {{"tap_frames_in", gs.tap_frames_in},
                      {"tap_frames_out", gs.tap_frames_out},
                      {"guest_tx_errors", gs.tx_errors},
                      {"guest_rx_errors", gs.rx_errors},
                      {"tap_write_drops", gs.tap_write_drops},
                      {"guest_oversize_drops", gs.oversize_drops},
                      {"guest_bad_offload", gs.bad_offload},
                      {"vif_tx_packets", stats.tx_packets.get()},
                      {"vif_tx_bytes", stats.tx_bytes.get()},
                      {"vif_tx_dropped", stats.tx_dropped.get() + stats.tx_port_dropped.get()},
                      {"vif_tx_map_calls", stats.tx_map_calls.get()},
                      {"vif_tx_copy_calls", stats.tx_copy_calls.get()},
                      {"vif_rx_packets", stats.rx_packets.get()},
                      {"vif_rx_bytes", stats.rx_bytes.get()},
                      {"vif_rx_dropped", stats.rx_dropped.get()},
                      {"vif_rx_copy_calls", stats.rx_copy_calls.get()},
                      {"vif_rx_gro_packets", stats.rx_gro_packets.get()},
                      {"vif_rx_gro_merged", stats.rx_gro_merged.get()},
                      {"grant_mappings_leaked", hv.counters().mapped_pages_live.load()}};
  std::printf("%s\n", j.dump().c_str());
  front->reset();
  worker->reset();
  (*reactor)->stop();
  port->reset();
  return 0;
}
