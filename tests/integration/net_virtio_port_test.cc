// The DPDK adapter's offload path over virtio_user, the port xenpath-netback
// uses into dom0's stack (kVhostNetVifDevargs). The far end of the virtio
// device is DPDK's own vhost library (net_vhost, over a vhost-user socket,
// in this process): an implementation nobody here wrote that turns the
// virtio-net header into mbuf metadata and back, so what crosses it is what
// vhost-net would see, without needing /dev/vhost-net. With EAL's --no-huge
// the memory is a memfd vhost-user can map (DPDK >= 20.05). A second case
// drives the kernel's vhost-net and tap where /dev/vhost-net opens.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "netback/net_queue.h"
#include "netback/port_dpdk.h"
#include "sim/net/sim_frames.h"
#include "sim/net/sim_netfront.h"
#include "tests/fixtures/net_wire.h"
#include "tests/fixtures/queue_rig.h"

namespace xenpath {
namespace {

using namespace sim::frames;
using test::bytes_of;

class NetVirtioUser : public ::testing::Test {
 public:
  void SetUp() override {
    ASSERT_NE(test::test_dpdk(), nullptr);
    pool_ = test::test_pool("vu", 4095, 1023);
    ASSERT_NE(pool_, nullptr);
  }
  void TearDown() override {
    virtio_.reset();
    vhost_.reset();
    if (!sock_.empty()) ::unlink(sock_.c_str());
    if (pool_) {
      EXPECT_EQ(pool_->in_use(), 0u) << "packet buffers leaked";
    }
  }

  // net_vhost serving a socket, virtio_user connected to it. Empty: ready.
  // With `queues` > 1 the virtio side takes netback's default devargs with
  // the vhost-user socket for /dev/vhost-net.
  std::string open_loop(uint16_t queues = 1) {
    const std::string n = test::unique_port_name("vl");
    sock_ = "/tmp/xenpath-" + n + ".sock";
    ::unlink(sock_.c_str());
    DpdkPortConfig vh;
    // tso=1: the vhost library offers TSO/GSO features both ways.
    vh.devargs = "net_vhost_" + n + ",iface=" + sock_ + ",queues=" + std::to_string(queues) + ",tso=1";
    vh.rx_queues = vh.tx_queues = queues;
    // The test's own end hands its metadata to the vhost library as it is
    // (which writes the virtio-net header from it), as a guest's stack would.
    vh.pass_metadata = true;
    auto h = test::test_dpdk()->open_port(*pool_, vh);
    if (!h) return "net_vhost: " + error_string(h.error());
    vhost_ = std::move(*h);
    DpdkPortConfig vu;
    // in_order=0: the datapath vhost-net negotiates (it has no VIRTIO_F_IN_ORDER).
    vu.devargs = "net_virtio_user_" + n + ",path=" + sock_ + ",queues=1,queue_size=256,mrg_rxbuf=1,in_order=0";
    if (queues > 1) {
      auto d = expand_devargs(kVhostNetVifDevargs, 1, 0, queues);
      if (!d) return "devargs";
      vu.devargs = *d;
      vu.devargs.replace(0, vu.devargs.find(','), "net_virtio_user_" + n);
      vu.devargs.replace(vu.devargs.find("/dev/vhost-net"), std::strlen("/dev/vhost-net"), sock_);
      // iface= names the tap, which only the vhost-kernel backend has.
      const size_t i = vu.devargs.find(",iface=");
      vu.devargs.erase(i, vu.devargs.find(',', i + 1) - i);
      vu.devargs += ",in_order=0";
      vu.rx_queues = vu.tx_queues = queues;
    }
    auto v = test::test_dpdk()->open_port(*pool_, vu);
    if (!v) return "virtio_user: " + error_string(v.error());
    virtio_ = std::move(*v);
    return {};
  }

