// The vif device type end to end on the simulated host, production path:
// the BackendDriver on a control Reactor over the simulated xenstored, VIF
// queues on two worker reactors (the NetbackService on a BackendDaemon, as
// xenpath-netback runs it), a toolstack writing the keys libxl writes,
// a guest doing netfront's handshake (per queue tx-ring-ref / rx-ring-ref /
// event-channel(-tx/-rx), request-rx-copy, features, ctrl-ring-ref) and
// traffic, and a wire made of net_ring pairs (one per queue) this thread
// drives.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "netback/net_device.h"
#include "netback/net_service.h"
#include "netback/port_dpdk.h"
#include "sim/front_ring.h"
#include "sim/net/sim_frames.h"
#include "sim/net/sim_netfront.h"
#include "tests/fixtures/backend_rig.h"
#include "tests/fixtures/net_wire.h"

namespace xenpath {
namespace {

using namespace std::chrono_literals;
using namespace sim::frames;
using sim::SimNetfront;
using sim::SimToolstack;
using sim::SimXenbusFrontend;
using test::bytes_of;
using test::drain;
using test::eventually;
using test::test_dpdk;
using test::wire_receive;

constexpr DomId kGuest = 7;
constexpr const char* kMac = "00:16:3e:12:34:56";

// A port whose queue q is net_ring pair q: what a multi-queue vdev looks
// like to the VIF, with a wire end per queue for the test.
class MultiRingPort final : public PacketPort {
 public:
  MultiRingPort(std::string name, std::vector<std::unique_ptr<PacketPort>> qs)
      : name_(std::move(name)), qs_(std::move(qs)) {}
  const std::string& name() const noexcept override { return name_; }
  uint16_t rx_queues() const noexcept override { return static_cast<uint16_t>(qs_.size()); }
  uint16_t tx_queues() const noexcept override { return static_cast<uint16_t>(qs_.size()); }
  size_t rx_burst(uint16_t q, std::span<PacketBuf*> out) noexcept override { return qs_[q]->rx_burst(0, out); }
  size_t tx_burst(uint16_t q, std::span<PacketBuf* const> p) noexcept override { return qs_[q]->tx_burst(0, p); }
  size_t tx_pending(uint16_t q) const noexcept override { return qs_[q]->tx_pending(0); }
  PortCaps caps() const noexcept override { return qs_[0]->caps(); }
  MacAddr mac() const noexcept override { return qs_[0]->mac(); }
  LinkStatus link() const noexcept override { return qs_[0]->link(); }
  PortQueueStats stats(uint16_t q) const noexcept override { return qs_[q]->stats(0); }

 private:
  std::string name_;
  std::vector<std::unique_ptr<PacketPort>> qs_;
};

// One guest NIC: its xenbus frontend and one SimNetfront per queue.
struct GuestVif {
  std::unique_ptr<SimXenbusFrontend> xb;
  std::vector<std::unique_ptr<SimNetfront>> queues;
  std::vector<netif_tx_response> tx_answers;
  std::vector<SimNetfront::RxFrame> rx_frames;
  bool answered(size_t n) {
    for (auto& q : queues) q->reap_tx(tx_answers);
    return tx_answers.size() >= n;
  }
  bool received(size_t n) {
    for (auto& q : queues) q->reap_rx(rx_frames);
    return rx_frames.size() >= n;
  }
};

class NetVifDevice : public ::testing::Test, public test::SimBackendRig<NetbackService> {
 protected:
  // The NetbackService on two workers; each VIF's port is one net_ring pair
  // per queue, whose far ends are the test's wire.
  void start(VifOptions vo = {}) {
    spdlog::set_level(spdlog::level::warn);
    ASSERT_NE(test_dpdk(), nullptr);
    DaemonOptions dopt;
    dopt.name = "net-test";
    dopt.workers = 2;
    dopt.uring_entries = 0;
    NetbackOptions no;
    if (vo.max_queues == 0) vo.max_queues = 2;
    vo.drain_timeout = 2000ms;
    no.vif = vo;
    // A test moves a few packets: a small pool is quicker to make and free.
    no.pool.packets = 2047;
    no.pool.attachments = 2047;
    no.ports = [this](const DeviceAddress& a, uint16_t queues) -> Result<std::unique_ptr<PacketPort>> {
      std::vector<std::unique_ptr<PacketPort>> vif_side;
      std::vector<std::unique_ptr<PacketPort>> wire_side;
      for (uint16_t q = 0; q < queues; ++q) {
        auto pair = test_dpdk()->open_ring_pair(service().pool(), test::unique_port_name("vd"), DpdkPortConfig{});
        if (!pair) return unexpected(pair.error());
        vif_side.push_back(std::move((*pair)[0]));
        wire_side.push_back(std::move((*pair)[1]));
      }
      std::lock_guard<std::mutex> lock(wire_mu_);
      wires_[a.devid] = std::move(wire_side);
      return std::unique_ptr<PacketPort>(new MultiRingPort(
          "vif" + std::to_string(a.frontend_id) + "." + std::to_string(a.devid), std::move(vif_side)));
    };
    ASSERT_NO_FATAL_FAILURE(SimBackendRig::start(kGuest, dopt, no));
  }

  void TearDown() override {
    for (auto& [devid, ws] : wires_) {
      for (auto& w : ws) drain(*w);
    }
    vifs_.clear();
    if (ctrl_ref_ != 0) (void)guest_->end_access(ctrl_ref_);
    stop_daemon();
    wires_.clear();
    if (served_.service) {
      EXPECT_EQ(service().pool().in_use(), 0u) << "packet buffers leaked";
    }
    stop();
  }

  // The toolstack plugs the NIC (libxl's backend keys); the guest attaches.
  GuestVif& plug(uint32_t devid, sim::XsKeys backend_extra = {}, const std::string& mac = kMac) {
    sim::XsKeys bk = {{"mac", mac}, {"handle", std::to_string(devid)}, {"script", "/bin/true"}, {"type", "vif"}};
    for (auto& kv : backend_extra) bk.push_back(kv);
    auto& v = vifs_[devid];
    v = std::make_unique<GuestVif>();
    v->xb = BackendRigBase::plug(devid, bk, {{"handle", std::to_string(devid)}, {"mac", mac}});
    return *v;
  }

