// 1000 echo devices (100 guests x 10) created and connected on the
// simulated host, with the daemon's control plane on the production path
// (LibxenStore over the simulated xenstored's socket). The xenstore
// operations of the daemon's connection are counted per device while the
// host grows from 0 to 10, 100 and 1000 devices: the cost of bringing one
// device up must not depend on how many already exist (no listings, no
// scans, no per-event work proportional to the device count).
#include <gtest/gtest.h>

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "sim/echo_device.h"
#include "sim/echo_service.h"
#include "sim/sim_xenstored.h"
#include "tests/fixtures/backend_rig.h"
#include "tests/fixtures/eventually.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kEcho = "echo";
constexpr uint32_t kDevicesPerGuest = 10;
constexpr uint32_t kGuestPages = 16;

struct Guest {
  DomId id = 0;
  test::RigGuest* handles = nullptr;
  std::vector<std::unique_ptr<SimEchoFrontend>> devs;
};

// ServedDaemon<EchoService> with one worker; guest 1 is the rig's first.
class XenbusScaleTest : public ::testing::Test, public test::SimBackendRig<EchoService> {
 protected:
  void TearDown() override { stop(); }
};

TEST_F(XenbusScaleTest, ThousandEchoDevicesAtConstantXenstoreCostPerDevice) {
  spdlog::set_level(spdlog::level::warn);
  const auto t0 = std::chrono::steady_clock::now();
  DaemonOptions dopt = EchoService::cli_defaults().daemon;
  dopt.workers = 1;
  ASSERT_NO_FATAL_FAILURE(start(1, dopt, EchoOptions{std::string(kEcho)}, kGuestPages));
  BackendDriver& driver = daemon().driver();
  SimToolstack& tools = *tools_;
  std::vector<std::unique_ptr<Guest>> guests;

  // Brings the host up to `total` devices; returns the daemon's xenstore
  // operations per new device.
  auto grow_to = [&](uint32_t total) -> double {
    const uint32_t have = static_cast<uint32_t>(guests.size()) * kDevicesPerGuest;
    const auto before = host_->xenstored().socket_stats();
    std::vector<Guest*> fresh;
    for (uint32_t n = have; n < total; n += kDevicesPerGuest) {
      auto g = std::make_unique<Guest>();
      g->id = static_cast<DomId>(1 + guests.size());
      auto it = guests_.find(g->id);
      g->handles = it != guests_.end() ? &it->second : &add_guest(g->id, kGuestPages);
      if (!g->handles->dom || !g->handles->xs || !g->handles->evtchn) return -1;
      for (uint32_t d = 0; d < kDevicesPerGuest; ++d) {
        EXPECT_TRUE(tools.add_device(kEcho, g->id, d, kDom0, {}, {}));
        auto f = SimEchoFrontend::attach(*g->handles->dom, *g->handles->evtchn, *g->handles->xs,
                                         SimToolstack::frontend_path(g->id, kEcho, d), 10s);
        EXPECT_TRUE(f) << error_string(f.error());
        if (!f) return -1;
        g->devs.push_back(std::move(*f));
      }
      fresh.push_back(g.get());
      guests.push_back(std::move(g));
    }
    // Every guest starts all its devices, then waits for them, as a
    // booting kernel probes its xenbus devices.
    for (Guest* g : fresh) {
      for (auto& f : g->devs) {
        auto s = f->begin_connect();
        EXPECT_TRUE(s) << error_string(s.error());
      }
    }
    for (Guest* g : fresh) {
      for (auto& f : g->devs) {
        auto s = f->finish_connect();
        EXPECT_TRUE(s) << error_string(s.error());
      }
    }
    // The frontends' final Connected writes still reach the daemon (one
    // read each): wait until its queue is quiet before counting.
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    uint64_t last = 0;
    for (;;) {
      std::this_thread::sleep_for(20ms);
      const uint64_t events = driver.stats().watch_events.get();
      if (events == last || std::chrono::steady_clock::now() > deadline) break;
      last = events;
    }
    const auto after = host_->xenstored().socket_stats();
    return static_cast<double>(after.ops - before.ops) / (total - have);
  };

  const double at10 = grow_to(10);
  const double at100 = grow_to(100);
  const auto t_connect0 = std::chrono::steady_clock::now();
  const double at1000 = grow_to(1000);
  const auto t_connect1 = std::chrono::steady_clock::now();

  EXPECT_EQ(driver.stats().connected.get(), 1000u);
  EXPECT_EQ(driver.stats().connects.get(), 1000u);
  EXPECT_EQ(driver.stats().connect_failures.get(), 0u);
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 1000u);
  size_t known = 0;
  daemon().control().call([&] { known = driver.device_count(); });
  EXPECT_EQ(known, 1000u);
  for (const auto& g : guests) {
    for (uint32_t d = 0; d < kDevicesPerGuest; ++d) {
      EXPECT_EQ(*tools_xs_->read(kXsNoTxn, SimToolstack::backend_path(kDom0, kEcho, g->id, d) + "/state"), "4");
    }
  }

  // Every ring works.
  uint32_t answered = 0;
  for (const auto& g : guests) {
    for (auto& f : g->devs) {
      auto r = f->exchange(2);
      EXPECT_TRUE(r) << error_string(r.error());
      if (r) answered += r->ok;
    }
  }
  EXPECT_EQ(answered, 2000u);

  EXPECT_GT(at10, 5.0) << "the measurement must see the daemon's traffic";
  EXPECT_LE(at100, at10 * 1.1 + 1);
  EXPECT_LE(at1000, at10 * 1.1 + 1);

  // Shutdown releases all 1000 mappings.
  stop_daemon();
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
  const auto t1 = std::chrono::steady_clock::now();

  const auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  std::printf("[ scale    ] xenstore ops/device: %.2f at 10, %.2f at 100, %.2f at 1000 devices\n", at10, at100, at1000);
  std::printf("[ scale    ] 900 devices 100->1000 connected in %lld ms; whole test %lld ms\n",
              static_cast<long long>(ms(t_connect1 - t_connect0)), static_cast<long long>(ms(t1 - t0)));
  RecordProperty("ops_per_device_10", std::to_string(at10));
  RecordProperty("ops_per_device_100", std::to_string(at100));
  RecordProperty("ops_per_device_1000", std::to_string(at1000));

  guests.clear();
}

