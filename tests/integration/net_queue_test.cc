// The VIF queue datapath end to end: a simulated netfront guest on the
// simulated hypervisor, the queue on a reactor thread, and a net_ring pair
// whose far end ("the wire") this test thread drives.
#include "netback/net_queue.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include "netback/port_dpdk.h"
#include "sim/net/sim_frames.h"
#include "sim/net/sim_netfront.h"
#include "tests/fixtures/net_wire.h"
#include "tests/fixtures/queue_rig.h"

namespace xenpath {
namespace {

using namespace sim::frames;
using sim::SimNetfront;
using test::bytes_of;
using test::test_dpdk;

constexpr DomId kGuest = 11;

struct RigOptions {
  bool pass_metadata = false;
  std::chrono::microseconds port_poll{1000};
  bool split = false;
  bool rx_gso_tcpv4 = false;
  bool rx_csum_offload = true;
  bool rx_gro = true;
  bool zero_copy = true;
  // Most tests exercise the map path (the default copies every slot).
  std::optional<uint16_t> copy_below = 0;
  RateSpec rate;
};

class VifRig : public test::QueueRig {
 public:
  explicit VifRig(const RigOptions& o = {})
      : QueueRig({.guest = kGuest, .guest_pages = 2048, .reactor_name = "vif-test", .uring_entries = 0}), opts_(o) {
    SimNetfront::Options fo;
    fo.split_event_channels = o.split;
    auto f = SimNetfront::create(guest(), guest_evtchn(), fo);
    EXPECT_TRUE(f) << error_string(f.error());
    front_ = std::move(*f);

    pool_ = test::test_pool("vif");
    EXPECT_NE(pool_, nullptr);
    DpdkPortConfig base;
    base.pass_metadata = o.pass_metadata;
    auto ports = test_dpdk()->open_ring_pair(*pool_, test::unique_port_name("v"), base);
    EXPECT_TRUE(ports) << error_string(ports.error());
    vif_port_ = std::move((*ports)[0]);
    wire_ = std::move((*ports)[1]);
  }

  ~VifRig() {
    drain_wire();
    stop_queue();
    front_.reset();
    vif_port_.reset();
    wire_.reset();
    EXPECT_EQ(pool_->in_use(), 0u) << "packet buffers leaked";
    EXPECT_EQ(hv().counters().mapped_pages_live.load(), 0u) << "grant mappings leaked";
  }

  void start_queue() {
    VifQueue::Config c = sim::vif_queue_config(*front_, kGuest);
    c.port = vif_port_.get();
    c.pool = pool_.get();
    c.rate = opts_.rate;
    c.zero_copy = opts_.zero_copy;
    if (opts_.copy_below) c.tx_limits.copy_below = *opts_.copy_below;
    c.rx_gso_tcpv4 = opts_.rx_gso_tcpv4;
    c.rx_csum_offload = opts_.rx_csum_offload;
    c.rx_gro = opts_.rx_gro;
    c.multicast_control = true;
    c.port_poll = opts_.port_poll;
    c.log_prefix = "vif 11.0: ";
    reactor().call([&] {
      auto q = VifQueue::start(worker(), c, stats_, [this](int) { halts_.fetch_add(1); });
      EXPECT_TRUE(q) << error_string(q.error());
      if (q) queue_ = std::move(*q);
    });
  }

