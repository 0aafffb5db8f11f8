// The xenbus lifecycle end to end on the simulated host, production path:
// ServedDaemon<EchoService> on test::SimBackendRig, so the driver runs on
// the daemon's control Reactor with LibxenStore over the simulated
// xenstored's socket (make_sim_platform); echo devices map rings and bind
// channels with the host's grant table and event channels on its worker
// Reactor; guests run SimEchoFrontend on this thread. Every teardown path
// must release every mapping (SimCounters::mapped_pages_live), channel and
// watch (SimXenstored::watch_count), and leave other devices running.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "sim/echo_device.h"
#include "sim/echo_service.h"
#include "sim/sim_xenstored.h"
#include "tests/fixtures/backend_rig.h"
#include "tests/fixtures/eventually.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;
using test::eventually;

// How long a backend state change may take here.
constexpr std::chrono::milliseconds kWait = 3000ms;
using ::testing::StartsWith;

constexpr std::string_view kEcho = "echo";

// ServedDaemon<EchoService> with one worker; guests 5 and 6 (64 pages each)
// plug echo devices.
class XenbusLifecycleTest : public ::testing::Test, public test::SimBackendRig<EchoService> {
 protected:
  void SetUp() override {
    spdlog::set_level(getenv("XP_LOG") ? spdlog::level::debug : spdlog::level::warn);
    DaemonOptions dopt = EchoService::cli_defaults().daemon;
    dopt.workers = 1;
    ASSERT_NO_FATAL_FAILURE(start(5, dopt, EchoOptions{std::string(kEcho)}, 64));
    ASSERT_EQ(service().workers().size(), 1u);
    base_watches = watches_before_daemon_;
    driver_watches = watches() - base_watches;
  }

  void TearDown() override {
    frontends.clear();
    stop();
    if (host_) {
      EXPECT_EQ(host_->xenstored().open_transactions(), 0u);
    }
  }

  test::RigGuest& guest(DomId id) {
    auto it = guests_.find(id);
    return it != guests_.end() ? it->second : add_guest(id, 64);
  }

  // Plugs an echo device and attaches its guest-side frontend.
  SimEchoFrontend& plug(DomId fe, uint32_t devid) {
    test::RigGuest& g = guest(fe);
    EXPECT_TRUE(tools_->add_device(kEcho, fe, devid, kDom0, {}, {}));
    auto f = SimEchoFrontend::attach(*g.dom, *g.evtchn, *g.xs, SimToolstack::frontend_path(fe, kEcho, devid), 3000ms);
    EXPECT_TRUE(f) << error_string(f.error());
    auto& slot = frontends[{fe, devid}];
    slot = std::move(*f);
    return *slot;
  }
  SimEchoFrontend& connect(DomId fe, uint32_t devid) {
    SimEchoFrontend& f = plug(fe, devid);
    auto st = f.connect();
    EXPECT_TRUE(st) << error_string(st.error());
    return f;
  }
  void drop_frontend(DomId fe, uint32_t devid) { frontends.erase({fe, devid}); }

  BackendDriver& driver() { return daemon().driver(); }
  // On the control thread.
  template <typename T>
  T on_control(const std::function<T()>& fn) {
    T out{};
    daemon().control().call([&] { out = fn(); });
    return out;
  }
  size_t devices() {
    return on_control<size_t>([&] { return driver().device_count(); });
  }
  std::optional<XenbusState> driver_state(DomId fe, uint32_t devid) {
    return on_control<std::optional<XenbusState>>([&] { return driver().device_state(kEcho, fe, devid); });
  }
  const EchoDevice* echo(DomId fe, uint32_t devid) {
    return on_control<const EchoDevice*>(
        [&] { return static_cast<const EchoDevice*>(driver().device(kEcho, fe, devid)); });
  }

  std::string be(DomId fe, uint32_t devid) { return SimToolstack::backend_path(kDom0, kEcho, fe, devid); }
  std::string backend_state(DomId fe, uint32_t devid) {
    auto v = tools_xs_->read(kXsNoTxn, be(fe, devid) + "/state");
    return v ? *v : "<" + error_string(v.error()) + ">";
  }
  bool backend_becomes(DomId fe, uint32_t devid, XenbusState s) {
    return eventually([&] { return backend_state(fe, devid) == state_value(s); }, kWait);
  }
  uint64_t mapped() { return host_->counters().mapped_pages_live.load(); }
  size_t watches() { return host_->xenstored().watch_count(); }
  size_t worker_queues() {
    size_t n = 0;
    EchoWorker* w = service().workers().front();
    daemon().workers().front()->call([&] { n = w->queues(); });
    return n;
  }