  // Rings and the keys announcing them, as Linux netfront writes them.
  sim::XsKeys rings(GuestVif& v, unsigned queues, bool split, bool gso = true) {
    sim::XsKeys keys = {{"request-rx-copy", "1"}, {"feature-rx-notify", "1"}, {"feature-sg", "1"},
                        {"feature-ipv6-csum-offload", "1"}, {"request-multicast-control", "1"}};
    if (gso) keys.emplace_back("feature-gso-tcpv4", "1");
    if (queues > 1) keys.emplace_back("multi-queue-num-queues", std::to_string(queues));
    for (unsigned q = 0; q < queues; ++q) {
      SimNetfront::Options o;
      o.split_event_channels = split;
      auto f = SimNetfront::create(*guest_, *guest_evtchn_, o);
      EXPECT_TRUE(f) << error_string(f.error());
      const std::string p = queues > 1 ? "queue-" + std::to_string(q) + "/" : "";
      keys.emplace_back(p + "tx-ring-ref", std::to_string((*f)->tx_ring_ref()));
      keys.emplace_back(p + "rx-ring-ref", std::to_string((*f)->rx_ring_ref()));
      if (split) {
        keys.emplace_back(p + "event-channel-tx", std::to_string((*f)->tx_port()));
        keys.emplace_back(p + "event-channel-rx", std::to_string((*f)->rx_port()));
      } else {
        keys.emplace_back(p + "event-channel", std::to_string((*f)->tx_port()));
      }
      v.queues.push_back(std::move(*f));
    }
    return keys;
  }

  const VifDevice* device(uint32_t devid) { return backend_device<VifDevice>(devid); }

  PacketPort& wire(uint32_t devid, size_t q) {
    std::lock_guard<std::mutex> lock(wire_mu_);
    return *wires_.at(devid).at(q);
  }
  void wire_send(PacketPort& w, const std::vector<uint8_t>& f) { test::wire_send(service().pool(), w, f); }

  // The guest's control ring: a granted ring page (followed by
  // `data_pages` free pages for keys and mappings), an unbound channel, and
  // the keys announcing both, added to `keys`.
  struct GuestCtrlRing {
    sim::SimFrontRing<NetifCtrlRing> ring;
    uint32_t pfn = 0;
    EvtchnPort port = 0;
    uint16_t next_id = 0;
  };
  void open_ctrl_ring(GuestCtrlRing& c, sim::XsKeys& keys, uint32_t data_pages) {
    auto pfn = guest_->alloc_pages(1 + data_pages);
    ASSERT_TRUE(pfn);
    c.pfn = *pfn;
    ASSERT_TRUE(c.ring.init(guest_->page(c.pfn), kPageSize));
    auto ref = guest_->grant_access(kDom0, c.pfn, false);
    ASSERT_TRUE(ref);
    ctrl_ref_ = *ref;
    auto port = guest_evtchn_->bind_unbound(kDom0);
    ASSERT_TRUE(port);
    c.port = *port;
    keys.emplace_back("ctrl-ring-ref", std::to_string(*ref));
    keys.emplace_back("event-channel-ctrl", std::to_string(*port));
  }
  // Plugs `devid` with `queues` queues and a control ring followed by
  // `data_pages` pages (hash key, mapping), and connects it.
  void connect_with_ctrl(uint32_t devid, uint32_t queues, uint32_t data_pages, GuestCtrlRing& ctrl, GuestVif*& out) {
    GuestVif& v = plug(devid);
    sim::XsKeys keys = rings(v, queues, false);
    ASSERT_NO_FATAL_FAILURE(open_ctrl_ring(ctrl, keys, data_pages));
    ASSERT_TRUE(v.xb->connect(keys));
    out = &v;
  }
  // Data page `i` after the control ring holds `bytes`, granted read-only
  // to the backend (a hash key or mapping, read by grant copy).
  Result<GrantRef> grant_ctrl_data(const GuestCtrlRing& ctrl, uint32_t i, const void* bytes, size_t n) {
    std::memcpy(guest_->page(ctrl.pfn + i), bytes, n);
    return guest_->grant_access(kDom0, ctrl.pfn + i, true);
  }
  // Sends `f` on the wire port of `devid`'s `port_queue` until a guest
  // queue received something: `got` (0 or 1) says which one must have.
  bool send_until_received(GuestVif& v, uint32_t devid, uint32_t port_queue, const std::vector<uint8_t>& f,
                           std::vector<SimNetfront::RxFrame> (&rx)[2], unsigned got) {
    return eventually([&] {
      wire_send(wire(devid, port_queue), f);
      std::this_thread::sleep_for(2ms);
      v.queues[0]->reap_rx(rx[0]);
      v.queues[1]->reap_rx(rx[1]);
      return !rx[got].empty();
    });
  }
  // One control message and its answer (same id and type).
  xen_netif_ctrl_response ctrl_request(GuestCtrlRing& c, uint16_t type, uint32_t d0, uint32_t d1 = 0,
                                       uint32_t d2 = 0) {
    xen_netif_ctrl_request r{};
    r.id = ++c.next_id;
    r.type = type;
    r.data[0] = d0;
    r.data[1] = d1;
    r.data[2] = d2;
    EXPECT_TRUE(c.ring.push(r));
    if (c.ring.flush()) (void)guest_evtchn_->notify(c.port);
    xen_netif_ctrl_response rsp{};
    EXPECT_TRUE(eventually([&] { return c.ring.take_responses({&rsp, 1}) == 1; }));
    EXPECT_EQ(rsp.id, r.id);
    EXPECT_EQ(rsp.type, type);
    return rsp;
  }