  void stop_queue() {
    QueueRig::stop_queue(queue_, 2000, [this] {
      drain_wire();
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
  }

  // Frames that reached the wire (bounded wait for `n`); the caller frees.
  std::vector<PacketBuf*> wire_receive(size_t n, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    return test::wire_receive(*wire_, n, limit);
  }
  void drain_wire() { test::drain(*wire_); }
  // Puts a frame on the wire towards the guest.
  void wire_send(const std::vector<uint8_t>& f, const PacketMeta* meta = nullptr) {
    test::wire_send(*pool_, *wire_, f, meta);
  }
  // Puts frames on the wire in one burst (the queue, started afterwards,
  // receives them in one port burst).
  void wire_send_burst(const std::vector<std::vector<uint8_t>>& frames) {
    test::wire_send_burst(*pool_, *wire_, frames);
  }

  std::vector<netif_tx_response> tx_answers;
  std::vector<SimNetfront::RxFrame> rx_frames;
  bool answered(size_t n) {
    front_->reap_tx(tx_answers);
    return tx_answers.size() >= n;
  }
  bool received(size_t n) {
    front_->reap_rx(rx_frames);
    return rx_frames.size() >= n;
  }

  const RigOptions opts_;
  std::unique_ptr<SimNetfront> front_;
  std::unique_ptr<PacketPool> pool_;
  std::unique_ptr<PacketPort> vif_port_;
  std::unique_ptr<PacketPort> wire_;
  VifQueueStats stats_;
  std::unique_ptr<VifQueue> queue_;
  std::atomic<int> halts_{0};
};

TEST(NetVifQueue, GuestTransmitsZeroCopyAndIsAnsweredAfterTheUnmap) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  FrameSpec a;
  a.udp = true;
  a.payload = 18;  // 60 bytes: copied whole
  FrameSpec b;
  b.payload = 1460;  // 1514 bytes from offset 3000: two slots
  FrameSpec c;
  c.payload = 9000 - 54;
  std::vector<SimNetfront::TxFrame> frames(3);
  frames[0].bytes = make_frame(a);
  frames[1].bytes = make_frame(b);
  frames[1].first_offset = 3000;
  frames[2].bytes = make_frame(c);
  frames[2].slots = {100, 4000, 3999, 901};
  for (const auto& f : frames) ASSERT_TRUE(rig.front_->send(f));
  // Everything is queued before the backend starts: one burst.
  rig.start_queue();
  const uint64_t rings = 2;  // the TX and RX ring pages stay mapped while connected
  auto got = rig.wire_receive(3);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(bytes_of(got[i]), frames[i].bytes) << i;
  EXPECT_EQ(rig.stats_.tx_map_calls.get(), 1u) << "one map call for the burst";
  EXPECT_EQ(rig.stats_.tx_copy_calls.get(), 1u) << "one copy call for the burst's headers";
  EXPECT_EQ(rig.stats_.tx_packets.get(), 3u);
  // Only the slots that were copied whole are answered while the wire still
  // holds the packets (their mapped pages are in use).
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(1); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  rig.answered(0);
  // The 60-byte frame and the 100-byte first slot of the third.
  EXPECT_EQ(rig.tx_answers.size(), 2u);
  EXPECT_GT(rig.front_->tx_in_flight(), 0u);
  EXPECT_EQ(rig.hv().counters().mapped_pages_live.load(), rings + 5) << "the burst's five data pages";
  pkt::free_bulk(got);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(7); })) << rig.tx_answers.size();
  for (const auto& r : rig.tx_answers) EXPECT_EQ(r.status, NETIF_RSP_OKAY);
  EXPECT_EQ(rig.front_->tx_in_flight(), 0u);
  EXPECT_EQ(rig.front_->revoke_failures(), 0u) << "a grant was answered while still mapped";
  EXPECT_EQ(rig.hv().counters().mapped_pages_live.load(), rings);
  EXPECT_EQ(rig.stats_.tx_unmap_calls.get(), 1u);
}

// A 9000-byte frame in four TX slots (100, 4000, 3999, 901 bytes): sent,
// the queue started, the frame on the wire intact (left in `got`).
void send_jumbo_in_four_slots(VifRig& rig, std::vector<PacketBuf*>& got) {
  SimNetfront::TxFrame f;
  FrameSpec s;
  s.payload = 9000 - 54;
  f.bytes = make_frame(s);
  f.slots = {100, 4000, 3999, 901};
  ASSERT_TRUE(rig.front_->send(f));
  rig.start_queue();
  got = rig.wire_receive(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(bytes_of(got[0]), f.bytes);
}

TEST(NetVifQueue, WithoutZeroCopyEveryByteIsCopiedAndAnsweredAtOnce) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.zero_copy = false;  // what a port without external-buffer support gets
  VifRig rig(o);
  std::vector<PacketBuf*> got;
  ASSERT_NO_FATAL_FAILURE(send_jumbo_in_four_slots(rig, got));
  // Answered while the wire still holds the packet: nothing of the guest is in it.
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(4); }));
  for (const auto& r : rig.tx_answers) EXPECT_EQ(r.status, NETIF_RSP_OKAY);
  EXPECT_EQ(rig.stats_.tx_map_calls.get(), 0u);
  EXPECT_EQ(rig.stats_.tx_mapped_pages.get(), 0u);
  EXPECT_EQ(rig.stats_.tx_copied_bytes.get(), 9000u);
  EXPECT_EQ(rig.stats_.tx_copy_calls.get(), 1u);
  pkt::free_bulk(got);
}