  // Receives `n` packets on `port` (bounded wait), flushing what the other
  // end still holds back meanwhile: the vhost side may not be ready for the
  // first burst (net_vhost enables its queues when vhost-user says so, on its
  // own thread), and nothing else would retry it.
  std::vector<PacketBuf*> receive(PacketPort& port, size_t n) {
    PacketPort& other = &port == vhost_.get() ? *virtio_ : *vhost_;
    std::vector<PacketBuf*> got;
    for (int spins = 0; got.size() < n && spins < 4000; ++spins) {
      (void)other.tx_burst(0, {});
      PacketBuf* burst[32];
      const size_t k = port.rx_burst(0, burst);
      got.insert(got.end(), burst, burst + k);
      if (k == 0) std::this_thread::sleep_for(std::chrono::microseconds(250));
    }
    return got;
  }

  PacketBuf* t_packet(const std::vector<uint8_t>& frame, const PacketMeta& m) { return packet(frame, m); }
  PacketBuf* packet(const std::vector<uint8_t>& frame, const PacketMeta& m) {
    PacketBuf* p = pool_->alloc();
    EXPECT_NE(p, nullptr);
    EXPECT_TRUE(pool_->append_copy(p, {reinterpret_cast<const std::byte*>(frame.data()), frame.size()}));
    EXPECT_TRUE(pkt::set_meta(p, m));
    return p;
  }

