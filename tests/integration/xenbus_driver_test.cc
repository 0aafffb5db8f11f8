// BackendDriver against the simulated xenstored over its unix socket (the
// production LibxenStore adapter), with a recording device type so that
// every lifecycle decision the driver makes is visible: probes, connects,
// disconnects, destruction, watches, error nodes, xenstore cost per device.
//
// Single-threaded on purpose: the test plays toolstack and guest through
// in-process connections and pumps the driver's events itself, so every
// interleaving is deterministic.
#include <poll.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/libxen/libxen_store.h"
#include "common/xenbus/backend_driver.h"
#include "sim/sim_toolstack.h"
#include "sim/sim_xenbus_frontend.h"
#include "sim/sim_xenstored.h"

namespace xenpath::sim {
namespace {

using namespace std::chrono_literals;

constexpr std::string_view kType = "rec";

// What the driver did to each device, by devid.
struct Journal {
  struct Entry {
    int creates = 0, features = 0, reads = 0;  // calls of each step, in probe order
    int connects = 0, disconnects = 0, destroyed = 0;
    bool live = false;  // connect succeeded, no disconnect since
    std::string params;
    uint32_t ring_ref = 0;
    std::vector<std::string> key_events;  // frontend_key_changed() keys
    bool key_event_while_down = false;    // one came while not connected
  };
  bool watch_keys = false;  // devices ask for a watch on "watched-key"
  std::map<std::pair<DomId, uint32_t>, Entry> by_dev;
  int fail_connects = 0;  // next N connects fail with EIO
  Entry& at(DomId fe, uint32_t devid) { return by_dev[{fe, devid}]; }
  int live() const {
    int n = 0;
    for (const auto& [k, e] : by_dev) n += e.live ? 1 : 0;
    return n;
  }
};

class RecordingDevice final : public BackendDevice {
 public:
  RecordingDevice(Journal& j, DeviceAddress addr) : j_(j), addr_(std::move(addr)) {}
  ~RecordingDevice() override { e().destroyed++; }

  Status write_backend_features(XenStore& xs, XsTxn t) noexcept override {
    e().features++;
    return xs.write(t, addr_.backend_path + "/feature-recording", "1");
  }
  Status read_frontend(XenStore& xs, XsTxn t) noexcept override {
    e().reads++;
    XP_ASSIGN_OR_RETURN(std::string v, xs.read(t, addr_.frontend_path + "/ring-ref"));
    uint32_t ref = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), ref);
    if (v.empty() || ec != std::errc{} || p != v.data() + v.size()) return unexpected(EINVAL);
    ring_ref_ = ref;
    return ok();
  }
  Status connect() noexcept override {
    e().connects++;
    if (j_.fail_connects > 0) {
      --j_.fail_connects;
      e().live = true;  // a partial connect: the driver must disconnect it
      return unexpected(EIO);
    }
    e().ring_ref = ring_ref_;
    e().live = true;
    return ok();
  }
  void disconnect() noexcept override {
    e().disconnects++;
    e().live = false;
  }
  std::span<const std::string_view> frontend_watches() const noexcept override {
    static constexpr std::string_view kKeys[] = {"watched-key"};
    if (!j_.watch_keys) return {};
    return kKeys;
  }
  void frontend_key_changed(XenStore& /*xs*/, std::string_view key) noexcept override {
    if (!e().live) e().key_event_while_down = true;
    e().key_events.emplace_back(key);
  }

 private:
  Journal::Entry& e() { return j_.at(addr_.frontend_id, addr_.devid); }
  Journal& j_;
  DeviceAddress addr_;
  uint32_t ring_ref_ = 0;
};

class RecordingType final : public DeviceType {
 public:
  explicit RecordingType(Journal& j) : j_(j) {}
  std::string_view name() const noexcept override { return kType; }
  Result<std::unique_ptr<BackendDevice>> create(const DeviceAddress& addr, XenStore& xs, XsTxn t) noexcept override {
    auto& e = j_.at(addr.frontend_id, addr.devid);
    e.creates++;
    XP_ASSIGN_OR_RETURN(e.params, xs.read(t, addr.backend_path + "/params"));
    return std::unique_ptr<BackendDevice>(new RecordingDevice(j_, addr));
  }

 private:
  Journal& j_;
};

