// `xenpath-sim demo`: the echo split driver (EchoService on a
// BackendDaemon) on the simulated host, with guests whose frontends connect
// through the xenbus handshake and exchange requests on the shared rings;
// live per-device figures; at the end the toolstack removes the devices and
// destroys the guests, and the run checks that every mapping, channel and
// watch was released.
//
// Threads: the caller's thread reports and tears down; one thread per guest
// drives its frontends; the daemon's reactors do the backend work.
#include "sim/echo_demo.h"

#include <fmt/format.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "common/daemon_main.h"
#include "sim/echo_device.h"
#include "sim/echo_service.h"
#include "sim/sim_demo.h"
#include "sim/sim_xenstored.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::atomic<bool> g_interrupted{false};
bool interrupted() noexcept { return g_interrupted.load(); }

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

}  // namespace

int run_echo_demo(const EchoDemoOptions& opt) {
  SimHost::Options ho;
  ho.xenstored_socket = opt.socket;
  auto demo = SimDemoHost::create(ho);
  if (!demo) return 2;
  SimHost& h = (*demo)->host();
  fmt::print("simulated Xen host up; xenstored on {} (try: XENSTORED_PATH={} xenstore-ls /local/domain/0/backend)\n",
             h.xenstored_path(), h.xenstored_path());

  DaemonCli cli = EchoService::cli_defaults();
  cli.daemon.workers = opt.workers;
  ServedDaemon<EchoService> echo;
  if (auto st = echo.start((*demo)->platform(), cli.daemon, {}); !st) {
    spdlog::critical("echo backend: {}", error_string(st.error()));
    return 2;
  }
  const size_t watches_idle = h.xenstored().watch_count();

  // The toolstack creates the guests and their devices, as xl/libxl would.
  SimToolstack& tool = (*demo)->tool();
  if (!(*demo)->create_guests(opt.run.guests, 4096)) return 2;
  std::vector<std::unique_ptr<DeviceLoad>> loads;
  for (unsigned g = 0; g < opt.run.guests; ++g) {
    const DomId domid = SimDemoHost::guest_id(g);
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
  const auto deadline =
      t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.run.seconds));
  std::atomic<unsigned> connected{0};
  std::atomic<unsigned> failed{0};
  std::vector<std::thread> guests;
  for (unsigned g = 0; g < opt.run.guests; ++g) {
    guests.emplace_back([&, g] {
      const DomId domid = static_cast<DomId>(g + 1);
      auto guest = SimGuestHandles::open(h, domid);
      if (!guest) {
        ++failed;
        return;
      }
      std::vector<std::unique_ptr<SimEchoFrontend>> fes;
      for (unsigned d = 0; d < opt.devices; ++d) {
        auto fe = SimEchoFrontend::attach(*guest->domain, *guest->evtchn, *guest->xs,
                                          SimToolstack::frontend_path(domid, "echo", d));
        if (!fe || !(*fe)->connect()) {
          ++failed;
          return;
        }
        fes.push_back(std::move(*fe));
        ++connected;
      }
      while (Clock::now() < deadline && !interrupted()) {
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
  while (Clock::now() < deadline && !interrupted()) {
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
  (*demo)->destroy_guests(opt.run.guests);
  size_t devices_left = 1;
  for (int i = 0; i < 200 && devices_left != 0; ++i) {
    devices_left = echo.daemon->stats()["xenbus"]["devices"].get<size_t>();
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
  const bool ok_run =
      failed.load() == 0 && errors == 0 && devices_left == 0 && live == 0 && watches <= watches_idle && total > 0;
  fmt::print("\nsummary: {} requests over {} devices, {} errors; backend xenstore ops per device {:.1f}\n", total,
             loads.size(), errors, static_cast<double>(xs_stats.ops) / static_cast<double>(loads.size()));
  fmt::print("self-check: devices left {}, grant pages still mapped {}, watches {} (idle {}) -> {}\n", devices_left,
             live, watches, watches_idle, ok_run ? "OK" : "FAILED");
  write_summary(opt.run.json,
                {{"requests", total},
                 {"errors", errors},
                 {"devices", loads.size()},
                 {"xenstore_ops_per_device", static_cast<double>(xs_stats.ops) / static_cast<double>(loads.size())},
                 {"self_check", ok_run}});
  echo.stop();
  return ok_run ? 0 : 1;
}

void add_echo_demo_cli(CLI::App& app, EchoDemoOptions& opt) {
  add_run_cli(app, opt.run, 500, 0.5);
  app.add_option("--devices", opt.devices, "devices per guest")->check(CLI::Range(1, 64));
  app.add_option("--workers", opt.workers, "worker reactors (datapath threads)")->check(CLI::Range(1, 64));
  app.add_option("--burst", opt.burst, "requests per burst per device")->check(CLI::Range(1, 32));
  app.add_option("--socket", opt.socket, "unix socket of the simulated xenstored");
}

void stop_echo_demo_on_signals() {
  signal(SIGINT, [](int) { g_interrupted.store(true); });
  signal(SIGTERM, [](int) { g_interrupted.store(true); });
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace xenpath::sim
