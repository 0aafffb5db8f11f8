// The vif device type end to end on the simulated host, production path:
// the BackendDriver on a control Reactor over the simulated xenstored, VIF
// queues on two worker reactors (the NetbackService on a BackendDaemon, as
// xenpath-netback runs it), a toolstack writing the keys libxl writes,
// a guest doing netfront's handshake (per queue tx-ring-ref / rx-ring-ref /
// event-channel(-tx/-rx), request-rx-copy, features, ctrl-ring-ref) and
// traffic, and a wire made of net_ring pairs (one per queue) this thread
// drives.
#include <gtest/gtest.h>

#include "tests/integration/net_device_rig.h"

namespace xenpath::vif_rig {
namespace {

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
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 0));
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
  EXPECT_FALSE(device(0)->connected());
  v.queues.clear();  // revokes every grant
}

TEST_F(NetVifDevice, RateKeyLimitsGuestTransmit) {
  start();
  // 3000 bytes of credit per 10 s: three 1000-byte frames pass, the
  // fourth waits for the next window.
  GuestVif* v = nullptr;
  const VifDevice* d = connect_one_queue(3, v, {{"rate", "3000,10000000"}});
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->rate(), (RateSpec{3000, 10000000}));
  const SimNetfront::TxFrame f = tx_frame_of(1000);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(v->queues[0]->send(f));
  auto got = wire_receive(wire(3, 0), 4, 300ms);
  EXPECT_EQ(got.size(), 3u);
  pkt::free_bulk(got);
  EXPECT_GE(d->queue_stats(0).tx_rate_limited.get(), 1u);
  ASSERT_TRUE(v->xb->close());
  EXPECT_TRUE(backend_becomes(3, XenbusState::kClosed));
}

TEST_F(NetVifDevice, RateKeyChangeAppliesWhileConnected) {
  start();
  // 1000 bytes per 100 s: one frame passes, the second waits ...
  ASSERT_TRUE(connect_waiting_for_credit(13));
  // ... until the toolstack raises the rate: the waiting frame goes now,
  // not at the end of the 100 s window.
  ASSERT_TRUE(tools_xs_->write(kXsNoTxn, be(13) + "/rate", "10000000,1000"));
  auto got = wire_receive(wire(13, 0), 1, 3000ms);
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
  tcp[12] = 0xf0;           // data offset 15
  put16(tcp + 16, 0xbeef);  // csum_blank: whatever the guest left
  return f;
}

TEST_F(NetVifDevice, HeadersLongerThanTheCopiedHeadGetChecksumAndGso) {
  LongHeaderCase lc;
  lc.devid = 8;
  lc.hdr = 134;
  // Checksum offload: one slot, so only 128 bytes are copied and the rest
  // of the headers sit in the mapped page.
  lc.csum.bytes = long_header_frame(700);
  ASSERT_EQ(lc.csum.bytes.size(), 134u + 700u);
  lc.csum.csum_blank = true;
  // GSO over the same headers, the first slot ending inside them.
  lc.gso.bytes = long_header_frame(6000);
  lc.gso.csum_blank = true;
  lc.gso.gso_type = XEN_NETIF_GSO_TYPE_TCPV4;
  lc.gso.gso_size = 1000;
  lc.gso.slots = {100, static_cast<uint16_t>(lc.gso.bytes.size() - 100 - 3000), 3000};
  lc.segments = 6;
  // parse_frame checks both checksums; its payload is what follows the headers.
  lc.frame_ok = [](const std::vector<uint8_t>& b) -> ::testing::AssertionResult {
    const ParsedFrame pf = parse_frame(b);
    if (!pf.error.empty()) return ::testing::AssertionFailure() << pf.error;
    if (pf.payload.size() + 134 != b.size()) return ::testing::AssertionFailure() << "payload " << pf.payload.size();
    return ::testing::AssertionSuccess();
  };
  offload_long_headers(lc);
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
  hbh[0] = 6;  // next header: TCP
  hbh[1] = 7;  // (7 + 1) * 8 = 64 bytes
  hbh[2] = 1;  // PadN option filling the rest
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
  LongHeaderCase lc;
  lc.devid = 12;
  lc.hdr = 178;
  lc.csum.bytes = ipv6_ext_frame(500, 3);
  ASSERT_EQ(lc.csum.bytes.size(), 178u + 500u);
  lc.csum.csum_blank = true;
  lc.gso.bytes = ipv6_ext_frame(4000, 9);
  lc.gso.csum_blank = true;
  lc.gso.gso_type = XEN_NETIF_GSO_TYPE_TCPV6;
  lc.gso.gso_size = 1000;
  lc.segments = 4;
  lc.frame_ok = [](const std::vector<uint8_t>& b) -> ::testing::AssertionResult {
    if (ipv6_ext_tcp_checksum_ok(b)) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "bad TCP checksum";
  };
  offload_long_headers(lc);
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
  const std::vector<uint8_t> bytes(200, 1);
  // Offset 3990 + 200 bytes crosses the page: fatal in Linux netback.
  ASSERT_TRUE(v.queues[0]->send_raw_slot(bytes, 3800, 3990, 200));
  EXPECT_TRUE(backend_becomes(9, XenbusState::kClosing));
  EXPECT_NE(key(9, "error")[0], '<');
  EXPECT_TRUE(eventually([&] { return !device(9)->connected(); }));
}

