// xenpath-sim: the simulated Xen host with xenpath's backends on it.
//
//   xenpath-sim blkback    xenpath-blkback's daemon on the simulated host:
//                          guests with raw disks drive verified I/O through
//                          it (the README's first command).
//   xenpath-sim netback    xenpath-netback's daemon on the simulated host:
//                          guests whose frames a loopback wire sends back.
//   xenpath-sim demo       guests connect devices through the xenbus
//                          handshake and drive traffic through the shared
//                          rings; live per-device statistics; at the end the
//                          guests go away and the run checks that every
//                          mapping, channel and watch was released.
//   xenpath-sim xenstored  only the simulated xenstored, to poke at with
//                          xenstore-ls/-read/-write (XENSTORED_PATH=<socket>).
//
// The backend's control plane uses the production libxenstore adapter on the
// simulated xenstored's unix socket.
#include <fmt/format.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <fstream>
#include <thread>
#include <vector>

#include "blkback/blk_service.h"
#include "common/daemon_main.h"
#include "common/log.h"
#include "netback/net_service.h"
#include "sim/blk/blk_demo.h"
#include "sim/net/net_demo.h"
#include "common/reactor.h"
#include "sim/echo_device.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenstored.h"
#include "common/xenbus/backend_driver.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using namespace xenpath;
using namespace xenpath::sim;

std::atomic<bool> g_interrupted{false};

struct DemoOptions {
  unsigned guests = 4;
  unsigned devices = 2;
  unsigned workers = 2;
  double seconds = 10;
  unsigned burst = 32;
  std::string socket = "/tmp/xenpath-sim.sock";
  std::string json;
};

// What one simulated frontend did, written by its guest thread.
struct DeviceLoad {
  DomId domid = 0;
  uint32_t devid = 0;
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> bursts{0};
  std::atomic<uint64_t> burst_ns{0};
  std::atomic<uint64_t> errors{0};
  uint64_t shown_requests = 0;
};

std::unique_ptr<Reactor> make_reactor(const std::string& name) {
  Reactor::Options o;
  o.name = name;
  o.uring_entries = 0;
  auto r = Reactor::create(o);
  if (!r) {
    spdlog::critical("reactor {}: {}", name, error_string(r.error()));
    std::exit(2);
  }
  return std::move(*r);
}