  std::string sock_;
  std::unique_ptr<PacketPool> pool_;
  std::unique_ptr<PacketPort> vhost_;
  std::unique_ptr<PacketPort> virtio_;
};

// The largest TCP packet IP allows, as a guest's GSO request arrives.
FrameSpec gso_spec(bool v6) {
  FrameSpec s;
  s.v6 = v6;
  s.payload = 65535 - kTcpLen - (v6 ? 0 : kIp4Len);
  s.seq = 0xfffff000u;  // wraps inside the packet
  return s;
}

uint16_t field_at(const std::vector<uint8_t>& f, size_t off) { return be16(f.data() + off); }

TEST_F(NetVirtioUser, AdvertisesOffloadsAndTakesNoGuestPages) {
  const std::string why = open_loop();
  ASSERT_TRUE(why.empty()) << why;
  const PortCaps c = virtio_->caps();
  EXPECT_TRUE(c.tso);
  EXPECT_TRUE(c.l4_csum);
  EXPECT_FALSE(c.ip_csum);  // virtio has no IPv4 header checksum offload
  EXPECT_TRUE(c.rx_gso);
  EXPECT_TRUE(c.rx_csum);
  EXPECT_TRUE(c.multi_segment);
  // The vhost backend reads only memory in DPDK's memory table.
  EXPECT_FALSE(c.external_buffers);
}

// netback's default devargs (control queue, 1024 descriptors, mergeable
// buffers) with two queue pairs: each queue carries its own traffic.
TEST_F(NetVirtioUser, DefaultDevargsWithTwoQueuePairs) {
  const std::string why = open_loop(2);
  ASSERT_TRUE(why.empty()) << why;
  ASSERT_EQ(virtio_->rx_queues(), 2u);
  for (uint16_t q = 0; q < 2; ++q) {
    FrameSpec u;
    u.udp = true;
    u.payload = 200 + q;
    auto f = make_frame(u);
    fix_ip_checksum(f);
    PacketBuf* p = packet(f, PacketMeta{});
    ASSERT_EQ(virtio_->tx_queues(), 2u);
    ASSERT_EQ(virtio_->tx_burst(q, {&p, 1}), 1u);
    std::vector<PacketBuf*> got;
    for (int spins = 0; got.empty() && spins < 4000; ++spins) {
      PacketBuf* b[4];
      const size_t k = vhost_->rx_burst(q, b);
      got.insert(got.end(), b, b + k);
      if (k == 0) std::this_thread::sleep_for(std::chrono::microseconds(250));
    }
    ASSERT_EQ(got.size(), 1u) << "queue " << q;
    EXPECT_EQ(bytes_of(got[0]), f);
    pkt::free(got[0]);
  }
}

// Guest TX GSO leaves as one TSO packet: the virtio-net header carries the
// segmentation (gso_type, gso_size) and the partial checksum, nothing is
// segmented here, and the vhost end reads it back as one GSO packet.
void tso_out(NetVirtioUser* t, bool v6) {
  const std::string why = t->open_loop();
  ASSERT_TRUE(why.empty()) << why;
  const FrameSpec s = gso_spec(v6);
  const auto frame = make_frame(s);
  const uint16_t mss = 1448;
  PacketMeta m = tso_meta(mss, v6);
  PacketBuf* p = t->packet(frame, m);
  ASSERT_EQ(t->virtio_->tx_burst(0, {&p, 1}), 1u);
  EXPECT_EQ(t->virtio_->stats(0).tx_gso_packets, 0u) << "segmented in software";
  EXPECT_EQ(t->virtio_->stats(0).tx_packets, 1u);
  auto rx = t->receive(*t->vhost_, 1);
  ASSERT_EQ(rx.size(), 1u);
  const PacketMeta got = pkt::meta(rx[0]);
  EXPECT_TRUE(got.has(PacketMeta::kSegment));
  EXPECT_EQ(got.mss, mss);
  EXPECT_TRUE(got.has(v6 ? PacketMeta::kIpv6 : PacketMeta::kIpv4));
  EXPECT_TRUE(got.has(PacketMeta::kTcp | PacketMeta::kL4CsumPending));
  EXPECT_EQ(got.l2_len, kEthLen);
  EXPECT_EQ(got.l3_len, v6 ? kIp6Len : kIp4Len);
  EXPECT_EQ(got.l4_len, kTcpLen);
  auto bytes = bytes_of(rx[0]);
  ASSERT_EQ(bytes.size(), frame.size());
  const size_t l4_off = kEthLen + (v6 ? kIp6Len : kIp4Len);
  // The header the host stack checks before segmenting: a valid IPv4
  // header checksum (computed here: virtio does not offload it) ...
  if (!v6) {
    auto hdr = bytes;
    fix_ip_checksum(hdr);
    EXPECT_EQ(field_at(bytes, kEthLen + 10), field_at(hdr, kEthLen + 10)) << "IPv4 header checksum";
  }
  // ... and Linux's CHECKSUM_PARTIAL form in the TCP field: the
  // pseudo-header sum with the whole L4 length (virtio's tx_prepare turns
  // DPDK's length-less TSO form into it).
  EXPECT_EQ(field_at(bytes, l4_off + 16), partial_field(bytes)) << "partial TCP checksum";
  // Everything else unchanged.
  for (size_t off : {size_t{kEthLen} + 10, l4_off + 16}) {
    bytes[off] = frame[off];
    bytes[off + 1] = frame[off + 1];
  }
  EXPECT_EQ(bytes, frame);
  // Segmented at the receiver, every segment's checksums verify.
  std::vector<PacketBuf*> segs(64);
  auto n = t->pool_->segment(rx[0], segs);
  ASSERT_TRUE(n) << error_string(n.error());
  ASSERT_EQ(*n, (s.payload + mss - 1) / mss);
  pkt::free(rx[0]);
  for (size_t i = 0; i < *n; ++i) {
    EXPECT_TRUE(pkt::complete_checksums(segs[i]));
    const ParsedFrame pf = parse_frame(bytes_of(segs[i]));
    EXPECT_TRUE(pf.error.empty()) << "segment " << i << ": " << pf.error;
    pkt::free(segs[i]);
  }
}

TEST_F(NetVirtioUser, GuestTso4LeavesAsOneTsoPacket) { tso_out(this, false); }
TEST_F(NetVirtioUser, GuestTso6LeavesAsOneTsoPacket) { tso_out(this, true); }

// A device that takes nothing (the vhost side reads nothing): the port
// holds back a bounded number of buffers, then refuses, so the shared pool
// is not drained into one queue's backlog; everything goes once it reads.
TEST_F(NetVirtioUser, SlowDeviceBackpressuresByBuffersNotFrames) {
  const std::string why = open_loop();
  ASSERT_TRUE(why.empty()) << why;
  const auto frame = make_frame(gso_spec(false));
  const PacketMeta m = tso_meta(1448);
  size_t taken = 0;
  for (; taken < 300; ++taken) {
    PacketBuf* p = packet(frame, m);
    if (virtio_->tx_burst(0, {&p, 1}) != 1) {
      pkt::free(p);
      break;
    }
  }
  EXPECT_LT(taken, 300u) << "no backpressure";
  // The receive ring (256), the transmit ring (256 descriptors) and the
  // backlog (1024 mbufs, one packet over), never the 300 * 33 mbufs taken
  // without the bound.
  EXPECT_LE(pool_->in_use(), 256u + 256u + 1024u + 64u);
  std::vector<PacketBuf*> got;
  for (int spins = 0; got.size() < taken && spins < 8000; ++spins) {
    (void)virtio_->tx_burst(0, {});  // flushes the backlog
    PacketBuf* b[32];
    const size_t k = vhost_->rx_burst(0, b);
    got.insert(got.end(), b, b + k);
    if (k == 0) std::this_thread::sleep_for(std::chrono::microseconds(250));
  }
  EXPECT_EQ(got.size(), taken);
  EXPECT_EQ(virtio_->tx_pending(0), 0u);
  for (PacketBuf* p : got) {
    EXPECT_EQ(pkt::length(p), frame.size());
    pkt::free(p);
  }
}

// The host's GSO packets (a TSO skb through vhost-net) and partial
// checksums arrive as pending work: one kSegment packet with the mss, for
// a guest to take whole (csum_blank plus a GSO extra).
TEST_F(NetVirtioUser, HostGsoAndPartialChecksumsArriveWhole) {
  const std::string why = open_loop();
  ASSERT_TRUE(why.empty()) << why;
  FrameSpec g = gso_spec(false);
  auto big = make_frame(g);
  fix_ip_checksum(big);
  const uint16_t partial_tcp = partial_field(big);
  put16(big.data() + kEthLen + kIp4Len + 16, partial_tcp);
  PacketMeta gm = tso_meta(1400);
  gm.flags |= PacketMeta::kL4CsumPending;
  FrameSpec u;
  u.udp = true;
  u.v6 = true;
  u.payload = 999;
  auto dgram = make_frame(u);
  put16(dgram.data() + kEthLen + kIp6Len + 6, partial_field(dgram));
  PacketMeta um;
  um.flags = PacketMeta::kIpv6 | PacketMeta::kUdp | PacketMeta::kL4CsumPending;
  um.l2_len = kEthLen;
  um.l3_len = kIp6Len;
  um.l4_len = kUdpLen;
  PacketBuf* out[2] = {t_packet(big, gm), t_packet(dgram, um)};
  ASSERT_EQ(vhost_->tx_burst(0, out), 2u);
  auto rx = receive(*virtio_, 2);
  ASSERT_EQ(rx.size(), 2u);
  const PacketMeta a = pkt::meta(rx[0]);
  EXPECT_TRUE(a.has(PacketMeta::kIpv4 | PacketMeta::kTcp | PacketMeta::kSegment | PacketMeta::kL4CsumPending));
  EXPECT_EQ(a.mss, 1400);
  EXPECT_EQ(a.l4_len, kTcpLen);
  {
    const auto got = bytes_of(rx[0]);
    ASSERT_EQ(got.size(), big.size());
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], big[i]) << "byte " << i;
  }
  EXPECT_GT(pkt::segment_count(rx[0]), 1u) << "mergeable buffers chain a 64 KiB packet";
  const PacketMeta b = pkt::meta(rx[1]);
  EXPECT_TRUE(b.has(PacketMeta::kIpv6 | PacketMeta::kUdp | PacketMeta::kL4CsumPending));
  EXPECT_FALSE(b.has(PacketMeta::kSegment));
  EXPECT_EQ(bytes_of(rx[1]), dgram);
  // The pending checksum completes to one that verifies.
  EXPECT_TRUE(pkt::complete_checksums(rx[1]));
  const ParsedFrame pf = parse_frame(bytes_of(rx[1]));
  EXPECT_TRUE(pf.error.empty()) << pf.error;
  EXPECT_EQ(virtio_->stats(0).rx_dropped, 0u);
  pkt::free_bulk(rx);
}

