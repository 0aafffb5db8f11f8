// 1000 echo devices (100 guests x 10) created and connected on the
// simulated host, with the daemon's control plane on the production path
// (LibxenStore over the simulated xenstored's socket). The xenstore
// operations of the daemon's connection are counted per device while the
// host grows from 0 to 10, 100 and 1000 devices: the cost of bringing one
// device up must not depend on how many already exist (no listings, no
// scans, no per-event work proportional to the device count).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/reactor.h"
#include "sim/echo_device.h"
#include "sim/sim_host.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenstored.h"
#include "common/xenbus/backend_driver.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kEcho = "echo";
constexpr uint32_t kDevicesPerGuest = 10;

struct Guest {
  DomId id = 0;
  SimDomain* dom = nullptr;
  std::unique_ptr<XenStore> xs;
  std::unique_ptr<EventChannel> evtchn;
  std::vector<std::unique_ptr<SimEchoFrontend>> devs;
};

TEST(XenbusScaleTest, ThousandEchoDevicesAtConstantXenstoreCostPerDevice) {
  spdlog::set_level(spdlog::level::warn);
  const auto t0 = std::chrono::steady_clock::now();
  auto h = SimHost::create({});
  ASSERT_TRUE(h) << error_string(h.error());
  std::unique_ptr<SimHost> host = std::move(*h);
  auto platform = make_sim_platform(*host);

  Reactor::Options copt;
  copt.name = "control";
  copt.uring_entries = 0;
  auto control = Reactor::create(copt);
  Reactor::Options wopt;
  wopt.name = "worker";
  wopt.uring_entries = 0;
  auto worker = Reactor::create(wopt);
  ASSERT_TRUE(control && worker);
  ASSERT_TRUE((*control)->start());
  ASSERT_TRUE((*worker)->start());
  auto echo_worker = EchoWorker::create(**worker, *platform);
  ASSERT_TRUE(echo_worker) << error_string(echo_worker.error());

  auto xs = platform->open_xenstore();
  ASSERT_TRUE(xs) << error_string(xs.error());
  auto driver = std::make_unique<BackendDriver>(std::move(*xs), BackendDriver::Options{});
  ASSERT_TRUE(driver->add_type(
      std::make_unique<EchoDeviceType>(std::vector<EchoWorker*>{echo_worker->get()}, std::string(kEcho))));
  Status st = unexpected(EIO);
  (*control)->call([&] {
    st = driver->start();
    if (st) st = driver->attach(**control);
  });
  ASSERT_TRUE(st) << error_string(st.error());

  auto tools_xs = host->open_xenstore(kDom0);
  ASSERT_TRUE(tools_xs);
  SimToolstack tools(**tools_xs);
  std::vector<std::unique_ptr<Guest>> guests;

  // Brings the host up to `total` devices; returns the daemon's xenstore
  // operations per new device.
  auto grow_to = [&](uint32_t total) -> double {
    const uint32_t have = static_cast<uint32_t>(guests.size()) * kDevicesPerGuest;
    const auto before = host->xenstored().socket_stats();
    std::vector<Guest*> fresh;
    for (uint32_t n = have; n < total; n += kDevicesPerGuest) {
      auto g = std::make_unique<Guest>();
      g->id = static_cast<DomId>(1 + guests.size());
      auto dom = host->create_domain(g->id, 16, "guest" + std::to_string(g->id));
      EXPECT_TRUE(dom) << error_string(dom.error());
      if (!dom) return -1;
      g->dom = *dom;
      auto gxs = host->open_xenstore(g->id);
      auto gev = host->open_event_channel(g->id);
      EXPECT_TRUE(gxs && gev);
      if (!gxs || !gev) return -1;
      g->xs = std::move(*gxs);
      g->evtchn = std::move(*gev);
      for (uint32_t d = 0; d < kDevicesPerGuest; ++d) {
        EXPECT_TRUE(tools.add_device(kEcho, g->id, d, kDom0, {}, {}));
        auto f = SimEchoFrontend::attach(*g->dom, *g->evtchn, *g->xs,
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
      const uint64_t events = driver->stats().watch_events.get();
      if (events == last || std::chrono::steady_clock::now() > deadline) break;
      last = events;
    }
    const auto after = host->xenstored().socket_stats();
    return static_cast<double>(after.ops - before.ops) / (total - have);
  };

  const double at10 = grow_to(10);
  const double at100 = grow_to(100);
  const auto t_connect0 = std::chrono::steady_clock::now();
  const double at1000 = grow_to(1000);
  const auto t_connect1 = std::chrono::steady_clock::now();

  EXPECT_EQ(driver->stats().connected.get(), 1000u);
  EXPECT_EQ(driver->stats().connects.get(), 1000u);
  EXPECT_EQ(driver->stats().connect_failures.get(), 0u);
  EXPECT_EQ(host->counters().mapped_pages_live.load(), 1000u);
  size_t known = 0;
  (*control)->call([&] { known = driver->device_count(); });
  EXPECT_EQ(known, 1000u);
  for (const auto& g : guests) {
    for (uint32_t d = 0; d < kDevicesPerGuest; ++d) {
      EXPECT_EQ(*(*tools_xs)->read(kXsNoTxn, SimToolstack::backend_path(kDom0, kEcho, g->id, d) + "/state"), "4");
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
  (*control)->call([&] { driver->stop(); });
  EXPECT_EQ(host->counters().mapped_pages_live.load(), 0u);
  const auto t1 = std::chrono::steady_clock::now();

  const auto ms = [](auto d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  std::printf("[ scale    ] xenstore ops/device: %.2f at 10, %.2f at 100, %.2f at 1000 devices\n", at10, at100,
              at1000);
  std::printf("[ scale    ] 900 devices 100->1000 connected in %lld ms; whole test %lld ms\n",
              static_cast<long long>(ms(t_connect1 - t_connect0)), static_cast<long long>(ms(t1 - t0)));
  RecordProperty("ops_per_device_10", std::to_string(at10));
  RecordProperty("ops_per_device_100", std::to_string(at100));
  RecordProperty("ops_per_device_1000", std::to_string(at1000));

  guests.clear();
  (*control)->call([&] { driver.reset(); });
  echo_worker->reset();
  (*worker)->stop();
  (*control)->stop();
}

}  // namespace
}  // namespace xenpath::sim