class XenbusDriverTest : public ::testing::Test {
 protected:
  void SetUp() override {
    spdlog::set_level(getenv("XP_LOG") ? spdlog::level::debug : spdlog::level::warn);
    auto sx = SimXenstored::start("");
    ASSERT_TRUE(sx) << error_string(sx.error());
    xsd = std::move(*sx);
    auto ts = xsd->connect(kDom0);
    ASSERT_TRUE(ts);
    tools_xs = std::move(*ts);
    tools = std::make_unique<SimToolstack>(*tools_xs);
    ASSERT_TRUE(tools_xs->write(kXsNoTxn, "/local/domain/0/name", "Domain-0"));
    base_watches = xsd->watch_count();
  }

  void TearDown() override {
    driver.reset();
    guests.clear();
    if (xsd) {
      EXPECT_EQ(xsd->watch_count(), base_watches);
      EXPECT_EQ(xsd->open_transactions(), 0u);
    }
  }

  void start_driver() {
    auto xs = LibxenStore::open(xsd->socket_path());
    ASSERT_TRUE(xs) << error_string(xs.error());
    driver = std::make_unique<BackendDriver>(std::move(*xs), BackendDriver::Options{});
    ASSERT_TRUE(driver->add_type(std::make_unique<RecordingType>(journal)));
    ASSERT_TRUE(driver->start());
    pump();
  }

  // A guest: its home directory (owned by it, as the toolstack makes it)
  // and an in-process connection acting as it.
  XenStore& guest(DomId d) {
    auto it = guests.find(d);
    if (it != guests.end()) return *it->second;
    const std::string home = "/local/domain/" + std::to_string(d);
    EXPECT_TRUE(tools_xs->mkdir(kXsNoTxn, home));
    const XsPerm perms[] = {{d, XsPerm::kNone}};
    EXPECT_TRUE(tools_xs->set_permissions(kXsNoTxn, home, perms));
    EXPECT_TRUE(tools_xs->write(kXsNoTxn, home + "/domid", std::to_string(d)));
    xsd->introduce_domain(d);
    auto c = xsd->connect(d);
    EXPECT_TRUE(c);
    return *guests.emplace(d, std::move(*c)).first->second;
  }

  void add(DomId fe, uint32_t devid) {
    guest(fe);
    ASSERT_TRUE(tools->add_device(kType, fe, devid, kDom0, {{"params", "disk-" + std::to_string(devid)}}, {}));
  }

  static std::string be(DomId fe, uint32_t devid) { return SimToolstack::backend_path(kDom0, kType, fe, devid); }
  static std::string fe_path(DomId fe, uint32_t devid) { return SimToolstack::frontend_path(fe, kType, devid); }

  // Handles driver events until `cond` holds (bounded).
  bool pump_until(const std::function<bool()>& cond, std::chrono::milliseconds limit = 3000ms) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
      while (driver->process_events() > 0) {
      }
      if (cond()) return true;
      if (std::chrono::steady_clock::now() > deadline) return false;
      pollfd pfd{driver->watch_fd(), POLLIN, 0};
      (void)::poll(&pfd, 1, 5);
    }
  }
  // Handles whatever is pending now, including the server's replies in flight.
  void pump() {
    for (int i = 0; i < 3; ++i) {
      pollfd pfd{driver->watch_fd(), POLLIN, 0};
      (void)::poll(&pfd, 1, 20);
      while (driver->process_events() > 0) {
      }
    }
  }

  std::string backend_state(DomId fe, uint32_t devid) {
    auto v = tools_xs->read(kXsNoTxn, be(fe, devid) + "/state");
    // Built by append: GCC 12 at -O3 misreads "<" + std::string (-Wrestrict).
    return v ? *v : std::string("<").append(error_string(v.error())).append(">");
  }
  bool backend_is(DomId fe, uint32_t devid, XenbusState s) { return backend_state(fe, devid) == state_value(s); }
  bool wait_backend(DomId fe, uint32_t devid, XenbusState s) {
    return pump_until([&] { return backend_is(fe, devid, s); });
  }

  // The guest's side of the handshake, as raw xenstore writes.
  void fe_write(DomId fe, uint32_t devid, std::string_view key, std::string_view value) {
    ASSERT_TRUE(guest(fe).write(kXsNoTxn, fe_path(fe, devid) + "/" + std::string(key), value));
  }
  void fe_state(DomId fe, uint32_t devid, XenbusState s) { fe_write(fe, devid, "state", state_value(s)); }
  void fe_initialised(DomId fe, uint32_t devid, std::string_view ring_ref) {
    XenStore& g = guest(fe);
    ASSERT_TRUE(run_transaction(g, [&](XsTxn t) -> Status {
      XP_TRY(g.write(t, fe_path(fe, devid) + "/ring-ref", ring_ref));
      return g.write(t, fe_path(fe, devid) + "/state", state_value(XenbusState::kInitialised));
    }));
  }
  // The driver started and device `devid` of frontend 5 connected: its
  // journal entry.
  Journal::Entry& start_connected(uint32_t devid) {
    start_driver();
    connect(5, devid);
    return journal.at(5, devid);
  }
  void connect(DomId fe, uint32_t devid) {
    add(fe, devid);
    ASSERT_TRUE(wait_backend(fe, devid, XenbusState::kInitWait));
    fe_initialised(fe, devid, std::to_string(100 + devid));
    ASSERT_TRUE(wait_backend(fe, devid, XenbusState::kConnected));
    fe_state(fe, devid, XenbusState::kConnected);
    pump();
  }

  std::unique_ptr<SimXenstored> xsd;
  std::unique_ptr<XenStore> tools_xs;
  std::unique_ptr<SimToolstack> tools;
  std::map<DomId, std::unique_ptr<XenStore>> guests;
  std::unique_ptr<BackendDriver> driver;
  Journal journal;
  size_t base_watches = 0;
};