TEST(NetVifQueue, ByDefaultEverySlotIsCopiedAndAnsweredAtOnce) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.copy_below.reset();  // VifQueue's measured default
  VifRig rig(o);
  std::vector<PacketBuf*> got;
  ASSERT_NO_FATAL_FAILURE(send_jumbo_in_four_slots(rig, got));
  // Whole 4000-byte slots are below the default crossover too.
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(4); }));
  EXPECT_EQ(rig.stats_.tx_map_calls.get(), 0u);
  EXPECT_EQ(rig.stats_.tx_copied_bytes.get(), 9000u);
  EXPECT_EQ(rig.hv().counters().map_calls.load(), 2u) << "only the two ring pages were mapped";
  pkt::free_bulk(got);
}

TEST(NetVifQueue, WireTrafficReachesTheGuestWithOneCopyPerBurst) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  std::vector<std::vector<uint8_t>> sent;
  for (size_t payload : {6u, 1446u, 8946u}) {
    FrameSpec s;
    s.payload = payload;
    s.payload_seed = static_cast<uint8_t>(payload);
    sent.push_back(make_frame(s));
    rig.wire_send(sent.back());
  }
  rig.start_queue();
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(3); }));
  ASSERT_EQ(rig.rx_frames.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(rig.rx_frames[i].bytes, sent[i]) << i;
    EXPECT_EQ(rig.rx_frames[i].error, 0);
    EXPECT_EQ(rig.rx_frames[i].flags & (NETRXF_csum_blank | NETRXF_extra_info), 0);
  }
  EXPECT_EQ(rig.stats_.rx_copy_calls.get(), 1u);
  EXPECT_EQ(rig.stats_.rx_packets.get(), 3u);
  EXPECT_EQ(rig.front_->rx_posted(), 64u - 5u) << "1 + 1 + 3 slots used";
}

TEST(NetVifQueue, PacketsWaitForGuestBuffers) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  rig.start_queue();
  FrameSpec s;
  s.payload = 5000;  // two slots
  const auto f = make_frame(s);
  rig.wire_send(f);
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_FALSE(rig.received(1));
  ASSERT_EQ(rig.front_->post_rx(1), 1u);  // not enough for the whole packet
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_FALSE(rig.received(1));
  ASSERT_EQ(rig.front_->post_rx(1), 1u);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(1); }));
  EXPECT_EQ(rig.rx_frames[0].bytes, f);
}

TEST(NetVifQueue, GuestGsoIsSegmentedForAWireWithoutTso) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  rig.start_queue();
  FrameSpec s;
  s.payload = 20000;
  SimNetfront::TxFrame f;
  f.bytes = make_frame(s, 0xbeef);  // csum_blank: the guest left garbage there
  f.csum_blank = true;
  f.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  f.gso_size = 1448;
  ASSERT_TRUE(rig.front_->send(f));
  const size_t expect = (20000 + 1447) / 1448;
  auto got = rig.wire_receive(expect);
  ASSERT_EQ(got.size(), expect);
  std::vector<uint8_t> payload;
  for (size_t i = 0; i < got.size(); ++i) {
    const ParsedFrame pf = parse_frame(bytes_of(got[i]));
    EXPECT_TRUE(pf.error.empty()) << i << ": " << pf.error;
    EXPECT_EQ(pf.seq, s.seq + payload.size());
    payload.insert(payload.end(), pf.payload.begin(), pf.payload.end());
  }
  EXPECT_EQ(payload, std::vector<uint8_t>(f.bytes.begin() + 54, f.bytes.end()));
  pkt::free_bulk(got);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(5); }));
  for (const auto& r : rig.tx_answers) EXPECT_EQ(r.status, NETIF_RSP_OKAY);
}