  std::map<uint32_t, std::unique_ptr<GuestVif>> vifs_;
  std::mutex wire_mu_;
  std::map<uint32_t, std::vector<std::unique_ptr<PacketPort>>> wires_;
  GrantRef ctrl_ref_ = 0;
};

TEST_F(NetVifDevice, HandshakeKeysTrafficAndClose) {
  start();
  GuestVif& v = plug(0);
  ASSERT_TRUE(v.xb->wait_backend(XenbusState::kInitWait));
  for (const char* k : {"feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6", "feature-ipv6-csum-offload",
                        "feature-rx-copy", "feature-multicast-control", "feature-dynamic-multicast-control",
                        "feature-split-event-channels", "feature-ctrl-ring"}) {
    EXPECT_EQ(key(0, k), "1") << k;
  }
  EXPECT_EQ(key(0, "feature-rx-flip"), "0");
  EXPECT_EQ(key(0, "multi-queue-max-queues"), "2");
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  EXPECT_EQ(key(0, "state"), "4");
  const VifDevice* d = device(0);
  ASSERT_NE(d, nullptr);
  EXPECT_TRUE(d->connected());
  ASSERT_TRUE(d->mac());
  EXPECT_EQ(d->mac()->str(), kMac);
  EXPECT_TRUE(d->rate().unlimited());
  EXPECT_TRUE(d->frontend().gso_tcpv4);
  EXPECT_FALSE(d->frontend().gso_tcpv6);

  // Guest TX: one single-slot and one three-slot frame.
  std::vector<SimNetfront::TxFrame> tx(2);
  FrameSpec a;
  a.payload = 200;
  tx[0].bytes = make_frame(a);
  FrameSpec b;
  b.payload = 9000 - 54;
  b.payload_seed = 3;
  tx[1].bytes = make_frame(b);
  tx[1].slots = {1000, 4000, 4000};
  for (auto& f : tx) ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(0, 0), 2);
  ASSERT_EQ(got.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(bytes_of(got[i]), tx[i].bytes) << i;
  pkt::free_bulk(got);
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(4); }));
  for (const auto& r : v.tx_answers) EXPECT_EQ(r.status, NETIF_RSP_OKAY);

  // Guest RX: single- and multi-slot.
  ASSERT_EQ(v.queues[0]->post_rx(16), 16u);
  std::vector<std::vector<uint8_t>> sent;
  for (size_t payload : {100u, 6000u}) {
    FrameSpec s;
    s.payload = payload;
    sent.push_back(make_frame(s));
    wire_send(wire(0, 0), sent.back());
  }
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.received(2); }));
  ASSERT_EQ(v.rx_frames.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_EQ(v.rx_frames[i].bytes, sent[i]) << i;
  EXPECT_EQ(d->queue_stats(0).rx_packets.get(), 2u);
  EXPECT_EQ(d->queue_stats(0).tx_packets.get(), 2u);

  // Orderly close: Closed, and nothing of the guest stays mapped.
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(0, XenbusState::kClosed));
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
  EXPECT_FALSE(device(0)->connected());
  v.queues.clear();  // revokes every grant
}

TEST_F(NetVifDevice, TwoQueuesSplitChannelsAndOneMulticastList) {
  start();
  GuestVif& v = plug(1);
  ASSERT_TRUE(v.xb->connect(rings(v, 2, true)));
  const VifDevice* d = device(1);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->queue_count(), 2u);
  EXPECT_NE(d->frontend().queues[0].tx_port, d->frontend().queues[0].rx_port);
  // TX on each queue reaches its port queue.
  for (size_t q = 0; q < 2; ++q) {
    SimNetfront::TxFrame f;
    FrameSpec s;
    s.payload = 300 + q;
    f.bytes = make_frame(s);
    ASSERT_TRUE(v.queues[q]->send(f));
    auto got = wire_receive(wire(1, q), 1);
    ASSERT_EQ(got.size(), 1u) << q;
    EXPECT_EQ(bytes_of(got[0]), f.bytes);
    pkt::free_bulk(got);
  }
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(2); }));

  // A subscription made on queue 0 filters what queue 1 delivers too.
  uint16_t mc_id = 0;
  auto mref = v.queues[0]->grant_tx({}, 0, mc_id);
  ASSERT_TRUE(mref);
  netif_tx_request mc[2] = {};
  mc[0].gref = *mref;
  mc[0].id = mc_id;
  mc[0].flags = NETTXF_extra_info;
  netif_extra_info e{};
  e.type = XEN_NETIF_EXTRA_TYPE_MCAST_ADD;
  const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
  std::memcpy(e.u.mcast.addr, group, 6);
  std::memcpy(&mc[1], &e, sizeof(e));
  ASSERT_TRUE(v.queues[0]->send_raw(mc));
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(3); }));
  EXPECT_EQ(v.tx_answers.back().status, NETIF_RSP_OKAY);
  EXPECT_EQ(d->queue_stats(0).tx_multicast.get(), 1u);
  ASSERT_EQ(v.queues[1]->post_rx(8), 8u);
  auto mcast_frame = [&](uint8_t last) {
    FrameSpec m;
    m.udp = true;
    m.payload = 30;
    auto f = make_frame(m);
    const uint8_t dst[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, last};
    std::memcpy(f.data(), dst, 6);
    return f;
  };
  // The replay to queue 1 is posted to its reactor: give it a moment by
  // sending the unsubscribed group first (dropped either way).
  wire_send(wire(1, 1), mcast_frame(0x99));
  ASSERT_TRUE(eventually([&] { return d->queue_stats(1).rx_dropped.get() == 1; }));
  wire_send(wire(1, 1), mcast_frame(0x03));
  ASSERT_TRUE(v.queues[1]->wait([&] { return v.received(1); }));
  std::this_thread::sleep_for(5ms);
  v.received(0);
  ASSERT_EQ(v.rx_frames.size(), 1u);
  EXPECT_EQ(v.rx_frames[0].bytes[5], 0x03);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(1, XenbusState::kClosed));
}