TEST_F(XenbusDriverTest, ProbeWritesFeaturesHotplugStatusAndInitWaitInOneTransaction) {
  start_driver();
  const auto before = xsd->socket_stats();
  add(5, 51712);
  ASSERT_TRUE(wait_backend(5, 51712, XenbusState::kInitWait));
  const auto after = xsd->socket_stats();
  EXPECT_EQ(*tools_xs->read(kXsNoTxn, be(5, 51712) + "/hotplug-status"), "connected");
  EXPECT_EQ(*tools_xs->read(kXsNoTxn, be(5, 51712) + "/feature-recording"), "1");
  auto& e = journal.at(5, 51712);
  EXPECT_EQ(e.creates, 1);
  EXPECT_EQ(e.params, "disk-51712");
  EXPECT_EQ(e.features, 1);
  EXPECT_EQ(e.connects, 0);
  EXPECT_EQ(driver->stats().probes.get(), 1u);
  EXPECT_EQ(driver->stats().devices.get(), 1u);
  EXPECT_EQ(driver->device_state(kType, 5, 51712), XenbusState::kInitWait);
  // One transaction for the whole probe; one watch for the device.
  EXPECT_EQ(after.transactions - before.transactions, 1u);
  EXPECT_EQ(after.by_type[XS_WATCH] - before.by_type[XS_WATCH], 1u);
  EXPECT_EQ(after.by_type[XS_DIRECTORY] - before.by_type[XS_DIRECTORY], 0u);
  EXPECT_EQ(xsd->watch_count(), base_watches + 2 /*type, @releaseDomain*/ + 1);
}

TEST_F(XenbusDriverTest, ConnectsOnInitialisedAndOnlyOnce) {
  auto& e = start_connected(0);
  EXPECT_EQ(e.reads, 1);
  EXPECT_EQ(e.connects, 1);
  EXPECT_EQ(e.ring_ref, 100u);
  EXPECT_TRUE(e.live);
  EXPECT_EQ(driver->stats().connected.get(), 1u);
  // Watches fire again (a guest rewriting its state): nothing reconnects.
  fe_state(5, 0, XenbusState::kConnected);
  fe_state(5, 0, XenbusState::kConnected);
  pump();
  EXPECT_EQ(e.connects, 1);
  EXPECT_EQ(e.disconnects, 0);
  EXPECT_TRUE(backend_is(5, 0, XenbusState::kConnected));
}

TEST_F(XenbusDriverTest, FrontendAlreadyInitialisedWhenProbedConnects) {
  guest(7);
  ASSERT_TRUE(tools->add_device(kType, 7, 1, kDom0, {{"params", "x"}}, {}));
  fe_initialised(7, 1, "42");
  start_driver();  // the initial enumeration finds it; the fe watch's first firing connects
  ASSERT_TRUE(wait_backend(7, 1, XenbusState::kConnected));
  EXPECT_EQ(journal.at(7, 1).ring_ref, 42u);
}