int run_demo(const DemoOptions& opt) {
  SimHost::Options ho;
  ho.xenstored_socket = opt.socket;
  auto host = SimHost::create(ho);
  if (!host) {
    spdlog::critical("simulated host: {}", error_string(host.error()));
    return 2;
  }
  auto& h = **host;
  fmt::print("simulated Xen host up; xenstored on {} (try: XENSTORED_PATH={} xenstore-ls /local/domain/0/backend)\n",
             h.xenstored_path(), h.xenstored_path());

  auto platform = make_sim_platform(h);
  auto control = make_reactor("xp-control");
  std::vector<std::unique_ptr<Reactor>> worker_reactors;
  std::vector<std::unique_ptr<EchoWorker>> workers;
  for (unsigned i = 0; i < opt.workers; ++i) {
    worker_reactors.push_back(make_reactor(fmt::format("xp-worker{}", i)));
    if (!worker_reactors.back()->start()) return 2;
    auto w = EchoWorker::create(*worker_reactors.back(), *platform);
    if (!w) {
      spdlog::critical("worker: {}", error_string(w.error()));
      return 2;
    }
    workers.push_back(std::move(*w));
  }
  std::vector<EchoWorker*> wptrs;
  for (auto& w : workers) wptrs.push_back(w.get());

  auto xs = platform->open_xenstore();
  if (!xs) {
    spdlog::critical("xenstore: {}", error_string(xs.error()));
    return 2;
  }
  BackendDriver driver(std::move(*xs), {});
  if (!driver.add_type(std::make_unique<EchoDeviceType>(wptrs))) return 2;
  if (!control->start()) return 2;
  Status started = ok();
  control->call([&] {
    started = driver.start();
    if (started) started = driver.attach(*control);
  });
  if (!started) {
    spdlog::critical("backend driver: {}", error_string(started.error()));
    return 2;
  }
  const size_t watches_idle = h.xenstored().watch_count();

  // The toolstack creates the guests and their devices, as xl/libxl would.
  auto tool_xs = h.open_xenstore(kDom0);
  if (!tool_xs) return 2;
  SimToolstack tool(**tool_xs);
  std::vector<std::unique_ptr<DeviceLoad>> loads;
  for (unsigned g = 0; g < opt.guests; ++g) {
    const DomId domid = static_cast<DomId>(g + 1);
    if (!h.create_domain(domid, 4096, fmt::format("guest{}", domid))) return 2;
    for (unsigned d = 0; d < opt.devices; ++d) {
      if (auto r = tool.add_device("echo", domid, d, kDom0, {}, {}); !r) {
        spdlog::critical("add device {}/{}: {}", domid, d, error_string(r.error()));
        return 2;
      }
      auto l = std::make_unique<DeviceLoad>();
      l->domid = domid;
      l->devid = d;
      loads.push_back(std::move(l));
    }
  }

  // One thread per guest: its frontends connect, then drive requests.
  const auto t_start = Clock::now();
  const auto deadline = t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.seconds));
  std::atomic<unsigned> connected{0};
  std::atomic<unsigned> failed{0};
  std::vector<std::thread> guests;
  for (unsigned g = 0; g < opt.guests; ++g) {
    guests.emplace_back([&, g] {
      const DomId domid = static_cast<DomId>(g + 1);
      auto ev = h.open_event_channel(domid);
      auto gxs = h.open_xenstore(domid);
      SimDomain* dom = h.domain(domid);
      if (!ev || !gxs || dom == nullptr) {
        ++failed;
        return;
      }
      std::vector<std::unique_ptr<SimEchoFrontend>> fes;
      for (unsigned d = 0; d < opt.devices; ++d) {
        auto fe = SimEchoFrontend::attach(*dom, **ev, **gxs, SimToolstack::frontend_path(domid, "echo", d));
        if (!fe || !(*fe)->connect()) {
          ++failed;
          return;
        }
        fes.push_back(std::move(*fe));
        ++connected;
      }
      while (Clock::now() < deadline && !g_interrupted.load()) {
        for (unsigned d = 0; d < opt.devices; ++d) {
          auto& load = *loads[g * opt.devices + d];
          const auto t0 = Clock::now();
          auto ex = fes[d]->exchange(opt.burst);
          if (!ex) {
            load.errors.fetch_add(1);
            continue;
          }
          load.requests.fetch_add(ex->ok);
          load.bursts.fetch_add(1);
          load.burst_ns.fetch_add(static_cast<uint64_t>(std::chrono::nanoseconds(Clock::now() - t0).count()));
        }
      }
      for (auto& fe : fes) {
        if (!fe->close()) ++failed;
      }
    });
  }

  // Live statistics, once a second.
  auto last = Clock::now();
  uint64_t last_total = 0;
  while (Clock::now() < deadline && !g_interrupted.load()) {
    std::this_thread::sleep_until(std::min(deadline, last + 1s));
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    last = now;
    fmt::print("\n[{:5.1f}s] {} of {} devices connected\n", std::chrono::duration<double>(now - t_start).count(),
               connected.load(), loads.size());
    fmt::print("  {:<10} {:>12} {:>14} {:>8}\n", "device", "req/s", "burst RTT us", "errors");
    uint64_t total = 0;
    for (auto& l : loads) {
      const uint64_t r = l->requests.load();
      const uint64_t b = l->bursts.load();
      const double rtt = b ? static_cast<double>(l->burst_ns.load()) / static_cast<double>(b) / 1000.0 : 0;
      fmt::print("  echo {:>2}/{:<3} {:>12.0f} {:>14.1f} {:>8}\n", l->domid, l->devid,
                 static_cast<double>(r - l->shown_requests) / dt, rtt, l->errors.load());
      l->shown_requests = r;
      total += r;
    }
    auto& c = h.counters();
    const auto xs_stats = h.xenstored().socket_stats();
    fmt::print("  total {:.0f} req/s | grant maps {} (live pages {}) | notifications {} | backend xenstore ops {}\n",
               static_cast<double>(total - last_total) / dt, c.map_calls.load(), c.mapped_pages_live.load(),
               c.notify_calls.load(), xs_stats.ops);
    last_total = total;
  }
  for (auto& t : guests) t.join();

  // Tear down as the toolstack does, then check nothing leaked.
  for (auto& l : loads) (void)tool.remove_device("echo", l->domid, l->devid, kDom0, 5s);
  for (unsigned g = 0; g < opt.guests; ++g) (void)h.destroy_domain(static_cast<DomId>(g + 1));
  size_t devices_left = 1;
  for (int i = 0; i < 200 && devices_left != 0; ++i) {
    control->call([&] { devices_left = driver.device_count(); });
    if (devices_left != 0) std::this_thread::sleep_for(10ms);
  }
  const uint64_t live = h.counters().mapped_pages_live.load();
  const size_t watches = h.xenstored().watch_count();
  const auto xs_stats = h.xenstored().socket_stats();
  uint64_t total = 0, errors = 0;
  for (auto& l : loads) {
    total += l->requests.load();
    errors += l->errors.load();
  }
  const bool ok_run = failed.load() == 0 && errors == 0 && devices_left == 0 && live == 0 && watches <= watches_idle &&
                      total > 0;
  fmt::print("\nsummary: {} requests over {} devices, {} errors; backend xenstore ops per device {:.1f}\n", total,
             loads.size(), errors, static_cast<double>(xs_stats.ops) / static_cast<double>(loads.size()));
  fmt::print("self-check: devices left {}, grant pages still mapped {}, watches {} (idle {}) -> {}\n", devices_left,
             live, watches, watches_idle, ok_run ? "OK" : "FAILED");
  if (!opt.json.empty()) {
    nlohmann::json j;
    j["requests"] = total;
    j["errors"] = errors;
    j["devices"] = loads.size();
    j["xenstore_ops_per_device"] = static_cast<double>(xs_stats.ops) / static_cast<double>(loads.size());
    j["self_check"] = ok_run;
    std::ofstream(opt.json) << j.dump(2) << "\n";
  }
  control->call([&] { driver.stop(); });
  control->stop();
  workers.clear();
  for (auto& r : worker_reactors) r->stop();
  return ok_run ? 0 : 1;
}

