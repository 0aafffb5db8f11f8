// The NetVifDevice fixture of net_device_test.cc and net_device_ctrl_test.cc:
// the vif device type end to end on the simulated host, production path:
// the BackendDriver on a control Reactor over the simulated xenstored, VIF
// queues on two worker reactors (the NetbackService on a BackendDaemon, as
// xenpath-netback runs it), a toolstack writing the keys libxl writes,
// a guest doing netfront's handshake (per queue tx-ring-ref / rx-ring-ref /
// event-channel(-tx/-rx), request-rx-copy, features, ctrl-ring-ref) and
// traffic, and a wire made of net_ring pairs (one per queue) this thread
// drives.
#pragma once

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

namespace xenpath::vif_rig {

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

// Two offloaded frames whose headers reach past what the backend copies
// (see NetVifDevice::offload_long_headers).
struct LongHeaderCase {
  uint32_t devid = 0;
  size_t hdr = 0;
  SimNetfront::TxFrame csum;
  SimNetfront::TxFrame gso;
  size_t segments = 0;
  std::function<::testing::AssertionResult(const std::vector<uint8_t>&)> frame_ok;
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
    dopt.ctl_socket = ctl_socket_;
    NetbackOptions no;
    if (vo.max_queues == 0) vo.max_queues = 2;
    vo.drain_timeout = 2000ms;
    no.vif = vo;
    // A test moves a few packets: a small pool is quicker to make and free.
    no.pool.packets = 2047;
    no.pool.attachments = 2047;
    no.port_template = port_template_;
    if (ports_) {
      no.ports = ports_;
    } else if (port_template_.empty()) {
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
    }
    ASSERT_NO_FATAL_FAILURE(SimBackendRig::start(kGuest, dopt, no, guest_pages_));
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

  // Set before start(): the daemon's control socket (none when empty).
  std::string ctl_socket_;
  // Set before start(): every VIF's port comes from here (no wire).
  VifPortFactory ports_;
  // Set before start(): the VIFs' ports are DPDK devices from this devargs
  // template (the production factory) instead of the test's ring pairs.
  std::string port_template_;
  // Set before start(): the guest's memory (a netfront's rings and receive
  // buffers take about 520 pages).
  uint32_t guest_pages_ = 8192;

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
    sim::XsKeys keys = {{"request-rx-copy", "1"},
                        {"feature-rx-notify", "1"},
                        {"feature-sg", "1"},
                        {"feature-ipv6-csum-offload", "1"},
                        {"request-multicast-control", "1"}};
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
  // Plugs `devid` (backend keys `extra`) with one queue and connects it:
  // its device, null if it did not connect.
  const VifDevice* connect_one_queue(uint32_t devid, GuestVif*& v, sim::XsKeys extra = {}) {
    v = &plug(devid, std::move(extra));
    EXPECT_TRUE(v->xb->connect(rings(*v, 1, false)));
    return device(devid);
  }
  // Plugs `devid` with one queue at 1000 bytes per 100 s and has the guest
  // send two 1000-byte frames: the first passes, the second waits for
  // credit (true when exactly that happened).
  bool connect_waiting_for_credit(uint32_t devid) {
    GuestVif* v = nullptr;
    if (connect_one_queue(devid, v, {{"rate", "1000,100000000"}}) == nullptr) return false;
    const SimNetfront::TxFrame f = tx_frame_of(1000);
    if (!v->queues[0]->send(f) || !v->queues[0]->send(f)) return false;
    auto got = wire_receive(wire(devid, 0), 2, 200ms);
    const size_t n = got.size();
    pkt::free_bulk(got);
    return n == 1;
  }
  // A TCP/IPv4 frame of `size` bytes, headers included.
  static SimNetfront::TxFrame tx_frame_of(size_t size) {
    FrameSpec s;
    s.payload = size - 54;
    SimNetfront::TxFrame f;
    f.bytes = make_frame(s);
    return f;
  }