TEST_F(NetVifDevice, ControlRingHashMessagesAndHashExtras) {
  start();
  GuestCtrlRing ctrl;
  GuestVif* vp = nullptr;
  ASSERT_NO_FATAL_FAILURE(connect_with_ctrl(2, 1, 1, ctrl, vp));
  GuestVif& v = *vp;
  const VifDevice* d = device(2);
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->frontend().ctrl_ring);

  // The key page (read by grant copy).
  uint8_t key_bytes[40];
  for (size_t i = 0; i < sizeof key_bytes; ++i) key_bytes[i] = static_cast<uint8_t>(0x6d + i * 7);
  auto kref = grant_ctrl_data(ctrl, 1, key_bytes, sizeof key_bytes);
  ASSERT_TRUE(kref);

  auto request = [&](uint16_t type, uint32_t d0, uint32_t d1 = 0, uint32_t d2 = 0) {
    return ctrl_request(ctrl, type, d0, d1, d2);
  };
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, 0).status, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED)
      << "no algorithm yet";
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, 7).status, XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER);
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ).status,
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  auto flags = request(XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS, 0);
  EXPECT_EQ(flags.status, XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(flags.data, kHashTypesSupported);
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, *kref, sizeof key_bytes).status, XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP).status,
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE, 0).data, kHashMappingMax);
  EXPECT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 1).status, XEN_NETIF_CTRL_STATUS_SUCCESS);
  EXPECT_EQ(request(99, 0).status, XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED);
  ASSERT_NE(d->ctrl_stats(), nullptr);
  EXPECT_EQ(d->ctrl_stats()->ring.requests.get(), 9u);
  EXPECT_GE(d->ctrl_stats()->hash_updates.get(), 1u);

  // A TCP/IPv4 frame to the guest now carries its Toeplitz hash.
  ASSERT_EQ(v.queues[0]->post_rx(8), 8u);
  FrameSpec s;
  s.payload = 64;
  const auto f = make_frame(s);
  // The hash the last configuration is in force once the queue took it
  // (posted through its reactor): wait for a frame that carries it.
  ASSERT_TRUE(eventually([&] {
    wire_send(wire(2, 0), f);
    if (!v.queues[0]->wait([&] { return v.received(v.rx_frames.size() + 1); }, 1000ms)) return false;
    return v.rx_frames.back().has_hash;
  }));
  const auto& r = v.rx_frames.back();
  EXPECT_EQ(r.bytes, f);
  EXPECT_EQ(r.hash_type, _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP);
  uint8_t tuple[12];
  std::memcpy(tuple, f.data() + 14 + 12, 8);      // source, destination address
  std::memcpy(tuple + 8, f.data() + 14 + 20, 4);  // source, destination port
  EXPECT_EQ(r.hash_value, toeplitz_hash(key_bytes, tuple));
  (void)guest_->end_access(*kref);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(2, XenbusState::kClosed));
}

TEST_F(NetVifDevice, HashMappingSteersFlowsToTheGuestsQueue) {
  start();
  GuestCtrlRing ctrl;
  GuestVif* vp = nullptr;
  ASSERT_NO_FATAL_FAILURE(connect_with_ctrl(11, 2, 2, ctrl, vp));
  GuestVif& v = *vp;
  const VifDevice* d = device(11);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->queue_count(), 2u);
  uint8_t key_bytes[40];
  for (size_t i = 0; i < sizeof key_bytes; ++i) key_bytes[i] = static_cast<uint8_t>(i * 13 + 1);
  auto kref = grant_ctrl_data(ctrl, 1, key_bytes, sizeof key_bytes);
  ASSERT_TRUE(kref);
  const uint32_t to_queue1[2] = {1, 1};
  auto mref = grant_ctrl_data(ctrl, 2, to_queue1, sizeof to_queue1);
  ASSERT_TRUE(mref);
  auto request = [&](uint16_t type, uint32_t d0, uint32_t d1 = 0, uint32_t d2 = 0) {
    return ctrl_request(ctrl, type, d0, d1, d2).status;
  };
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM, XEN_NETIF_CTRL_HASH_ALGORITHM_TOEPLITZ),
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_KEY, *kref, sizeof key_bytes), XEN_NETIF_CTRL_STATUS_SUCCESS);
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS, XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP),
            XEN_NETIF_CTRL_STATUS_SUCCESS);
  // A table of one entry, 0: every flow to queue 0.
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 1), XEN_NETIF_CTRL_STATUS_SUCCESS);
  for (auto& q : v.queues) ASSERT_EQ(q->post_rx(16), 16u);
  FrameSpec s;
  s.payload = 100;
  const auto f = make_frame(s);
  std::vector<SimNetfront::RxFrame> rx[2];
  // The configuration reaches the queues through their reactors: retry
  // until a frame received on port queue 1 shows up on guest queue 0.
  ASSERT_TRUE(send_until_received(v, 11, 1, f, rx, 0));
  EXPECT_EQ(rx[0].back().bytes, f);
  EXPECT_TRUE(rx[0].back().has_hash);
  // Now a table sending everything to queue 1.
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE, 2), XEN_NETIF_CTRL_STATUS_SUCCESS);
  ASSERT_EQ(request(XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING, *mref, 2, 0), XEN_NETIF_CTRL_STATUS_SUCCESS);
  rx[0].clear();
  rx[1].clear();
  ASSERT_TRUE(send_until_received(v, 11, 0, f, rx, 1));
  EXPECT_EQ(rx[1].back().bytes, f);
  (void)guest_->end_access(*kref);
  (void)guest_->end_access(*mref);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(11, XenbusState::kClosed));
}

TEST_F(NetVifDevice, RateKeyLimitsGuestTransmit) {
  start();
  // 3000 bytes of credit per 10 s: three 1000-byte frames pass, the
  // fourth waits for the next window.
  GuestVif& v = plug(3, {{"rate", "3000,10000000"}});
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(3);
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->rate(), (RateSpec{3000, 10000000}));
  FrameSpec s;
  s.payload = 1000 - 54;
  SimNetfront::TxFrame f;
  f.bytes = make_frame(s);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(3, 0), 4, 300ms);
  EXPECT_EQ(got.size(), 3u);
  pkt::free_bulk(got);
  EXPECT_GE(d->queue_stats(0).tx_rate_limited.get(), 1u);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(3, XenbusState::kClosed));
}

TEST_F(NetVifDevice, RateKeyChangeAppliesWhileConnected) {
  start();
  // 1000 bytes per 100 s: one frame passes, the second waits ...
  GuestVif& v = plug(13, {{"rate", "1000,100000000"}});
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(13);
  ASSERT_NE(d, nullptr);
  FrameSpec s;
  s.payload = 1000 - 54;
  SimNetfront::TxFrame f;
  f.bytes = make_frame(s);
  ASSERT_TRUE(v.queues[0]->send(f));
  ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(13, 0), 2, 200ms);
  EXPECT_EQ(got.size(), 1u);
  pkt::free_bulk(got);
  // ... until the toolstack raises the rate: the waiting frame goes now,
  // not at the end of the 100 s window.
  ASSERT_TRUE(tools_xs_->write(kXsNoTxn, be(13) + "/rate", "10000000,1000"));
  got = wire_receive(wire(13, 0), 1, 3000ms);
  EXPECT_EQ(got.size(), 1u);
  pkt::free_bulk(got);
  EXPECT_TRUE(eventually([&] { return device(13)->rate() == (RateSpec{10000000, 1000}); }));
  // Removing the key means unlimited.
  ASSERT_TRUE(tools_xs_->rm(kXsNoTxn, be(13) + "/rate"));
  EXPECT_TRUE(eventually([&] { return device(13)->rate().unlimited(); }));
}