  void expect_echo(SimEchoFrontend& f, uint32_t n) {
    auto r = f.exchange(n);
    ASSERT_TRUE(r) << error_string(r.error());
    EXPECT_EQ(r->ok, n);
    EXPECT_EQ(r->errors, 0u);
  }

  std::map<std::pair<DomId, uint32_t>, std::unique_ptr<SimEchoFrontend>> frontends;
  size_t base_watches = 0;
  size_t driver_watches = 0;
};

TEST_F(XenbusLifecycleTest, DevicesConnectAndEcho) {
  EXPECT_EQ(driver_watches, 2u) << "one per type and @releaseDomain";
  auto& a = connect(5, 0);
  auto& b = connect(5, 1);
  auto& c = connect(6, 0);
  EXPECT_EQ(backend_state(5, 0), "4");
  EXPECT_EQ(*tools_xs_->read(kXsNoTxn, be(5, 0) + "/hotplug-status"), "connected");
  EXPECT_EQ(*tools_xs_->read(kXsNoTxn, be(5, 0) + "/echo-version"), "1");
  EXPECT_EQ(mapped(), 3u);
  EXPECT_EQ(worker_queues(), 3u);
  expect_echo(a, 500);
  expect_echo(b, 300);
  expect_echo(c, 1);
  const EchoDevice* da = echo(5, 0);
  ASSERT_NE(da, nullptr);
  EXPECT_TRUE(da->connected());
  EXPECT_EQ(da->stats().requests.get(), 500u);
  EXPECT_EQ(da->stats().responses.get(), 500u);
  // Bounded bursts: at most 32 per poll, so at least 16 batches; and the
  // frontend's rsp_event keeps notifications at or below one per batch.
  EXPECT_GE(da->stats().batches.get(), 500u / 32);
  EXPECT_LE(da->stats().notifications_sent.get(), da->stats().batches.get());
  EXPECT_EQ(da->stats().error_responses.get(), 0u);
  const auto& st = driver().stats();
  EXPECT_EQ(st.connected.get(), 3u);
  EXPECT_EQ(st.connects.get(), 3u);
  EXPECT_EQ(st.probes.get(), 3u);
  EXPECT_EQ(watches(), base_watches + driver_watches + 3 /*driver: fe state*/ + 3 /*frontends*/);
}

TEST_F(XenbusLifecycleTest, ReservedValueGetsAnErrorStatus) {
  auto& f = connect(5, 0);
  const uint64_t values[] = {1, kEchoReservedValue, 41, kEchoReservedValue};
  auto r = f.exchange(values);
  ASSERT_TRUE(r) << error_string(r.error());
  EXPECT_EQ(r->ok, 2u);
  EXPECT_EQ(r->errors, 2u);
  EXPECT_EQ(echo(5, 0)->stats().error_responses.get(), 2u);
  expect_echo(f, 10);  // the queue carries on
}

TEST_F(XenbusLifecycleTest, FrontendCloseReleasesEveryMappingChannelAndWatch) {
  auto& f = connect(5, 0);
  auto& other = connect(6, 0);
  expect_echo(f, 20);
  ASSERT_TRUE(f.close());  // close() revokes the grant: EBUSY if still mapped
  EXPECT_FALSE(f.granted());
  EXPECT_EQ(mapped(), 1u);
  EXPECT_EQ(worker_queues(), 1u);
  EXPECT_EQ(backend_state(5, 0), "6");
  // online=1: the device stays, waiting for a reconnect.
  EXPECT_EQ(driver_state(5, 0), XenbusState::kClosed);
  EXPECT_EQ(driver().stats().disconnects.get(), 1u);
  expect_echo(other, 20);

  // Then the toolstack removes it: every watch of it goes.
  ASSERT_TRUE(tools_->remove_device(kEcho, 5, 0, kDom0, 2000ms));
  ASSERT_TRUE(eventually([&] { return devices() == 1; }, kWait));
  drop_frontend(5, 0);
  drop_frontend(6, 0);
  EXPECT_EQ(watches(), base_watches + driver_watches + 1 /*device 6/0*/);
}

