// The vif device's control plane end to end on the simulated host (the
// NetVifDevice rig of net_device_rig.h): split channels and several queues,
// the control ring (hash key, mapping, multicast list) and the hash extras.
#include <gtest/gtest.h>

#include "tests/integration/net_device_rig.h"

namespace xenpath::vif_rig {
namespace {

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
  const uint8_t group[6] = {0x01, 0x00, 0x5e, 0x01, 0x02, 0x03};
  ASSERT_TRUE(v.queues[0]->send_multicast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, group));
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(3); }));
  EXPECT_EQ(v.tx_answers.back().status, NETIF_RSP_OKAY);
  EXPECT_EQ(d->queue_stats(0).tx_multicast.get(), 1u);
  ASSERT_EQ(v.queues[1]->post_rx(8), 8u);
  // The replay to queue 1 is posted to its reactor: give it a moment by
  // sending the unsubscribed group first (dropped either way).
  wire_send(wire(1, 1), multicast_frame(0x99));
  ASSERT_TRUE(eventually([&] { return d->queue_stats(1).rx_dropped.get() == 1; }));
  wire_send(wire(1, 1), multicast_frame(0x03));
  ASSERT_TRUE(v.queues[1]->wait([&] { return v.received(1); }));
  std::this_thread::sleep_for(5ms);
  v.received(0);
  ASSERT_EQ(v.rx_frames.size(), 1u);
  EXPECT_EQ(v.rx_frames[0].bytes[5], 0x03);
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 1));
}

TEST_F(NetVifDevice, ControlRingHashMessagesAndHashExtras) {
  GuestCtrlRing ctrl;
  GuestVif* vp = nullptr;
  const VifDevice* d = nullptr;
  ASSERT_NO_FATAL_FAILURE(start_with_ctrl(2, 1, 1, ctrl, vp, d));
  GuestVif& v = *vp;
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
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 2));
}

TEST_F(NetVifDevice, HashMappingSteersFlowsToTheGuestsQueue) {
  GuestCtrlRing ctrl;
  GuestVif* vp = nullptr;
  const VifDevice* d = nullptr;
  ASSERT_NO_FATAL_FAILURE(start_with_ctrl(11, 2, 2, ctrl, vp, d));
  GuestVif& v = *vp;
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
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 11));
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
  ASSERT_TRUE(v.queues[0]->send_multicast(XEN_NETIF_EXTRA_TYPE_MCAST_ADD, group));
  ASSERT_TRUE(v.queues[0]->wait([&] { return v.answered(1); }));
  EXPECT_EQ(v.tx_answers.back().status, NETIF_RSP_OKAY);
  ASSERT_EQ(v.queues[1]->post_rx(64), 64u);

  const VifQueueStats& st = d->queue_stats(1);
  auto delivered = [&](uint8_t last) {
    wire_send(wire(14, 1), multicast_frame(last));
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
    wire_send(wire(14, 1), multicast_frame(0x99));
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
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 14));
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
  ASSERT_NO_FATAL_FAILURE(close_vif(v, 15));
}

}  // namespace
}  // namespace xenpath::vif_rig