TEST_F(NetVifDevice, MalformedRateMeansUnlimited) {
  start();
  GuestVif& v = plug(4, {{"rate", "3000, 100"}});
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  EXPECT_TRUE(device(4)->rate().unlimited());
}

TEST_F(NetVifDevice, StalledGuestRxIsDroppedAndResumes) {
  VifOptions vo;
  vo.rx_stall_timeout = 60ms;
  start(vo);
  GuestVif& v = plug(5);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(5);
  ASSERT_NE(d, nullptr);
  const VifQueueStats& st = d->queue_stats(0);
  FrameSpec s;
  s.payload = 500;
  const auto f = make_frame(s);
  // No RX buffer posted: the packets wait, then the queue stalls.
  for (int i = 0; i < 5; ++i) wire_send(wire(5, 0), f);
  ASSERT_TRUE(eventually([&] { return st.rx_stalls.get() == 1; }));
  EXPECT_EQ(st.rx_stalled.get(), 1u);
  EXPECT_EQ(st.rx_stall_dropped.get(), 5u);
  // While stalled, new packets are dropped at once, not held.
  for (int i = 0; i < 3; ++i) wire_send(wire(5, 0), f);
  ASSERT_TRUE(eventually([&] { return st.rx_stall_dropped.get() == 8; }));
  EXPECT_EQ(st.rx_stalls.get(), 1u) << "one stall, reported once";
  // Buffers again: carrier on, traffic flows.
  ASSERT_EQ(v.queues[0]->post_rx(4), 4u);
  ASSERT_TRUE(eventually([&] { return st.rx_stalled.get() == 0; }));
  wire_send(wire(5, 0), f);
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.received(1); }));
  EXPECT_EQ(v.rx_frames[0].bytes, f);
  EXPECT_EQ(st.rx_packets.get(), 1u);
}

TEST_F(NetVifDevice, WithoutRxNotifyPacketsExpireAfterTheShortDrain) {
  start();
  GuestVif& v = plug(6);
  sim::XsKeys keys = rings(v, 1, false);
  std::erase_if(keys, [](const auto& kv) { return kv.first == "feature-rx-notify"; });
  ASSERT_TRUE(v.xb->connect(keys));
  const VifDevice* d = device(6);
  ASSERT_NE(d, nullptr);
  EXPECT_FALSE(d->frontend().rx_notify);
  // One buffer posted, the packet needs two: it waits, then expires (30 ms).
  ASSERT_EQ(v.queues[0]->post_rx(1), 1u);
  FrameSpec s;
  s.payload = 6000;
  wire_send(wire(6, 0), make_frame(s));
  ASSERT_TRUE(eventually([&] { return d->queue_stats(0).rx_expired.get() == 1; }, 2000ms));
  EXPECT_EQ(d->queue_stats(0).rx_stalls.get(), 0u) << "no stall detection without feature-rx-notify";
  EXPECT_FALSE(v.received(1));
}

// A frame whose IPv4 options and TCP options make 134 bytes of headers:
// beyond the 128 copied into the head.
std::vector<uint8_t> long_header_frame(size_t payload) {
  FrameSpec s;
  s.payload = payload;
  auto base = make_frame(s);
  // Sized once and filled in place (GCC 12's -Wstringop-overflow misreads
  // a fill insert() into a growing vector).
  std::vector<uint8_t> f(base.size() + 80, 0x01);  // 40 IPv4 + 40 TCP NOP options
  std::copy(base.begin(), base.begin() + 34, f.begin());
  std::copy(base.begin() + 34, base.begin() + 54, f.begin() + 74);
  std::copy(base.begin() + 54, base.end(), f.begin() + 134);
  uint8_t* ip = f.data() + 14;
  ip[0] = 0x4f;  // IHL 15
  put16(ip + 2, static_cast<uint16_t>(f.size() - 14));
  fix_ip_checksum(f);
  uint8_t* tcp = ip + 60;
  tcp[12] = 0xf0;  // data offset 15
  put16(tcp + 16, 0xbeef);  // csum_blank: whatever the guest left
  return f;
}

TEST_F(NetVifDevice, HeadersLongerThanTheCopiedHeadGetChecksumAndGso) {
  // The map path (as Linux: only the first 128 bytes copied), not the
  // measured copy-everything default.
  VifOptions vo;
  vo.tx_limits.copy_below = 0;
  start(vo);
  GuestVif& v = plug(8);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(8);
  ASSERT_NE(d, nullptr);
  // Checksum offload: one slot, so only 128 bytes are copied and the rest
  // of the headers sit in the mapped page.
  SimNetfront::TxFrame c;
  c.bytes = long_header_frame(700);
  ASSERT_EQ(c.bytes.size(), 134u + 700u);
  c.csum_blank = true;
  ASSERT_TRUE(v.queues[0]->send(c));
  auto got = wire_receive(wire(8, 0), 1);
  ASSERT_EQ(got.size(), 1u);
  {
    const auto b = bytes_of(got[0]);
    const ParsedFrame pf = parse_frame(b);
    EXPECT_TRUE(pf.error.empty()) << pf.error;
    EXPECT_EQ(pf.payload.size(), 700u);
    EXPECT_TRUE(std::equal(b.begin() + 134, b.end(), c.bytes.begin() + 134));
  }
  pkt::free_bulk(got);
  EXPECT_EQ(d->queue_stats(0).tx_port_dropped.get(), 0u);
  EXPECT_EQ(d->queue_stats(0).tx_headers_pulled.get(), 1u);

  // GSO over the same headers, the first slot ending inside them.
  SimNetfront::TxFrame g;
  g.bytes = long_header_frame(6000);
  g.csum_blank = true;
  g.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  g.gso_size = 1000;
  g.slots = {100, static_cast<uint16_t>(g.bytes.size() - 100 - 3000), 3000};
  ASSERT_TRUE(v.queues[0]->send(g));
  got = wire_receive(wire(8, 0), 6);
  ASSERT_EQ(got.size(), 6u);
  std::vector<uint8_t> payload;
  for (size_t i = 0; i < got.size(); ++i) {
    const ParsedFrame pf = parse_frame(bytes_of(got[i]));
    EXPECT_TRUE(pf.error.empty()) << i << ": " << pf.error;
    payload.insert(payload.end(), pf.payload.begin(), pf.payload.end());
  }
  EXPECT_EQ(payload, std::vector<uint8_t>(g.bytes.begin() + 134, g.bytes.end()));
  pkt::free_bulk(got);
  EXPECT_EQ(d->queue_stats(0).tx_port_dropped.get(), 0u);
}