// Issue 16: what an idle or halted VIF costs its worker. The test's port
// (net_ring) has no receive wake-up, so its queue must poll it every
// port_poll (250 ms here: 4 in a second); with a wake-up (net_tap) nothing
// at all.
class NetVifIdle : public NetVifDevice {
 protected:
  const VifDevice* connect_quiet(uint32_t devid, GuestVif*& v) {
    VifOptions vo;
    vo.port_poll = 250ms;
    start(vo);
    return connect_one_queue(devid, v);
  }
};

// A connected VIF whose guest went quiet costs its worker only the timers
// that are due.
TEST_F(NetVifIdle, IdleVifLetsItsWorkerSleep) {
  GuestVif* v = nullptr;
  const VifDevice* d = connect_quiet(0, v);
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(v->queues[0]->send(tx_frame_of(300)));
  auto got = wire_receive(wire(0, 0), 1);
  ASSERT_EQ(got.size(), 1u);
  pkt::free_bulk(got);
  ASSERT_TRUE(v->queues[0]->wait([&] { return v->answered(1); }));
  ASSERT_EQ(v->queues[0]->post_rx(16), 16u);
  FrameSpec s;
  s.payload = 100;
  wire_send(wire(0, 0), make_frame(s));
  ASSERT_TRUE(v->queues[0]->wait([&] { return v->received(1); }));
  EXPECT_LE(test::idle_worker_iterations(daemon(), 1000ms), test::kIdleIterationsPerSecond);
  EXPECT_TRUE(d->connected());
}

// The same once a guest overran its TX ring: the queue is halted (the
// device closes), and the worker sleeps (issue 16 measured 18 % of a dom0
// CPU).
TEST_F(NetVifIdle, HaltedVifLetsItsWorkerSleep) {
  GuestVif* v = nullptr;
  ASSERT_NE(connect_quiet(3, v), nullptr);
  v->queues[0]->overrun_tx(1000);
  EXPECT_TRUE(backend_becomes(3, XenbusState::kClosing));
  EXPECT_TRUE(eventually([&] { return !device(3)->connected(); }));
  EXPECT_LE(test::idle_worker_iterations(daemon(), 1000ms), test::kIdleIterationsPerSecond);
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
  ASSERT_TRUE(eventually(
      [&] { return d->queue_stats(0).rx_packets.get() == 0 && d->queue_stats(0).tx_mapped_pages.get() > 0; }));
  std::this_thread::sleep_for(10ms);
  EXPECT_FALSE(v.answered(1)) << "the mapped slots are answered only when the page comes back";
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 10));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms) << "disconnect waited for the drain timeout";
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), 0u);
}

// Out of credit, the queue sleeps until a one-shot timer at the exact
// replenish time (Linux's credit_timeout) resumes it.
TEST_F(NetVifDevice, RateLimitedTransmitResumesOnTheCreditTimer) {
  start();
  // 2000 bytes per 20 ms: six 1000-byte frames need three windows.
  GuestVif* v = nullptr;
  const VifDevice* d = connect_one_queue(16, v, {{"rate", "2000,20000"}});
  ASSERT_NE(d, nullptr);
  const VifQueueStats& st = d->queue_stats(0);
  const SimNetfront::TxFrame f = tx_frame_of(1000);
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(v->queues[0]->send(f));
  auto got = wire_receive(wire(16, 0), 6);
  EXPECT_EQ(got.size(), 6u);
  pkt::free_bulk(got);
  ASSERT_TRUE(v->queues[0]->wait([&] { return v->answered(6); }));
  EXPECT_GE(st.tx_rate_limited.get(), 1u);
  // The last arming is never moved or cancelled: it expires.
  ASSERT_TRUE(eventually([&] { return st.tx_credit_timer.get() >= 1; }));
  // One expiry per arming at most, one arming per refusal at most: no
  // wake-ups of its own beyond the refusals.
  EXPECT_LE(st.tx_credit_timer.get(), st.tx_rate_limited.get());
  EXPECT_LE(st.tx_credit_timer.get(), 4u) << "three windows need two replenishes (a late one may merge)";
  ASSERT_TRUE(v->xb->close());
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
}  // namespace xenpath::vif_rig