TEST_F(XenbusDriverTest, OrderlyCloseReleasesAndReconnectWorks) {
  auto& e = start_connected(3);
  fe_state(5, 3, XenbusState::kClosing);
  ASSERT_TRUE(wait_backend(5, 3, XenbusState::kClosing));
  EXPECT_TRUE(e.live);
  fe_state(5, 3, XenbusState::kClosed);
  ASSERT_TRUE(wait_backend(5, 3, XenbusState::kClosed));
  EXPECT_FALSE(e.live);
  EXPECT_EQ(e.disconnects, 1);
  EXPECT_EQ(e.destroyed, 0) << "online=1: the device stays for a reconnect";
  EXPECT_EQ(driver->stats().connected.get(), 0u);

  // Guest resume/kexec: back to Initialising, then a new handshake.
  fe_state(5, 3, XenbusState::kInitialising);
  ASSERT_TRUE(wait_backend(5, 3, XenbusState::kInitWait));
  fe_initialised(5, 3, "777");
  ASSERT_TRUE(wait_backend(5, 3, XenbusState::kConnected));
  EXPECT_EQ(e.connects, 2);
  EXPECT_EQ(e.ring_ref, 777u);
  EXPECT_TRUE(e.live);
}

// A device's frontend_watches() are watched from its connect to its
// disconnect only (Linux netback's request-multicast-control watch).
TEST_F(XenbusDriverTest, FrontendKeyWatchesLiveOnlyWhileConnected) {
  journal.watch_keys = true;
  start_driver();
  add(5, 1);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  auto& e = journal.at(5, 1);
  const size_t watches_before = xsd->watch_count();
  fe_write(5, 1, "watched-key", "0");
  pump();
  EXPECT_TRUE(e.key_events.empty()) << "not connected yet";
  fe_initialised(5, 1, "100");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kConnected));
  EXPECT_EQ(xsd->watch_count(), watches_before + 1);
  // The watch's initial firing: a value written during the connect is seen.
  ASSERT_TRUE(pump_until([&] { return e.key_events.size() == 1; }));
  fe_write(5, 1, "watched-key", "1");
  ASSERT_TRUE(pump_until([&] { return e.key_events.size() == 2; }));
  EXPECT_EQ(e.key_events.back(), "watched-key");
  fe_write(5, 1, "another-key", "1");
  pump();
  EXPECT_EQ(e.key_events.size(), 2u) << "only the keys asked for";

  fe_state(5, 1, XenbusState::kClosing);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosing));
  fe_state(5, 1, XenbusState::kClosed);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosed));
  EXPECT_EQ(xsd->watch_count(), watches_before) << "removed at disconnect";
  fe_write(5, 1, "watched-key", "0");
  pump();
  EXPECT_EQ(e.key_events.size(), 2u);
  EXPECT_FALSE(e.key_event_while_down);

  // A reconnect watches again.
  fe_state(5, 1, XenbusState::kInitialising);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  fe_initialised(5, 1, "101");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kConnected));
  ASSERT_TRUE(pump_until([&] { return e.key_events.size() == 3; }));
  fe_write(5, 1, "watched-key", "1");
  ASSERT_TRUE(pump_until([&] { return e.key_events.size() == 4; }));
  EXPECT_FALSE(e.key_event_while_down);
}

TEST_F(XenbusDriverTest, SimXenbusFrontendDrivesTheWholeLifecycle) {
  // The generic frontend dance on the guest's own connection and thread,
  // the driver pumped here: connect, close, restart, connect again.
  start_driver();
  add(5, 4);
  auto fe_conn = xsd->connect(5);
  ASSERT_TRUE(fe_conn);
  std::atomic<int> step{0};
  Status result = ok();
  std::thread guest_thread([&] {
    auto fe = SimXenbusFrontend::attach(**fe_conn, fe_path(5, 4), 3000ms);
    auto run = [&]() -> Status {
      if (!fe) return unexpected(fe.error());
      EXPECT_EQ((*fe)->backend_path(), be(5, 4));
      EXPECT_EQ((*fe)->backend_id(), kDom0);
      XP_TRY((*fe)->connect({{"ring-ref", "11"}}));
      step = 1;
      XP_TRY((*fe)->close());
      step = 2;
      XP_TRY((*fe)->restart());
      XP_TRY((*fe)->connect({{"ring-ref", "12"}}));
      step = 3;
      return ok();
    };
    result = run();
    step = 99;
  });
  ASSERT_TRUE(pump_until([&] { return step == 99; }, 5000ms));
  guest_thread.join();
  ASSERT_TRUE(result) << error_string(result.error());
  auto& e = journal.at(5, 4);
  EXPECT_EQ(e.connects, 2);
  EXPECT_EQ(e.disconnects, 1);
  EXPECT_EQ(e.ring_ref, 12u);
  EXPECT_TRUE(backend_is(5, 4, XenbusState::kConnected));
  EXPECT_EQ(*tools_xs->read(kXsNoTxn, fe_path(5, 4) + "/state"), "4");
}

