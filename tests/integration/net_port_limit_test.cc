// The VIF that finds DPDK's ethdev table full. netback opens one DPDK port
// per VIF and the table has RTE_MAX_ETHPORTS slots (32 in Debian's DPDK),
// so the VIF past the limit cannot get a port: it must fail the way a Linux
// backend's xenbus_dev_fatal() fails a device (an error node, Closing, then
// Closed once the frontend closes), leave nothing behind, and leave the VIFs
// already connected alone; once a slot frees, the same VIF connects.
// The ports here are the production factory's: net_null devices from a
// devargs template (no-rx: they never make frames up).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/integration/net_device_rig.h"

namespace xenpath::vif_rig {
namespace {

TEST_F(NetVifDevice, VifPastTheEthdevTableFailsCleanlyAndOthersCarryOn) {
  port_template_ = "net_null_cap{domid}_{devid},no-rx=1";
  guest_pages_ = 40 * 1024;  // one guest with a netfront per slot and one more
  ASSERT_NO_FATAL_FAILURE(start());
  DpdkEnv& env = *test_dpdk();
  const unsigned capacity = DpdkEnv::port_capacity();
  const unsigned base = env.ports_in_use();
  ASSERT_LT(base, capacity) << "earlier tests left every ethdev slot taken";
  const unsigned room = capacity - base;

  std::vector<GuestVif*> vifs;
  for (uint32_t devid = 0; devid < room; ++devid) {
    GuestVif* v = nullptr;
    ASSERT_NE(connect_one_queue(devid, v), nullptr) << "vif " << devid;
    vifs.push_back(v);
  }
  EXPECT_EQ(env.ports_in_use(), capacity);
  const uint64_t mapped = host_->counters().mapped_pages_live.load();
  BackendDriver& driver = daemon().driver();
  const uint64_t failures = driver.stats().connect_failures.get();

  // One more: the backend refuses it with the reason next to its state.
  const uint32_t over_id = room;
  GuestVif& over = plug(over_id);
  ASSERT_TRUE(over.xb->publish(rings(over, 1, false)));
  const Status c = over.xb->await_connected();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error(), EPIPE);
  EXPECT_EQ(key(over_id, "error"),
            std::to_string(ENOSPC) + " connecting to the frontend failed: " + error_string(ENOSPC));
  EXPECT_EQ(driver.stats().connect_failures.get(), failures + 1);
  // The guest closes its half: the backend goes to Closed, as after
  // xenbus_dev_fatal(); the failed VIF holds no port and no guest page.
  ASSERT_TRUE(over.xb->close());
  EXPECT_TRUE(backend_becomes(over_id, XenbusState::kClosed));
  EXPECT_EQ(env.ports_in_use(), capacity);
  EXPECT_EQ(host_->counters().mapped_pages_live.load(), mapped);

  // The others did not notice: still Connected, and their frames still go
  // out through their ports.
  for (uint32_t devid = 0; devid < room; ++devid) {
    EXPECT_EQ(key(devid, "state"), "4") << "vif " << devid;
    ASSERT_TRUE(vifs[devid]->queues[0]->send(tx_frame_of(600)));
  }
  for (uint32_t devid = 0; devid < room; ++devid) {
    EXPECT_TRUE(eventually([&] { return vifs[devid]->answered(1); })) << "vif " << devid;
    EXPECT_EQ(vifs[devid]->tx_answers.at(0).status, NETIF_RSP_OKAY) << "vif " << devid;
  }

  // A slot frees when a VIF goes; the refused one, tried again, connects.
  ASSERT_TRUE(vifs[0]->xb->close());
  EXPECT_TRUE(eventually([&] { return env.ports_in_use() == capacity - 1; }));
  over.queues.clear();
  ASSERT_TRUE(over.xb->restart());
  ASSERT_TRUE(over.xb->connect(rings(over, 1, false)));
  EXPECT_EQ(key(over_id, "state"), "4");
  EXPECT_EQ(env.ports_in_use(), capacity);
}

}  // namespace
}  // namespace xenpath::vif_rig