// Shutdown storm (seed 004's pattern): 1000 guests with one device each
// die at once, each as `xl destroy` does it (libxl removes the device
// directories, then the hypervisor kills the domain: @releaseDomain, and
// the domain's home goes). @releaseDomain does not say who died; a driver
// that answered every firing by reading each domain it serves would make
// O(n^2) reads for n deaths. Counted: the daemon's xenstore operations per
// device from the first death until every device is gone.
TEST_F(XenbusScaleTest, ThousandGuestsDieAtOnceAtConstantXenstoreCostPerDevice) {
  spdlog::set_level(spdlog::level::warn);
  constexpr DomId kGuests = 1000;
  // Each guest holds a xenstore connection and an event channel handle,
  // each end of which is a descriptor in this process.
  rlimit nofile{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &nofile), 0);
  if (nofile.rlim_cur < 8 * kGuests) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 8 * kGuests);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &nofile), 0);
  }
  if (nofile.rlim_cur < 8 * kGuests) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << nofile.rlim_max << " too low";

  DaemonOptions dopt = EchoService::cli_defaults().daemon;
  dopt.workers = 1;
  ASSERT_NO_FATAL_FAILURE(start(1, dopt, EchoOptions{std::string(kEcho)}, 4));
  BackendDriver& driver = daemon().driver();
  SimToolstack& tools = *tools_;

  std::vector<std::unique_ptr<SimEchoFrontend>> fronts;
  for (DomId id = 1; id <= kGuests; ++id) {
    auto it = guests_.find(id);
    test::RigGuest& g = it != guests_.end() ? it->second : add_guest(id, 4);
    ASSERT_TRUE(g.dom && g.xs && g.evtchn);
    ASSERT_TRUE(tools.add_device(kEcho, id, 0, kDom0, {}, {}));
    auto f = SimEchoFrontend::attach(*g.dom, *g.evtchn, *g.xs, SimToolstack::frontend_path(id, kEcho, 0), 10s);
    ASSERT_TRUE(f) << error_string(f.error());
    fronts.push_back(std::move(*f));
  }
  for (auto& f : fronts) ASSERT_TRUE(f->begin_connect());
  for (auto& f : fronts) ASSERT_TRUE(f->finish_connect());
  ASSERT_TRUE(test::eventually([&] { return driver.stats().connected.get() == kGuests; }, 20s));

  // The frontends' last Connected writes still reach the daemon: wait
  // until its queue is quiet before counting.
  for (uint64_t events = ~uint64_t{0}; events != driver.stats().watch_events.get();) {
    events = driver.stats().watch_events.get();
    std::this_thread::sleep_for(200ms);
  }
  const auto before = host_->xenstored().socket_stats();
  const auto t0 = std::chrono::steady_clock::now();
  for (DomId id = 1; id <= kGuests; ++id) {
    ASSERT_TRUE(tools.force_remove(kEcho, id, 0, kDom0));
    ASSERT_TRUE(host_->destroy_domain(id));
    fronts[id - 1]->abandon();  // the guest is dead: its frontend does nothing more
  }
  ASSERT_TRUE(test::eventually([&] { return driver.stats().devices.get() == 0; }, 30s));
  // The last firings' checks (if any are still due) run before counting.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  uint64_t last = ~uint64_t{0};
  for (;;) {
    std::this_thread::sleep_for(1500ms);
    const uint64_t ops = host_->xenstored().socket_stats().ops;
    if (ops == last || std::chrono::steady_clock::now() > deadline) break;
    last = ops;
  }
  const auto t1 = std::chrono::steady_clock::now();
  const auto after = host_->xenstored().socket_stats();
  const double per_device = static_cast<double>(after.ops - before.ops) / kGuests;
  EXPECT_EQ(driver.stats().destroys.get(), kGuests);
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
  EXPECT_GT(per_device, 0.5) << "the measurement must see the daemon's traffic";
  EXPECT_LE(per_device, 5.0);
  std::printf("[ scale    ] shutdown storm: %u guests, %.2f xenstore ops/device, %lld ms until settled\n",
              static_cast<unsigned>(kGuests), per_device,
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count()));
  std::printf("[ scale    ]   @releaseDomain: %llu firings, %llu checks, %llu reads\n",
              static_cast<unsigned long long>(driver.stats().release_firings.get()),
              static_cast<unsigned long long>(driver.stats().release_checks.get()),
              static_cast<unsigned long long>(driver.stats().release_reads.get()));
  for (int t = 0; t < XS_TYPE_COUNT; ++t) {
    if (after.by_type[t] != before.by_type[t])
      std::printf("[ scale    ]   type %d: %.2f/device\n", t, double(after.by_type[t] - before.by_type[t]) / kGuests);
  }
  RecordProperty("storm_ops_per_device", std::to_string(per_device));
  fronts.clear();
}

}  // namespace
}  // namespace xenpath::sim