// The whole VIF queue on this port: a simulated netfront's GSO request
// leaves as one TSO packet (copied into mbufs: the port takes no guest
// pages), and a host GSO packet reaches the guest as one netif packet with
// a GSO extra, no software GRO or segmentation on the way.
TEST_F(NetVirtioUser, VifQueueMovesGsoWholeBothWays) {
  const std::string why = open_loop();
  ASSERT_TRUE(why.empty()) << why;
  constexpr DomId kGuest = 31;
  test::QueueRig rig({.guest = kGuest, .guest_pages = 2048, .reactor_name = "vu-test", .uring_entries = 0});
  auto f = sim::SimNetfront::create(rig.guest(), rig.guest_evtchn(), {});
  ASSERT_TRUE(f) << error_string(f.error());
  std::unique_ptr<sim::SimNetfront> front = std::move(*f);
  VifQueue::Config c = sim::vif_queue_config(*front, kGuest);
  c.port = virtio_.get();
  c.pool = pool_.get();
  c.rx_gso_tcpv4 = true;
  c.rx_csum_offload = true;
  c.zero_copy = true;  // asked for, refused by the port's caps
  c.tx_limits.copy_below = 0;
  c.port_poll = std::chrono::microseconds(200);
  VifQueueStats stats;
  std::unique_ptr<VifQueue> queue;
  rig.reactor().call([&] {
    auto q = VifQueue::start(rig.worker(), c, stats);
    ASSERT_TRUE(q) << error_string(q.error());
    queue = std::move(*q);
  });
  ASSERT_NE(queue, nullptr);
  const uint64_t ring_maps = rig.map_calls();

  FrameSpec s;
  s.payload = 30000;
  sim::SimNetfront::TxFrame tf;
  tf.bytes = make_frame(s, 0xbeef);  // csum_blank: the guest left garbage there
  tf.csum_blank = true;
  tf.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  tf.gso_size = 1448;
  ASSERT_TRUE(front->send(tf));
  auto out = receive(*vhost_, 1);
  ASSERT_EQ(out.size(), 1u);
  const PacketMeta om = pkt::meta(out[0]);
  EXPECT_TRUE(om.has(PacketMeta::kSegment | PacketMeta::kIpv4 | PacketMeta::kTcp));
  EXPECT_EQ(om.mss, 1448);
  const auto ob = bytes_of(out[0]);
  ASSERT_EQ(ob.size(), tf.bytes.size());
  EXPECT_TRUE(std::equal(ob.begin() + 54, ob.end(), tf.bytes.begin() + 54)) << "payload";
  pkt::free(out[0]);
  EXPECT_EQ(virtio_->stats(0).tx_gso_packets, 0u);
  EXPECT_EQ(rig.map_calls(), ring_maps) << "guest pages mapped for a port that cannot take them";

  ASSERT_EQ(front->post_rx(64), 64u);
  FrameSpec g = gso_spec(false);
  auto big = make_frame(g);
  fix_ip_checksum(big);
  put16(big.data() + kEthLen + kIp4Len + 16, partial_field(big));
  PacketMeta gm = tso_meta(1448);
  gm.flags |= PacketMeta::kL4CsumPending;
  PacketBuf* in = packet(big, gm);
  ASSERT_EQ(vhost_->tx_burst(0, {&in, 1}), 1u);
  std::vector<sim::SimNetfront::RxFrame> rx;
  ASSERT_TRUE(front->wait([&] {
    (void)vhost_->tx_burst(0, {});  // see receive()
    front->reap_rx(rx);
    return !rx.empty();
  }));
  ASSERT_EQ(rx.size(), 1u);
  EXPECT_EQ(rx[0].bytes, big);
  EXPECT_EQ(rx[0].gso_type, XEN_NETIF_GSO_TYPE_TCPV4);
  EXPECT_EQ(rx[0].gso_size, 1448);
  EXPECT_EQ(rx[0].flags & (NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info),
            NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info);
  EXPECT_EQ(stats.rx_gro_packets.get(), 0u);
  EXPECT_EQ(stats.rx_gso_segmented.get(), 0u);

  rig.stop_queue(queue, 2000, [] { std::this_thread::sleep_for(std::chrono::milliseconds(1)); });
  front.reset();
  EXPECT_EQ(rig.live_maps(), 0u);
}

}  // namespace
}  // namespace xenpath