TEST_F(XenbusDriverTest, SimXenbusFrontendSeesARefusal) {
  start_driver();
  add(5, 4);
  auto fe_conn = xsd->connect(5);
  ASSERT_TRUE(fe_conn);
  std::atomic<bool> done{false};
  Status result = ok();
  std::thread guest_thread([&] {
    auto fe = SimXenbusFrontend::attach(**fe_conn, fe_path(5, 4), 3000ms);
    result = fe ? (*fe)->connect({{"ring-ref", "-1"}}) : Status(unexpected(fe.error()));
    done = true;
  });
  ASSERT_TRUE(pump_until([&] { return done.load(); }, 5000ms));
  guest_thread.join();
  EXPECT_EQ(result.error(), EPIPE);
  EXPECT_TRUE(backend_is(5, 4, XenbusState::kClosing));
}

TEST_F(XenbusDriverTest, FrontendRestartWhileConnectedDisconnectsFirst) {
  auto& e = start_connected(3);
  fe_state(5, 3, XenbusState::kInitialising);
  ASSERT_TRUE(wait_backend(5, 3, XenbusState::kInitWait));
  EXPECT_EQ(e.disconnects, 1);
  EXPECT_FALSE(e.live);
}

TEST_F(XenbusDriverTest, CooperativeRemoveAsLibxlDoes) {
  auto& e = start_connected(9);
  // libxl: online=0, state=Closing, wait for Closed, rm. Runs on another
  // thread with its own connection; this thread plays the guest and the
  // daemon's loop.
  auto ts_xs = xsd->connect(kDom0);
  ASSERT_TRUE(ts_xs);
  SimToolstack remover(**ts_xs);
  Status removed = unexpected(EINPROGRESS);
  std::thread t([&] { removed = remover.remove_device(kType, 5, 9, kDom0, 3000ms); });
  // The guest sees its backend Closing and closes.
  const bool saw_closing = pump_until([&] { return backend_is(5, 9, XenbusState::kClosing); });
  fe_state(5, 9, XenbusState::kClosed);
  const bool destroyed = pump_until([&] { return e.destroyed == 1; });
  t.join();
  ASSERT_TRUE(saw_closing);
  ASSERT_TRUE(destroyed);
  EXPECT_TRUE(removed) << error_string(removed.error());
  EXPECT_EQ(e.disconnects, 1);
  EXPECT_FALSE(e.live);
  EXPECT_EQ(driver->device_count(), 0u);
  pump();
  EXPECT_EQ(tools_xs->read(kXsNoTxn, be(5, 9)).error(), ENOENT);
  EXPECT_EQ(tools_xs->read(kXsNoTxn, fe_path(5, 9)).error(), ENOENT);
  EXPECT_EQ(journal.at(5, 9).creates, 1) << "the removed device was not probed again";
  EXPECT_EQ(xsd->watch_count(), base_watches + 2);
}

TEST_F(XenbusDriverTest, HotUnplugWithoutTheGuestsCooperation) {
  start_driver();
  connect(5, 1);
  connect(5, 2);
  ASSERT_TRUE(tools->force_remove(kType, 5, 1, kDom0));
  ASSERT_TRUE(pump_until([&] { return journal.at(5, 1).destroyed == 1; }));
  pump();
  EXPECT_EQ(journal.at(5, 1).disconnects, 1);
  EXPECT_FALSE(journal.at(5, 1).live);
  // The Closed write is skipped: the backend node is not resurrected.
  EXPECT_EQ(tools_xs->read(kXsNoTxn, be(5, 1)).error(), ENOENT);
  // The other device of the same guest is untouched.
  EXPECT_TRUE(journal.at(5, 2).live);
  EXPECT_TRUE(backend_is(5, 2, XenbusState::kConnected));
  EXPECT_EQ(driver->device_count(), 1u);
  EXPECT_EQ(xsd->watch_count(), base_watches + 2 + 1);
  // Removing the last device takes the per-guest directory with it.
  ASSERT_TRUE(tools->force_remove(kType, 5, 2, kDom0));
  ASSERT_TRUE(pump_until([&] { return driver->device_count() == 0; }));
  EXPECT_EQ(journal.live(), 0);
  EXPECT_EQ(xsd->watch_count(), base_watches + 2);
}