void gso_to_guest(bool frontend_gso, bool frontend_csum) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.pass_metadata = true;  // the wire hands over unsegmented GSO packets
  o.rx_gso_tcpv4 = frontend_gso;
  o.rx_csum_offload = frontend_csum;
  VifRig rig(o);
  rig.start_queue();
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  FrameSpec s;
  s.payload = 10000;
  auto f = make_frame(s);
  fix_ip_checksum(f);
  const PacketMeta m = tso_meta(1000);
  rig.wire_send(f, &m);
  const size_t expect = frontend_gso ? 1 : 10;
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(expect); })) << rig.rx_frames.size();
  ASSERT_EQ(rig.rx_frames.size(), expect);
  if (frontend_gso) {
    const auto& r = rig.rx_frames[0];
    EXPECT_EQ(r.bytes, f);
    EXPECT_EQ(r.gso_type, XEN_NETIF_GSO_TYPE_TCPV4);
    EXPECT_EQ(r.gso_size, 1000);
    EXPECT_EQ(r.flags & (NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info),
              NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info);
    return;
  }
  std::vector<uint8_t> payload;
  for (const auto& r : rig.rx_frames) {
    EXPECT_EQ(r.gso_type, XEN_NETIF_GSO_TYPE_NONE);
    const ParsedFrame pf = parse_frame(r.bytes);
    if (frontend_csum) {
      EXPECT_TRUE(r.flags & NETRXF_csum_blank) << "checksum left to the guest";
      EXPECT_EQ(be16(r.bytes.data() + 14 + 20 + 16), partial_field(r.bytes)) << "partial form for the new length";
      auto copy = r.bytes;
      fix_ip_checksum(copy);
      EXPECT_EQ(copy, r.bytes) << "IPv4 header checksum redone";
    } else {
      EXPECT_TRUE(pf.error.empty()) << pf.error;
      EXPECT_FALSE(r.flags & NETRXF_csum_blank);
    }
    // The payload is there either way (parse_frame stops at a bad checksum).
    const size_t hl = 54;
    payload.insert(payload.end(), r.bytes.begin() + hl, r.bytes.end());
  }
  EXPECT_EQ(payload, std::vector<uint8_t>(f.begin() + 54, f.end()));
  EXPECT_EQ(rig.stats_.rx_gso_segmented.get(), 1u);
}

TEST(NetVifQueue, GsoToAGuestThatNegotiatedIt) { gso_to_guest(true, true); }
TEST(NetVifQueue, GsoSegmentedForAGuestWithoutIt) { gso_to_guest(false, true); }
TEST(NetVifQueue, ChecksumsCompletedForAGuestWithoutOffload) { gso_to_guest(false, false); }

// ------------------------------------------------------------ RX GRO

// A TCP/IPv4 frame of flow `port` (source port) with valid checksums,
// computed here independently of the adapter.
std::vector<uint8_t> tcp_segment(uint16_t sport, uint32_t seq, size_t payload, uint16_t ip_id,
                                 uint8_t flags = kTcpAck) {
  FrameSpec s;
  s.payload = payload;
  s.seq = seq;
  s.tcp_flags = flags;
  s.ip_id = ip_id;
  s.payload_seed = static_cast<uint8_t>(seq * 7 + sport);
  auto f = make_frame(s);
  put16(f.data() + kEthLen + kIp4Len, sport);
  fix_tcp4_checksums(f);
  EXPECT_TRUE(parse_frame(f).error.empty());
  return f;
}

uint16_t frame_sport(const std::vector<uint8_t>& f) { return be16(f.data() + kEthLen + kIp4Len); }
std::vector<uint8_t> frame_payload(const std::vector<uint8_t>& f) {
  return {f.begin() + kEthLen + kIp4Len + kTcpLen, f.end()};
}

// What one merged packet must be: the first frame's headers (IPv4 total
// length for the whole, header checksum valid; TCP flags of the first
// frame plus the last one's PSH; the checksum field in CHECKSUM_PARTIAL
// form), then every payload in order.
void expect_merged(const SimNetfront::RxFrame& r, const std::vector<std::vector<uint8_t>>& parts) {
  ASSERT_FALSE(parts.empty());
  std::vector<uint8_t> want = parts[0];
  for (size_t i = 1; i < parts.size(); ++i) {
    const auto pl = frame_payload(parts[i]);
    want.insert(want.end(), pl.begin(), pl.end());
  }
  uint8_t* ip = want.data() + kEthLen;
  put16(ip + 2, static_cast<uint16_t>(want.size() - kEthLen));
  fix_ip_checksum(want);
  uint8_t* tcp = ip + kIp4Len;
  tcp[13] = static_cast<uint8_t>(tcp[13] | (parts.back()[kEthLen + kIp4Len + 13] & kTcpPsh));
  put16(tcp + 16, partial_field(want));
  EXPECT_EQ(r.bytes.size(), want.size());
  EXPECT_TRUE(r.bytes == want) << "merged packet differs from the frames' concatenation";
  EXPECT_EQ(r.gso_type, XEN_NETIF_GSO_TYPE_TCPV4);
  EXPECT_EQ(r.gso_size, parts[0].size() - kEthLen - kIp4Len - kTcpLen);
  EXPECT_EQ(r.flags & (NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info),
            NETRXF_csum_blank | NETRXF_data_validated | NETRXF_extra_info);
}