TEST_F(XenbusLifecycleTest, CooperativeRemoveAsLibxl) {
  auto& f = connect(5, 0);
  expect_echo(f, 10);
  auto ts = host_->open_xenstore(kDom0);
  ASSERT_TRUE(ts);
  SimToolstack remover(**ts);
  Status removed = unexpected(EINPROGRESS);
  std::thread t([&] { removed = remover.remove_device(kEcho, 5, 0, kDom0, 3000ms); });
  // The guest's kernel sees its backend Closing and closes.
  auto saw = f.xenbus().wait_backend(SimXenbusFrontend::bit(XenbusState::kClosing));
  Status closed = f.close();
  t.join();
  ASSERT_TRUE(saw) << error_string(saw.error());
  EXPECT_TRUE(closed) << error_string(closed.error());
  EXPECT_TRUE(removed) << error_string(removed.error());
  ASSERT_TRUE(eventually([&] { return devices() == 0; }, kWait));
  EXPECT_EQ(mapped(), 0u);
  EXPECT_EQ(worker_queues(), 0u);
  EXPECT_EQ(tools_xs_->read(kXsNoTxn, be(5, 0)).error(), ENOENT);
  drop_frontend(5, 0);
  EXPECT_EQ(watches(), base_watches + driver_watches);
}

TEST_F(XenbusLifecycleTest, ReconnectAfterFrontendReturnsToInitialising) {
  auto& f = connect(5, 0);
  expect_echo(f, 50);
  ASSERT_TRUE(f.close());
  EXPECT_EQ(mapped(), 0u);
  // Guest resume / kexec: the frontend starts over with a fresh ring.
  ASSERT_TRUE(f.restart());
  EXPECT_EQ(backend_state(5, 0), "2");
  ASSERT_TRUE(f.connect());
  EXPECT_EQ(mapped(), 1u);
  expect_echo(f, 50);
  EXPECT_EQ(driver().stats().connects.get(), 2u);
  EXPECT_EQ(driver().stats().probes.get(), 1u) << "the same device, not a new probe";
  // Restarting while connected (a crashed guest kernel) disconnects first.
  ASSERT_TRUE(f.xenbus().write_state(XenbusState::kInitialising));
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kInitWait));
  EXPECT_EQ(mapped(), 0u);
  ASSERT_TRUE(f.release());
  ASSERT_TRUE(f.connect());
  expect_echo(f, 5);
}

TEST_F(XenbusLifecycleTest, HotUnplugReleasesWithoutTheGuest) {
  auto& f = connect(5, 0);
  auto& g = connect(5, 1);
  expect_echo(f, 10);
  ASSERT_TRUE(tools_->force_remove(kEcho, 5, 0, kDom0));
  ASSERT_TRUE(eventually([&] { return devices() == 1; }, kWait));
  EXPECT_EQ(mapped(), 1u);
  EXPECT_EQ(worker_queues(), 1u);
  EXPECT_TRUE(f.release()) << "the grant is no longer mapped";
  EXPECT_EQ(tools_xs_->read(kXsNoTxn, be(5, 0)).error(), ENOENT) << "not resurrected by a state write";
  expect_echo(g, 10);
  drop_frontend(5, 0);
  EXPECT_EQ(watches(), base_watches + driver_watches + 1 + 1);
}

TEST_F(XenbusLifecycleTest, GuestDeathReleasesEverything) {
  connect(5, 0);
  connect(5, 1);
  auto& other = connect(6, 0);
  ASSERT_TRUE(host_->destroy_domain(5));
  frontends[{5, 0}]->abandon();
  frontends[{5, 1}]->abandon();
  ASSERT_TRUE(eventually([&] { return devices() == 1; }, kWait));
  EXPECT_EQ(mapped(), 1u);
  EXPECT_EQ(worker_queues(), 1u);
  EXPECT_EQ(backend_state(5, 0), "6") << "Closed, for the toolstack's remove";
  EXPECT_EQ(driver().stats().destroys.get(), 2u);
  expect_echo(other, 100);
  drop_frontend(5, 0);
  drop_frontend(5, 1);
  EXPECT_EQ(watches(), base_watches + driver_watches + 1 + 1);
  // The toolstack's cleanup afterwards: nothing to do for the daemon.
  ASSERT_TRUE(tools_->remove_device(kEcho, 5, 0, kDom0, 500ms));
  ASSERT_TRUE(tools_->remove_device(kEcho, 5, 1, kDom0, 500ms));
  EXPECT_EQ(devices(), 1u);
}

TEST_F(XenbusLifecycleTest, GarbageStateClosesThatDeviceOnly) {
  auto& bad = connect(5, 0);
  auto& good = connect(5, 1);
  ASSERT_TRUE(bad.xenbus().write_raw("state", "\x01garbage"));
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kClosing));
  auto err = tools_xs_->read(kXsNoTxn, be(5, 0) + "/error");
  ASSERT_TRUE(err);
  EXPECT_THAT(*err, StartsWith("22 "));
  ASSERT_TRUE(eventually([&] { return mapped() == 1; }, kWait));
  EXPECT_EQ(driver().stats().protocol_errors.get(), 1u);
  expect_echo(good, 100);
  EXPECT_TRUE(bad.release());
}