// IPv6 with a 64-byte hop-by-hop extension header and 40 bytes of TCP
// options: 178 bytes of headers. Returns the frame; `ext` = 64.
std::vector<uint8_t> ipv6_ext_frame(size_t payload, uint8_t seed) {
  FrameSpec s;
  s.v6 = true;
  s.payload = payload;
  s.payload_seed = seed;
  auto base = make_frame(s);  // eth 14 + ipv6 40 + tcp 20 + payload
  std::vector<uint8_t> f(base.begin(), base.begin() + 54);
  std::vector<uint8_t> hbh(64, 0);
  hbh[0] = 6;      // next header: TCP
  hbh[1] = 7;      // (7 + 1) * 8 = 64 bytes
  hbh[2] = 1;      // PadN option filling the rest
  hbh[3] = 60;
  f.insert(f.end(), hbh.begin(), hbh.end());
  f.insert(f.end(), base.begin() + 54, base.begin() + 74);
  f.insert(f.end(), 40, 0x01);  // TCP NOP options
  f.insert(f.end(), base.begin() + 74, base.end());
  uint8_t* ip = f.data() + 14;
  ip[6] = 0;  // next header: hop-by-hop
  put16(ip + 4, static_cast<uint16_t>(f.size() - 54));
  uint8_t* tcp = ip + 40 + 64;
  tcp[12] = 0xf0;
  put16(tcp + 16, 0xbeef);
  return f;
}

// The TCP checksum of such a frame (pseudo-header without the extension).
bool ipv6_ext_tcp_checksum_ok(const std::vector<uint8_t>& f) {
  const uint8_t* ip = f.data() + 14;
  const size_t l4 = be16(ip + 4) - 64;
  if (f.size() != 14 + 40 + 64 + l4) return false;
  const uint32_t pseudo = sum16(ip + 8, 32) + 6 + static_cast<uint32_t>(l4);
  return fold16(sum16(ip + 40 + 64, l4, pseudo)) == 0xffff;
}

TEST_F(NetVifDevice, Ipv6ExtensionHeadersBeyondTheCopiedHeadGetChecksumAndGso) {
  // The map path (as Linux: only the first 128 bytes copied), not the
  // measured copy-everything default.
  VifOptions vo;
  vo.tx_limits.copy_below = 0;
  start(vo);
  GuestVif& v = plug(12);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(12);
  ASSERT_NE(d, nullptr);
  SimNetfront::TxFrame c;
  c.bytes = ipv6_ext_frame(500, 3);
  ASSERT_EQ(c.bytes.size(), 178u + 500u);
  c.csum_blank = true;
  ASSERT_TRUE(v.queues[0]->send(c));
  auto got = wire_receive(wire(12, 0), 1);
  ASSERT_EQ(got.size(), 1u);
  {
    const auto b = bytes_of(got[0]);
    EXPECT_TRUE(ipv6_ext_tcp_checksum_ok(b));
    EXPECT_TRUE(std::equal(b.begin() + 178, b.end(), c.bytes.begin() + 178));
  }
  pkt::free_bulk(got);
  EXPECT_EQ(d->queue_stats(0).tx_headers_pulled.get(), 1u);

  SimNetfront::TxFrame g;
  g.bytes = ipv6_ext_frame(4000, 9);
  g.csum_blank = true;
  g.gso_type = XEN_NETIF_GSO_TYPE_TCPV6;
  g.gso_size = 1000;
  ASSERT_TRUE(v.queues[0]->send(g));
  got = wire_receive(wire(12, 0), 4);
  ASSERT_EQ(got.size(), 4u);
  std::vector<uint8_t> payload;
  for (size_t i = 0; i < got.size(); ++i) {
    const auto b = bytes_of(got[i]);
    EXPECT_TRUE(ipv6_ext_tcp_checksum_ok(b)) << i;
    ASSERT_GT(b.size(), 178u);
    payload.insert(payload.end(), b.begin() + 178, b.end());
  }
  EXPECT_EQ(payload, std::vector<uint8_t>(g.bytes.begin() + 178, g.bytes.end()));
  pkt::free_bulk(got);
  EXPECT_EQ(d->queue_stats(0).tx_port_dropped.get(), 0u);
}

TEST_F(NetVifDevice, BadFrontendKeysEachRefuseTheConnection) {
  start();
  struct Case {
    uint32_t devid;
    const char* what;
    std::function<void(sim::XsKeys&)> edit;
  };
  auto drop = [](const char* k) {
    return [k](sim::XsKeys& keys) { std::erase_if(keys, [k](const auto& kv) { return kv.first == k; }); };
  };
  auto set = [](const char* k, const char* val) {
    return [k, val](sim::XsKeys& keys) {
      std::erase_if(keys, [k](const auto& kv) { return kv.first == k; });
      keys.emplace_back(k, val);
    };
  };
  const std::vector<Case> cases = {
      {20, "no request-rx-copy", drop("request-rx-copy")},
      {21, "request-rx-copy=0", set("request-rx-copy", "0")},
      {22, "malformed request-rx-copy", set("request-rx-copy", "yes")},
      {23, "three queues, two offered", set("multi-queue-num-queues", "3")},
      {24, "zero queues", set("multi-queue-num-queues", "0")},
      {25, "non-strict queue count", set("multi-queue-num-queues", "01")},
      {26, "no tx-ring-ref", drop("tx-ring-ref")},
      {27, "malformed rx-ring-ref", set("rx-ring-ref", "12abc")},
      {28, "no event channel", drop("event-channel")},
      {29, "negative event channel", set("event-channel", "-1")},
      {30, "ctrl ring without its channel", set("ctrl-ring-ref", "8")},
      {31, "malformed ctrl-ring-ref", set("ctrl-ring-ref", "0x8")},
      {32, "ring ref not granted", set("tx-ring-ref", "4000")},
  };
  for (const Case& c : cases) {
    GuestVif& v = plug(c.devid);
    sim::XsKeys keys = rings(v, 1, false);
    c.edit(keys);
    ASSERT_TRUE(v.xb->publish(keys)) << c.what;
    EXPECT_EQ(v.xb->await_connected().error(), EPIPE) << c.what;
    EXPECT_NE(key(c.devid, "error")[0], '<') << c.what << ": no error node";
  }
  // A malformed toolstack mac fails the connect as well (Linux: fatal).
  GuestVif& v = plug(40, {}, "00:16:3e:12:34");
  ASSERT_TRUE(v.xb->publish(rings(v, 1, false)));
  EXPECT_EQ(v.xb->await_connected().error(), EPIPE);
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u) << "a refused connect left a mapping";
}