std::vector<std::vector<uint8_t>> one_flow(size_t n, size_t mss = 1448) {
  std::vector<std::vector<uint8_t>> fs;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t flags = i + 1 == n ? (kTcpAck | kTcpPsh) : kTcpAck;
    fs.push_back(tcp_segment(40000, static_cast<uint32_t>(1000 + i * mss), mss, static_cast<uint16_t>(7 + i), flags));
  }
  return fs;
}

TEST(NetVifQueue, GroMergesAFlowsSegmentsIntoOneGsoPacket) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.rx_gso_tcpv4 = true;
  VifRig rig(o);
  // 30 MSS-sized segments (43 KiB): one 11-slot packet plus its GSO extra.
  const auto fs = one_flow(30);
  rig.wire_send_burst(fs);
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  rig.start_queue();
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(1); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  rig.received(0);
  ASSERT_EQ(rig.rx_frames.size(), 1u);
  expect_merged(rig.rx_frames[0], fs);
  EXPECT_EQ(rig.stats_.rx_gro_packets.get(), 1u);
  EXPECT_EQ(rig.stats_.rx_gro_merged.get(), 30u);
  EXPECT_EQ(rig.stats_.rx_packets.get(), 1u);
  EXPECT_EQ(rig.stats_.rx_ring.responses.get(), 12u) << "11 full data slots and the GSO extra";
}

void gro_not_for(bool frontend_gso, bool gro) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.rx_gso_tcpv4 = frontend_gso;
  o.rx_gro = gro;
  VifRig rig(o);
  const auto fs = one_flow(12);
  rig.wire_send_burst(fs);
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  rig.start_queue();
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(fs.size()); })) << rig.rx_frames.size();
  ASSERT_EQ(rig.rx_frames.size(), fs.size());
  for (size_t i = 0; i < fs.size(); ++i) {
    EXPECT_TRUE(rig.rx_frames[i].bytes == fs[i]) << i;
    EXPECT_EQ(rig.rx_frames[i].gso_type, XEN_NETIF_GSO_TYPE_NONE);
  }
  EXPECT_EQ(rig.stats_.rx_gro_packets.get(), 0u);
}

TEST(NetVifQueue, GroNotForAFrontendWithoutGso) { gro_not_for(false, true); }
TEST(NetVifQueue, GroOffKeepsFramesApart) { gro_not_for(true, false); }