TEST_F(XenbusLifecycleTest, GarbageRingRefIsRefused) {
  auto& f = plug(5, 0);
  auto& good = connect(6, 0);
  const uint64_t maps_before = host_->counters().map_calls.load();
  ASSERT_TRUE(f.xenbus().wait_backend(XenbusState::kInitWait));
  ASSERT_TRUE(f.xenbus().write_raw("ring-ref", "0x10"));
  ASSERT_TRUE(f.xenbus().write_raw("event-channel", "1"));
  ASSERT_TRUE(f.xenbus().write_state(XenbusState::kInitialised));
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kClosing));
  EXPECT_THAT(*tools_xs_->read(kXsNoTxn, be(5, 0) + "/error"), StartsWith("22 "));
  EXPECT_EQ(host_->counters().map_calls.load(), maps_before) << "refused before any map";
  EXPECT_EQ(driver().stats().connect_failures.get(), 1u);
  expect_echo(good, 10);
}

TEST_F(XenbusLifecycleTest, UngrantedRingRefIsRefused) {
  auto& f = plug(5, 0);
  ASSERT_TRUE(f.xenbus().wait_backend(XenbusState::kInitWait));
  ASSERT_TRUE(f.xenbus().write_raw("ring-ref", "4000"));  // never granted
  ASSERT_TRUE(f.xenbus().write_raw("event-channel", "1"));
  ASSERT_TRUE(f.xenbus().write_state(XenbusState::kConnected));
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kClosing));
  EXPECT_TRUE(tools_xs_->read(kXsNoTxn, be(5, 0) + "/error").has_value());
  EXPECT_EQ(mapped(), 0u);
}

TEST_F(XenbusLifecycleTest, BadEventChannelReleasesThePartialConnect) {
  // A real grant but a port that was never offered: the ring is mapped,
  // the bind fails, and the mapping must not stay behind.
  auto& f = plug(5, 0);
  test::RigGuest& g = guest(5);
  auto pfn = g.dom->alloc_pages(1);
  ASSERT_TRUE(pfn);
  auto ref = g.dom->grant_access(kDom0, *pfn, false);
  ASSERT_TRUE(ref);
  SimFrontRing<EchoRing> ring;
  ASSERT_TRUE(ring.init(g.dom->page(*pfn), kPageSize));
  ASSERT_TRUE(f.xenbus().wait_backend(XenbusState::kInitWait));
  ASSERT_TRUE(f.xenbus().write_raw("ring-ref", std::to_string(*ref)));
  ASSERT_TRUE(f.xenbus().write_raw("event-channel", "999"));
  const uint64_t maps_before = host_->counters().map_calls.load();
  ASSERT_TRUE(f.xenbus().write_state(XenbusState::kInitialised));
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kClosing));
  EXPECT_GT(host_->counters().map_calls.load(), maps_before);
  EXPECT_EQ(mapped(), 0u);
  EXPECT_EQ(g.dom->active_maps(*ref), 0u);
  EXPECT_TRUE(g.dom->end_access(*ref));
}

TEST_F(XenbusLifecycleTest, RingOverrunHaltsTheQueueAndClosesTheDevice) {
  auto& bad = connect(5, 0);
  auto& good = connect(5, 1);
  expect_echo(bad, 5);
  // A producer index far beyond what the ring holds.
  bad.ring().set_req_prod_raw(bad.ring().req_prod_pvt() + 100000);
  ASSERT_TRUE(bad.kick());
  ASSERT_TRUE(backend_becomes(5, 0, XenbusState::kClosing));
  EXPECT_THAT(*tools_xs_->read(kXsNoTxn, be(5, 0) + "/error"), StartsWith(std::to_string(EPROTO) + " "));
  ASSERT_TRUE(eventually([&] { return mapped() == 1; }, kWait));
  expect_echo(good, 50);
  EXPECT_TRUE(bad.release());
}

TEST_F(XenbusLifecycleTest, StopReleasesEverything) {
  connect(5, 0);
  connect(6, 0);
  EXPECT_EQ(mapped(), 2u);
  daemon().control().call([&] { driver().stop(); });
  EXPECT_EQ(mapped(), 0u);
  EXPECT_EQ(worker_queues(), 0u);
  frontends.clear();
  EXPECT_EQ(watches(), base_watches);
}

}  // namespace
}  // namespace xenpath::sim