int run_xenstored(const std::string& socket) {
  auto xsd = SimXenstored::start(socket);
  if (!xsd) {
    spdlog::critical("xenstored: {}", error_string(xsd.error()));
    return 2;
  }
  fmt::print("simulated xenstored on {} (Ctrl-C to stop)\n", (*xsd)->socket_path());
  std::fflush(stdout);
  while (!g_interrupted.load()) std::this_thread::sleep_for(100ms);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"xenpath on the simulated Xen host"};
  std::string level = "warn";
  app.add_option("--log-level", level, "trace, debug, info, warn, error");
  DemoOptions demo;
  auto* d = app.add_subcommand("demo", "guests drive their devices through the backends; live stats; self-check");
  d->add_option("--guests", demo.guests, "simulated guests")->check(CLI::Range(1, 500));
  d->add_option("--devices", demo.devices, "devices per guest")->check(CLI::Range(1, 64));
  d->add_option("--workers", demo.workers, "worker reactors (datapath threads)")->check(CLI::Range(1, 64));
  d->add_option("--seconds", demo.seconds, "how long to drive traffic")->check(CLI::Range(0.5, 86400.0));
  d->add_option("--burst", demo.burst, "requests per burst per device")->check(CLI::Range(1, 32));
  d->add_option("--socket", demo.socket, "unix socket of the simulated xenstored");
  d->add_option("--json", demo.json, "write the summary as JSON to this file");
  std::string xs_socket = "/tmp/xenpath-sim.sock";
  auto* x = app.add_subcommand("xenstored", "run only the simulated xenstored");
  x->add_option("--socket", xs_socket, "unix socket path");

  // The daemons, with the options of their production mains, on the simulated host.
  xenpath::DaemonCli blk_cli = xenpath::BlkbackService::cli_defaults();
  xenpath::BlkbackService::Options blk_opts;
  xenpath::sim::BlkDemoOptions blk_demo;
  auto* b = app.add_subcommand("blkback", "xenpath-blkback on the simulated host, guests doing verified I/O");
  xenpath::add_service_cli<xenpath::BlkbackService>(*b, blk_cli, blk_opts);
  xenpath::sim::add_blkback_demo_cli(*b, blk_demo);
  xenpath::DaemonCli net_cli = xenpath::NetbackService::cli_defaults();
  xenpath::NetbackService::Options net_opts;
  xenpath::sim::NetDemoOptions net_demo;
  auto* n = app.add_subcommand("netback", "xenpath-netback on the simulated host, guests' frames on a loopback wire");
  xenpath::add_service_cli<xenpath::NetbackService>(*n, net_cli, net_opts);
  xenpath::sim::add_netback_demo_cli(*n, net_demo);

  app.require_subcommand(1);
  CLI11_PARSE(app, argc, argv);

  if (*b || *n) {
    xenpath::DaemonCli& cli = *b ? blk_cli : net_cli;
    xenpath::finish_daemon_cli(cli);
    // Before any thread (EAL's included): the signals reach only this one.
    xenpath::block_termination_signals();
    return *b ? xenpath::sim::run_blkback_demo(cli, blk_opts, blk_demo)
              : xenpath::sim::run_netback_demo(cli, net_opts, net_demo);
  }
  xenpath::log_init(level);
  signal(SIGINT, [](int) { g_interrupted.store(true); });
  signal(SIGTERM, [](int) { g_interrupted.store(true); });
  signal(SIGPIPE, SIG_IGN);
  if (*d) return run_demo(demo);
  return run_xenstored(xs_socket);
}