// Two interleaved flows merge apart; a frame with a bad checksum is never
// merged and ends its flow's packet; an out-of-order flow is not merged;
// every flow keeps its order.
TEST(NetVifQueue, GroKeepsFlowsApartAndInOrder) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.rx_gso_tcpv4 = true;
  VifRig rig(o);
  const size_t mss = 1000;
  auto A = [&](uint32_t i) { return tcp_segment(1, 5000 + i * mss, mss, static_cast<uint16_t>(100 + i)); };
  auto B = [&](uint32_t i) { return tcp_segment(2, 9000 + i * mss, mss, static_cast<uint16_t>(200 + i)); };
  auto C = [&](uint32_t i) { return tcp_segment(3, 1000 + i * mss, mss, static_cast<uint16_t>(300 + i)); };
  auto bad = A(3);
  bad[bad.size() - 1] ^= 0x5a;  // payload changed after the checksum: bad
  const std::vector<std::vector<uint8_t>> in = {A(0), B(0), A(1), C(0), B(1), A(2), C(2), bad, B(2), C(1), A(4)};
  rig.wire_send_burst(in);
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  rig.start_queue();
  // A: [0..2] merged, bad, 4; B: [0..2] merged; C: 0, 2, 1 apart.
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(7); })) << rig.rx_frames.size();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  rig.received(0);
  ASSERT_EQ(rig.rx_frames.size(), 7u);
  std::map<uint16_t, std::vector<const SimNetfront::RxFrame*>> by_flow;
  for (const auto& r : rig.rx_frames) by_flow[frame_sport(r.bytes)].push_back(&r);
  ASSERT_EQ(by_flow[1].size(), 3u);
  expect_merged(*by_flow[1][0], {A(0), A(1), A(2)});
  EXPECT_TRUE(by_flow[1][1]->bytes == bad);
  EXPECT_EQ(by_flow[1][1]->gso_type, XEN_NETIF_GSO_TYPE_NONE);
  EXPECT_EQ(by_flow[1][1]->flags & NETRXF_data_validated, 0) << "a bad checksum is not vouched for";
  EXPECT_TRUE(by_flow[1][2]->bytes == A(4));
  EXPECT_EQ(by_flow[1][2]->flags & NETRXF_data_validated, NETRXF_data_validated) << "checked good on the way";
  ASSERT_EQ(by_flow[2].size(), 1u);
  expect_merged(*by_flow[2][0], {B(0), B(1), B(2)});
  ASSERT_EQ(by_flow[3].size(), 3u);
  EXPECT_TRUE(by_flow[3][0]->bytes == C(0));
  EXPECT_TRUE(by_flow[3][1]->bytes == C(2));
  EXPECT_TRUE(by_flow[3][2]->bytes == C(1));
  for (const auto* r : by_flow[3]) EXPECT_EQ(r->gso_type, XEN_NETIF_GSO_TYPE_NONE);
  EXPECT_EQ(rig.stats_.rx_gro_packets.get(), 2u);
  EXPECT_EQ(rig.stats_.rx_gro_merged.get(), 6u);
}

// A burst longer than 64 KiB: packets of at most 64 KiB, in sequence.
TEST(NetVifQueue, GroBoundsAMergedPacketTo64KiB) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.rx_gso_tcpv4 = true;
  VifRig rig(o);
  const auto fs = one_flow(60);  // 86880 payload bytes
  rig.wire_send_burst(fs);
  ASSERT_EQ(rig.front_->post_rx(128), 128u);
  rig.start_queue();
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(2); })) << rig.rx_frames.size();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  rig.received(0);
  ASSERT_EQ(rig.rx_frames.size(), 2u);
  // 14 + 40 + 45 * 1448 = 65214 <= 65536 < 66662 with a 46th.
  expect_merged(rig.rx_frames[0], {fs.begin(), fs.begin() + 45});
  expect_merged(rig.rx_frames[1], {fs.begin() + 45, fs.end()});
  for (const auto& r : rig.rx_frames) EXPECT_LE(r.bytes.size(), 65536u);
}

TEST(NetVifQueue, BadPacketsAreAnsweredWithErrorsAndTrafficGoesOn) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  rig.start_queue();
  // A runt, then a multicast subscription, then a good frame.
  const std::vector<uint8_t> ten(10, 0x55);
  auto runt_id = rig.front_->send_raw_slot(ten, 0, 0, 10);
  ASSERT_TRUE(runt_id);
  const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
  ASSERT_TRUE(rig.front_->send_multicast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, group));
  SimNetfront::TxFrame good;
  FrameSpec s;
  s.payload = 100;
  good.bytes = make_frame(s);
  ASSERT_TRUE(rig.front_->send(good));
  auto got = rig.wire_receive(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(bytes_of(got[0]), good.bytes);
  pkt::free_bulk(got);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(3); }));
  for (const auto& r : rig.tx_answers) {
    EXPECT_EQ(r.status, r.id == *runt_id ? NETIF_RSP_ERROR : NETIF_RSP_OKAY) << r.id;
  }
  EXPECT_EQ(rig.stats_.tx_dropped.get(), 1u);
  EXPECT_EQ(rig.stats_.tx_multicast.get(), 1u);
  EXPECT_EQ(rig.halts_.load(), 0);
  // The subscription filters what reaches the guest.
  ASSERT_EQ(rig.front_->post_rx(8), 8u);
  rig.wire_send(multicast_frame(0x99));  // not subscribed: filtered
  rig.wire_send(multicast_frame(0x03));
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(1); }));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  rig.received(0);
  ASSERT_EQ(rig.rx_frames.size(), 1u);
  EXPECT_EQ(rig.rx_frames[0].bytes[5], 0x03);
}