TEST_F(NetVifDevice, MaliciousTxClosesTheDevice) {
  start();
  GuestVif& v = plug(9);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  uint16_t id = 0;
  const std::vector<uint8_t> bytes(200, 1);
  auto ref = v.queues[0]->grant_tx(bytes, 3800, id);
  ASSERT_TRUE(ref);
  netif_tx_request bad{};
  bad.gref = *ref;
  bad.offset = 3990;  // crosses the page: fatal in Linux netback
  bad.id = id;
  bad.size = 200;
  ASSERT_TRUE(v.queues[0]->send_raw({&bad, 1}));
  EXPECT_TRUE(backend_becomes(9, XenbusState::kClosing));
  EXPECT_NE(key(9, "error")[0], '<');
  EXPECT_TRUE(eventually([&] { return !device(9)->connected(); }));
}

TEST_F(NetVifDevice, DisconnectReclaimsGuestPagesQueuedForItsOwnRx) {
  // The map path (as Linux: only the first 128 bytes copied), not the
  // measured copy-everything default.
  VifOptions vo;
  vo.tx_limits.copy_below = 0;
  start(vo);
  GuestVif& v = plug(10);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(10);
  ASSERT_NE(d, nullptr);
  // A zero-copy frame (its pages mapped) that the wire sends straight back
  // to the same guest, which posts no RX buffer: the packet holding the
  // guest's TX pages waits in the VIF's own RX backlog.
  SimNetfront::TxFrame f;
  FrameSpec s;
  s.payload = 6000;
  f.bytes = make_frame(s);
  ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(10, 0), 1);
  ASSERT_EQ(got.size(), 1u);
  ASSERT_EQ(wire(10, 0).tx_burst(0, {got.data(), 1}), 1u);
  ASSERT_TRUE(eventually([&] { return d->queue_stats(0).rx_packets.get() == 0 && d->queue_stats(0).tx_mapped_pages.get() > 0; }));
  std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(v.answered(1)) << "the mapped slots are answered only when the page comes back";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(10, XenbusState::kClosed));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "disconnect waited for the drain timeout";
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
}

// feature-dynamic-multicast-control: the backend watches the frontend's
// request-multicast-control while connected and filters, or stops
// filtering, when the guest rewrites it; the guest's list (built with
// MCAST_ADD while filtering was off) is what it filters against.
TEST_F(NetVifDevice, MulticastControlFollowsTheFrontendKeyWhileConnected) {
  start();
  GuestVif& v = plug(14);
  sim::XsKeys keys = rings(v, 2, false);
  for (auto& [k, val] : keys) {
    if (k == "request-multicast-control") val = "0";
  }
  ASSERT_TRUE(v.xb->connect(keys));
  const VifDevice* d = device(14);
  ASSERT_NE(d, nullptr);
  ASSERT_EQ(d->queue_count(), 2u);
  EXPECT_FALSE(d->frontend().multicast_control);

  // The guest subscribes to one group while filtering is off (Linux keeps
  // the list either way).
  const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
  uint16_t mc_id = 0;
  auto mref = v.queues[0]->grant_tx({}, 0, mc_id);
  ASSERT_TRUE(mref);
  netif_tx_request mc[2] = {};
  mc[0].gref = *mref;
  mc[0].id = mc_id;
  mc[0].flags = NETTXF_extra_info;
  netif_extra_info e{};
  e.type = XEN_NETIF_EXTRA_TYPE_MCAST_ADD;
  std::memcpy(e.u.mcast.addr, group, 6);
  std::memcpy(&mc[1], &e, sizeof(e));
  ASSERT_TRUE(v.queues[0]->send_raw(mc));
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(1); }));
  EXPECT_EQ(v.tx_answers.back().status, NETIF_RSP_OKAY);
  ASSERT_EQ(v.queues[1]->post_rx(64), 64u);

  auto mcast_frame = [&](uint8_t last) {
    FrameSpec m;
    m.udp = true;
    m.payload = 30;
    auto f = make_frame(m);
    const uint8_t dst[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, last};
    std::memcpy(f.data(), dst, 6);
    return f;
  };
  const VifQueueStats& st = d->queue_stats(1);
  auto delivered = [&](uint8_t last) {
    wire_send(wire(14, 1), mcast_frame(last));
    return v.queues[1]->wait([&] { return v.received(v.rx_frames.size() + 1); }, 1000ms);
  };
  // Off: an unsubscribed group reaches the guest.
  ASSERT_TRUE(delivered(0x99));
  EXPECT_EQ(st.rx_dropped.get(), 0u);

  // The guest turns it on: the same group is filtered, on every queue,
  // once the change reached them (posted through their reactors).
  ASSERT_TRUE(guest_xs_->write(kXsNoTxn, fe(14) + "/request-multicast-control", "1"));
  ASSERT_TRUE(eventually([&] {
    const uint64_t before = st.rx_dropped.get();
    wire_send(wire(14, 1), mcast_frame(0x99));
    if (!eventually([&] { return st.rx_dropped.get() > before || v.received(v.rx_frames.size() + 1); }, 1000ms)) {
      return false;
    }
    return st.rx_dropped.get() > before;
  }));
  EXPECT_TRUE(device(14)->frontend().multicast_control);
  // The subscribed group still passes, against the list built while off.
  ASSERT_TRUE(delivered(0x03));
  EXPECT_EQ(v.rx_frames.back().bytes[5], 0x03);
  const size_t frames_while_on = v.rx_frames.size();

  // Off again: everything flows.
  ASSERT_TRUE(guest_xs_->write(kXsNoTxn, fe(14) + "/request-multicast-control", "0"));
  ASSERT_TRUE(eventually([&] { return delivered(0x99); }));
  EXPECT_EQ(v.rx_frames.back().bytes[5], 0x99);
  EXPECT_GT(v.rx_frames.size(), frames_while_on);
  EXPECT_FALSE(device(14)->frontend().multicast_control);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(14, XenbusState::kClosed));
}