TEST_F(XenbusDriverTest, DevidReusedBeforeTheRemovalWasSeen) {
  start_driver();
  connect(5, 1);
  // Forced removal and an immediate re-add of the same device, both before
  // the daemon runs: the old instance goes, the new one is probed, and the
  // new backend node is not written Closed.
  ASSERT_TRUE(tools->force_remove(kType, 5, 1, kDom0));
  ASSERT_TRUE(tools->add_device(kType, 5, 1, kDom0, {{"params", "second"}}, {}));
  ASSERT_TRUE(pump_until([&] { return journal.at(5, 1).destroyed == 1; }));
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  pump();
  auto& e = journal.at(5, 1);
  EXPECT_EQ(e.creates, 2);
  EXPECT_EQ(e.params, "second");
  EXPECT_EQ(e.disconnects, 1);
  EXPECT_FALSE(e.live);
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kInitWait));
  EXPECT_EQ(driver->device_state(kType, 5, 1), XenbusState::kInitWait);
  fe_initialised(5, 1, "55");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kConnected));
  EXPECT_EQ(e.ring_ref, 55u);
}

TEST_F(XenbusDriverTest, GuestDeathReleasesEverything) {
  start_driver();
  connect(5, 1);
  connect(5, 2);
  connect(6, 1);
  // The hypervisor/toolstack side of a dying guest: its tree goes and
  // @releaseDomain fires.
  ASSERT_TRUE(tools_xs->rm(kXsNoTxn, "/local/domain/5"));
  xsd->release_domain(5);
  ASSERT_TRUE(pump_until([&] { return journal.at(5, 1).destroyed == 1 && journal.at(5, 2).destroyed == 1; }));
  EXPECT_FALSE(journal.at(5, 1).live);
  EXPECT_FALSE(journal.at(5, 2).live);
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kClosed)) << "libxl waits for Closed";
  EXPECT_TRUE(journal.at(6, 1).live);
  EXPECT_EQ(driver->device_count(), 1u);
  EXPECT_EQ(driver->stats().destroys.get(), 2u);
  // The toolstack's later cleanup of the backend nodes changes nothing.
  ASSERT_TRUE(tools->force_remove(kType, 5, 1, kDom0));
  ASSERT_TRUE(tools->force_remove(kType, 5, 2, kDom0));
  pump();
  EXPECT_EQ(journal.at(5, 1).creates, 1);
  EXPECT_EQ(driver->device_count(), 1u);
}

TEST_F(XenbusDriverTest, ReleaseOfAnotherDomainCostsOneReadPerServedGuest) {
  start_driver();
  connect(5, 1);
  connect(5, 2);
  connect(6, 1);
  guest(9);
  const auto before = xsd->socket_stats();
  xsd->release_domain(9);  // some unrelated guest died
  pump();
  const auto after = xsd->socket_stats();
  EXPECT_EQ(after.ops - before.ops, 2u) << "one existence check per frontend domain served";
  EXPECT_EQ(driver->device_count(), 3u);
  EXPECT_EQ(journal.live(), 3);
}

TEST_F(XenbusDriverTest, GarbageFrontendStateClosesWithErrorNode) {
  start_driver();
  connect(5, 1);
  connect(5, 2);
  fe_write(5, 1, "state", "banana");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosing));
  auto err = tools_xs->read(kXsNoTxn, be(5, 1) + "/error");
  ASSERT_TRUE(err);
  EXPECT_THAT(*err, ::testing::StartsWith("22 "));
  EXPECT_FALSE(journal.at(5, 1).live) << "a misbehaving frontend's mappings are released";
  EXPECT_EQ(driver->stats().protocol_errors.get(), 1u);
  // Hammering garbage writes costs the daemon one read each, no writes.
  const auto before = xsd->socket_stats();
  for (int i = 0; i < 20; ++i) fe_write(5, 1, "state", std::string("x").append(std::to_string(i)));
  pump();
  const auto after = xsd->socket_stats();
  EXPECT_EQ(after.by_type[XS_WRITE] - before.by_type[XS_WRITE], 0u);
  EXPECT_LE(after.ops - before.ops, 20u);
  // The neighbour is unaffected.
  EXPECT_TRUE(journal.at(5, 2).live);
  EXPECT_TRUE(backend_is(5, 2, XenbusState::kConnected));
  // The guest can still close and start over; the error node goes away.
  fe_state(5, 1, XenbusState::kClosed);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosed));
  fe_state(5, 1, XenbusState::kInitialising);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  EXPECT_EQ(tools_xs->read(kXsNoTxn, be(5, 1) + "/error").error(), ENOENT);
}