TEST(NetVifQueue, AMaliciousFrontendHaltsTheQueue) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  VifRig rig;
  rig.start_queue();
  const std::vector<uint8_t> bytes(200, 1);
  // Offset 3990 + 200 bytes crosses the page: fatal in Linux netback.
  ASSERT_TRUE(rig.front_->send_raw_slot(bytes, 3800, 3990, 200));
  ASSERT_TRUE(rig.front_->wait([&] { return rig.halts_.load() == 1; }));
  EXPECT_EQ(rig.stats_.tx_ring.halted.get(), 1u);
  // Nothing more is consumed or answered.
  SimNetfront::TxFrame good;
  FrameSpec s;
  s.payload = 100;
  good.bytes = make_frame(s);
  ASSERT_TRUE(rig.front_->send(good));
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(rig.answered(1));
  EXPECT_TRUE(rig.wire_receive(1, std::chrono::milliseconds(5)).empty());
}

TEST(NetVifQueue, SplitEventChannelsWork) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  RigOptions o;
  o.split = true;
  VifRig rig(o);
  rig.start_queue();
  ASSERT_NE(rig.front_->tx_port(), rig.front_->rx_port());
  ASSERT_EQ(rig.front_->post_rx(4), 4u);
  FrameSpec s;
  s.payload = 300;
  const auto f = make_frame(s);
  rig.wire_send(f);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.received(1); }));
  EXPECT_EQ(rig.rx_frames[0].bytes, f);
  SimNetfront::TxFrame t;
  t.bytes = f;
  ASSERT_TRUE(rig.front_->send(t));
  auto got = rig.wire_receive(1);
  ASSERT_EQ(got.size(), 1u);
  pkt::free_bulk(got);
  ASSERT_TRUE(rig.front_->wait([&] { return rig.answered(1); }));
}

// Interrupt mode: over net_tap the queue sleeps on the tap queue's fd
// instead of polling the port. The poll period is made huge (2 s), so a
// frame the kernel sends reaches the guest quickly only if the fd woke the
// reactor.
TEST(NetVifQueue, TapReceiveWakesTheQueueWithoutPolling) {
  if (test_dpdk() == nullptr) GTEST_SKIP();
  const int tun = ::open("/dev/net/tun", O_RDWR);
  if (tun < 0) GTEST_SKIP() << "/dev/net/tun unavailable";
  ::close(tun);
  const int sock = ::socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
  if (sock < 0) GTEST_SKIP() << "no AF_PACKET socket (needs CAP_NET_RAW)";
  RigOptions o;
  o.port_poll = std::chrono::seconds(2);
  VifRig rig(o);
  static int seq = 0;
  const std::string ifname = "xpv" + std::to_string(getpid() % 100000) + "_" + std::to_string(seq);
  DpdkPortConfig cfg;
  cfg.devargs = "net_tap_xpv" + std::to_string(getpid()) + "_" + std::to_string(seq++) + ",iface=" + ifname;
  auto tap = test_dpdk()->open_port(*rig.pool_, cfg);
  if (!tap) {
    ::close(sock);
    GTEST_SKIP() << "net_tap unavailable: " << error_string(tap.error());
  }
  ASSERT_GE((*tap)->rx_wait_fd(0), 0);
  rig.vif_port_ = std::move(*tap);
  ASSERT_EQ(test::bind_packet_socket(sock, ifname), 0) << "errno";
  ASSERT_EQ(rig.front_->post_rx(64), 64u);
  rig.start_queue();
  // Let the queue go to sleep (nothing to do), then the kernel transmits.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  FrameSpec s;
  s.udp = true;
  s.payload = 321;
  s.payload_seed = 5;
  const auto f = make_frame(s);
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(::send(sock, f.data(), f.size(), 0), static_cast<ssize_t>(f.size()));
  ::close(sock);
  // The kernel may send its own frames too (IPv6 neighbour discovery):
  // look for ours.
  bool seen = false;
  ASSERT_TRUE(rig.front_->wait(
      [&] {
        rig.received(0);
        for (const auto& r : rig.rx_frames) seen |= r.bytes == f;
        return seen;
      },
      std::chrono::milliseconds(1500)))
      << "not delivered before the 2 s poll: the fd did not wake the queue";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1000));
}

}  // namespace
}  // namespace xenpath