// A guest's XEN_NETIF_EXTRA_TYPE_HASH travels with its packet to the peer
// port (Linux's skb_set_hash); a hash a packet carries is never handed to
// a guest (only the VIF's own Toeplitz hash is, as Linux recomputes).
TEST_F(NetVifDevice, GuestTxHashReachesThePeerAndIsNotPassedToAGuest) {
  start();
  GuestVif& v = plug(15);
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  FrameSpec s;
  s.payload = 300;
  std::vector<SimNetfront::TxFrame> tx(4);
  for (auto& f : tx) f.bytes = make_frame(s);
  tx[0].has_hash = true;
  tx[0].hash_type = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
  tx[0].hash_value = 0x12345678;
  tx[1].has_hash = true;
  tx[1].hash_type = _XEN_NETIF_CTRL_HASH_TYPE_IPV4;
  tx[1].hash_value = 0x9abcdef0;
  tx[2].has_hash = true;
  tx[2].hash_type = 7;  // no such type: ignored, as Linux ignores it
  tx[2].hash_value = 0x55555555;
  // With a GSO extra before it.
  FrameSpec big;
  big.payload = 3000;
  tx[3].bytes = make_frame(big);
  tx[3].slots = {1000, 2054};
  tx[3].csum_blank = true;
  tx[3].gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  tx[3].gso_size = 1448;
  tx[3].has_hash = true;
  tx[3].hash_type = _XEN_NETIF_CTRL_HASH_TYPE_IPV4_TCP;
  tx[3].hash_value = 0xfeedf00d;
  for (auto& f : tx) ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(15, 0), 2 + 1 + 3);
  ASSERT_EQ(got.size(), 6u);
  const PacketMeta m0 = pkt::meta(got[0]);
  EXPECT_EQ(m0.hash_type, PacketMeta::kHashL4);
  EXPECT_EQ(m0.hash, 0x12345678u);
  const PacketMeta m1 = pkt::meta(got[1]);
  EXPECT_EQ(m1.hash_type, PacketMeta::kHashL3);
  EXPECT_EQ(m1.hash, 0x9abcdef0u);
  EXPECT_EQ(pkt::meta(got[2]).hash_type, PacketMeta::kHashNone);
  for (size_t i = 3; i < 6; ++i) {
    // The port segmented it: every segment keeps the flow's hash.
    const PacketMeta m = pkt::meta(got[i]);
    EXPECT_EQ(m.hash_type, PacketMeta::kHashL4) << i;
    EXPECT_EQ(m.hash, 0xfeedf00du) << i;
  }
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(5); }));
  for (const auto& r : v.tx_answers) EXPECT_EQ(r.status, NETIF_RSP_OKAY);

  // Back to the guest (no hash configuration on its control ring): the
  // carried hash is not given to it.
  ASSERT_EQ(v.queues[0]->post_rx(8), 8u);
  ASSERT_EQ(wire(15, 0).tx_burst(0, {got.data(), 1}), 1u);
  pkt::free_bulk({got.data() + 1, got.size() - 1});
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.received(1); }));
  EXPECT_EQ(v.rx_frames[0].bytes, tx[0].bytes);
  EXPECT_FALSE(v.rx_frames[0].has_hash);
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(15, XenbusState::kClosed));
}

// Out of credit, the queue sleeps until a one-shot timer at the exact
// replenish time (Linux's credit_timeout) resumes it.
TEST_F(NetVifDevice, RateLimitedTransmitResumesOnTheCreditTimer) {
  start();
  // 2000 bytes per 20 ms: six 1000-byte frames need three windows.
  GuestVif& v = plug(16, {{"rate", "2000,20000"}});
  ASSERT_TRUE(v.xb->connect(rings(v, 1, false)));
  const VifDevice* d = device(16);
  ASSERT_NE(d, nullptr);
  const VifQueueStats& st = d->queue_stats(0);
  FrameSpec s;
  s.payload = 1000 - 54;
  SimNetfront::TxFrame f;
  f.bytes = make_frame(s);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(v.queues[0]->send(f));
  auto got = wire_receive(wire(16, 0), 6);
  EXPECT_EQ(got.size(), 6u);
  pkt::free_bulk(got);
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(6); }));
  EXPECT_GE(st.tx_rate_limited.get(), 1u);
  // The last arming is never moved or cancelled: it expires.
  ASSERT_TRUE(eventually([&] { return st.tx_credit_timer.get() >= 1; }));
  // One expiry per arming at most, one arming per refusal at most: no
  // wake-ups of its own beyond the refusals.
  EXPECT_LE(st.tx_credit_timer.get(), st.tx_rate_limited.get());
  EXPECT_LE(st.tx_credit_timer.get(), 4u) << "three windows need two replenishes (a late one may merge)";
  ASSERT_TRUE(v.xb->close());
  EXPECT_TRUE(backend_becomes(16, XenbusState::kClosed));
}

TEST(NetVifMac, ParsesLikeXenNetReadMac) {
  auto m = parse_vif_mac("00:16:3E:0a:b:ff");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->bytes, (std::array<uint8_t, 6>{0x00, 0x16, 0x3e, 0x0a, 0x0b, 0xff}));
  for (const char* bad : {"", "00:16:3e:12:34", "00:16:3e:12:34:56:", "00:16:3e:12:34:567", "00-16-3e-12-34-56",
                          "00:16:3e:12:34:5g", " 00:16:3e:12:34:56", "00:16::12:34:56"}) {
    EXPECT_FALSE(parse_vif_mac(bad)) << bad;
  }
}

}  // namespace
}  // namespace xenpath