TEST_F(XenbusDriverTest, BadFrontendKeysFailTheConnect) {
  start_driver();
  add(5, 1);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  fe_initialised(5, 1, "not-a-number");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosing));
  auto err = tools_xs->read(kXsNoTxn, be(5, 1) + "/error");
  ASSERT_TRUE(err);
  EXPECT_THAT(*err, ::testing::StartsWith("22 "));
  EXPECT_EQ(journal.at(5, 1).connects, 0);
  EXPECT_EQ(driver->stats().connect_failures.get(), 1u);
}

TEST_F(XenbusDriverTest, FailedConnectIsReleased) {
  start_driver();
  journal.fail_connects = 1;
  add(5, 1);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kInitWait));
  fe_initialised(5, 1, "5");
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosing));
  EXPECT_THAT(*tools_xs->read(kXsNoTxn, be(5, 1) + "/error"), ::testing::StartsWith("5 "));
  EXPECT_EQ(journal.at(5, 1).connects, 1);
  EXPECT_EQ(journal.at(5, 1).disconnects, 1);
  EXPECT_FALSE(journal.at(5, 1).live);
}

TEST_F(XenbusDriverTest, DeviceErrorReportClosesOnlyThatDevice) {
  start_driver();
  connect(5, 1);
  connect(5, 2);
  EXPECT_FALSE(driver->report_device_error(kType, 5, 1, EPROTO)) << "not attached: dropped";
  pump();
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kConnected));
  driver->fail_device(kType, 5, 1, EPROTO);
  driver->fail_device(kType, 5, 99, EPROTO);  // unknown: ignored
  pump();
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kClosing));
  EXPECT_THAT(*tools_xs->read(kXsNoTxn, be(5, 1) + "/error"),
              ::testing::StartsWith(std::to_string(EPROTO) + " device failed"));
  EXPECT_FALSE(journal.at(5, 1).live);
  EXPECT_TRUE(journal.at(5, 2).live);
  EXPECT_TRUE(backend_is(5, 2, XenbusState::kConnected));
}

TEST_F(XenbusDriverTest, NotInitialisingOrIncompleteBackendsAreNotProbed) {
  start_driver();
  guest(5);
  // A device some other backend owns (already Connected), and one the
  // toolstack is still writing without a transaction (no frontend key).
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 1) + "/state", "4"));
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 2) + "/state", "1"));
  pump();
  EXPECT_EQ(driver->stats().probes.get(), 0u);
  EXPECT_GE(driver->stats().probes_ignored.get(), 2u);
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kConnected));
  // Once complete, a later event picks it up.
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, fe_path(5, 2) + "/state", "1"));
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 2) + "/frontend", fe_path(5, 2)));
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 2) + "/frontend-id", "5"));
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 2) + "/params", "p"));
  ASSERT_TRUE(wait_backend(5, 2, XenbusState::kInitWait));
  pump();
  EXPECT_EQ(driver->stats().probes.get(), 1u);
  EXPECT_EQ(driver->device_state(kType, 5, 2), XenbusState::kInitWait);
}

TEST_F(XenbusDriverTest, MissingFrontendAtProbeIsGuestGone) {
  // The backend was written but its frontend does not exist (a guest that
  // died before its devices were probed): as Linux, read as Unknown/gone.
  start_driver();
  ASSERT_TRUE(run_transaction(*tools_xs, [&](XsTxn t) -> Status {
    XP_TRY(tools_xs->write(t, be(5, 1) + "/frontend", fe_path(5, 1)));
    XP_TRY(tools_xs->write(t, be(5, 1) + "/frontend-id", "5"));
    XP_TRY(tools_xs->write(t, be(5, 1) + "/online", "1"));
    XP_TRY(tools_xs->write(t, be(5, 1) + "/params", "p"));
    return tools_xs->write(t, be(5, 1) + "/state", "1");
  }));
  ASSERT_TRUE(pump_until([&] { return driver->stats().destroys.get() == 1; }));
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kClosed));
  EXPECT_EQ(driver->device_count(), 0u);
  EXPECT_EQ(journal.at(5, 1).connects, 0);
}