  PacketPort& wire(uint32_t devid, size_t q) {
    std::lock_guard<std::mutex> lock(wire_mu_);
    return *wires_.at(devid).at(q);
  }
  void wire_send(PacketPort& w, const std::vector<uint8_t>& f) { test::wire_send(service().pool(), w, f); }

  // A checksum-offload frame, then a GSO frame, on a new vif `devid` on the
  // map path (as Linux: only the first 128 bytes copied, not the measured
  // copy-everything default), whose `hdr` bytes of headers reach past what is
  // copied: every frame on the wire must pass `frame_ok` and carry the
  // payload intact.
  void offload_long_headers(const LongHeaderCase& lc) {
    VifOptions vo;
    vo.tx_limits.copy_below = 0;
    start(vo);
    GuestVif* v = nullptr;
    const VifDevice* d = connect_one_queue(lc.devid, v);
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(lc.csum.csum_blank);
    ASSERT_TRUE(v->queues[0]->send(lc.csum));
    auto got = wire_receive(wire(lc.devid, 0), 1);
    ASSERT_EQ(got.size(), 1u);
    {
      const auto b = bytes_of(got[0]);
      EXPECT_TRUE(lc.frame_ok(b));
      EXPECT_EQ(b.size(), lc.csum.bytes.size());
      EXPECT_TRUE(std::equal(b.begin() + lc.hdr, b.end(), lc.csum.bytes.begin() + lc.hdr));
    }
    pkt::free_bulk(got);
    EXPECT_EQ(d->queue_stats(0).tx_port_dropped.get(), 0u);
    EXPECT_EQ(d->queue_stats(0).tx_headers_pulled.get(), 1u);

    ASSERT_TRUE(v->queues[0]->send(lc.gso));
    got = wire_receive(wire(lc.devid, 0), lc.segments);
    ASSERT_EQ(got.size(), lc.segments);
    std::vector<uint8_t> payload;
    for (size_t i = 0; i < got.size(); ++i) {
      const auto b = bytes_of(got[i]);
      EXPECT_TRUE(lc.frame_ok(b)) << i;
      ASSERT_GT(b.size(), lc.hdr);
      payload.insert(payload.end(), b.begin() + lc.hdr, b.end());
    }
    EXPECT_EQ(payload, std::vector<uint8_t>(lc.gso.bytes.begin() + lc.hdr, lc.gso.bytes.end()));
    pkt::free_bulk(got);
    EXPECT_EQ(d->queue_stats(0).tx_port_dropped.get(), 0u);
  }

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
  // The daemon started, VIF `devid` connected with `queues` queues and a
  // control ring with `data_pages` pages after it; `out` the guest's side,
  // `dev` the backend's device.
  void start_with_ctrl(uint32_t devid, uint32_t queues, uint32_t data_pages, GuestCtrlRing& ctrl, GuestVif*& out,
                       const VifDevice*& dev) {
    ASSERT_NO_FATAL_FAILURE(start());
    GuestVif& v = plug(devid);
    sim::XsKeys keys = rings(v, queues, false);
    ASSERT_NO_FATAL_FAILURE(open_ctrl_ring(ctrl, keys, data_pages));
    ASSERT_TRUE(v.xb->connect(keys));
    out = &v;
    dev = device(devid);
    ASSERT_NE(dev, nullptr);
  }
  // The guest closes the VIF; the backend follows to Closed.
  void close_vif(GuestVif& v, uint32_t devid) {
    ASSERT_TRUE(v.xb->close());
    EXPECT_TRUE(backend_becomes(devid, XenbusState::kClosed));
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
  xen_netif_ctrl_response ctrl_request(GuestCtrlRing& c, uint16_t type, uint32_t d0, uint32_t d1 = 0, uint32_t d2 = 0) {
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

}  // namespace xenpath::vif_rig