TEST_F(XenbusDriverTest, MismatchedFrontendIdIsRefused) {
  start_driver();
  guest(5);
  ASSERT_TRUE(run_transaction(*tools_xs, [&](XsTxn t) -> Status {
    XP_TRY(tools_xs->write(t, be(5, 1) + "/frontend", fe_path(5, 1)));
    XP_TRY(tools_xs->write(t, be(5, 1) + "/frontend-id", "6"));
    XP_TRY(tools_xs->write(t, be(5, 1) + "/params", "p"));
    return tools_xs->write(t, be(5, 1) + "/state", "1");
  }));
  pump();
  EXPECT_EQ(driver->device_count(), 0u);
  EXPECT_TRUE(backend_is(5, 1, XenbusState::kInitialising));
}

TEST_F(XenbusDriverTest, OfflineAfterFrontendClosedDestroys) {
  start_driver();
  connect(5, 1);
  fe_state(5, 1, XenbusState::kClosed);
  ASSERT_TRUE(wait_backend(5, 1, XenbusState::kClosed));
  EXPECT_EQ(driver->device_count(), 1u);
  ASSERT_TRUE(tools_xs->write(kXsNoTxn, be(5, 1) + "/online", "0"));
  ASSERT_TRUE(pump_until([&] { return driver->device_count() == 0; }));
  EXPECT_EQ(journal.at(5, 1).destroyed, 1);
}

TEST_F(XenbusDriverTest, StopDisconnectsEverythingAndDropsWatches) {
  start_driver();
  connect(5, 1);
  connect(6, 1);
  add(7, 1);
  ASSERT_TRUE(wait_backend(7, 1, XenbusState::kInitWait));
  EXPECT_EQ(xsd->watch_count(), base_watches + 2 + 3);
  driver->stop();
  EXPECT_EQ(journal.live(), 0);
  EXPECT_EQ(journal.at(5, 1).disconnects, 1);
  EXPECT_EQ(journal.at(7, 1).disconnects, 0) << "never connected: nothing to release";
  EXPECT_EQ(journal.at(5, 1).destroyed + journal.at(6, 1).destroyed + journal.at(7, 1).destroyed, 3);
  EXPECT_EQ(driver->device_count(), 0u);
  EXPECT_EQ(driver->stats().devices.get(), 0u);
  // unwatch is synchronous on the wire: the store already forgot them.
  EXPECT_EQ(xsd->watch_count(), base_watches);
  driver->stop();  // idempotent
}

TEST_F(XenbusDriverTest, XenstoreCostPerDeviceDoesNotGrowWithDevices) {
  start_driver();
  auto cost = [&](DomId first_fe, int guests_n, int per_guest) {
    const auto before = xsd->socket_stats();
    const uint64_t want = driver->stats().connected.get() + static_cast<uint64_t>(guests_n * per_guest);
    for (int g = 0; g < guests_n; ++g) {
      for (int d = 0; d < per_guest; ++d) add(static_cast<DomId>(first_fe + g), d);
    }
    const uint64_t probes = driver->stats().probes.get() + static_cast<uint64_t>(guests_n * per_guest);
    EXPECT_TRUE(pump_until([&] { return driver->stats().probes.get() == probes; }));
    for (int g = 0; g < guests_n; ++g) {
      for (int d = 0; d < per_guest; ++d) {
        const DomId fe = static_cast<DomId>(first_fe + g);
        EXPECT_TRUE(wait_backend(fe, d, XenbusState::kInitWait));
        fe_initialised(fe, d, "9");
      }
    }
    EXPECT_TRUE(pump_until([&] { return driver->stats().connected.get() == want; }));
    pump();
    const auto after = xsd->socket_stats();
    return static_cast<double>(after.ops - before.ops) / (guests_n * per_guest);
  };
  const double small = cost(10, 2, 2);
  const double large = cost(100, 10, 8);
  EXPECT_LE(large, small * 1.1 + 1) << "small " << small << " large " << large;
  EXPECT_GT(small, 5.0);  // sanity: the measurement sees the traffic
  RecordProperty("ops_per_device_small", std::to_string(small));
  RecordProperty("ops_per_device_large", std::to_string(large));
}

}  // namespace
}  // namespace xenpath::sim
