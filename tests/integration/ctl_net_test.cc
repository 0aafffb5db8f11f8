// `xenpath-ctl set vif/D/N rate=...` on the netback daemon (the NetVifDevice
// rig with a control socket): the rate goes through the backend's "rate"
// key as a toolstack's would, so a frame waiting for credit goes at once
// when the rate is raised, show reports the rate, and a malformed value is
// refused without touching the key.
#include <gtest/gtest.h>

#include <sstream>

#include "tests/fixtures/ctl_run.h"
#include "tests/fixtures/vhd_files.h"  // TempDir
#include "tests/integration/net_device_rig.h"
#include "tools/ctl/ctl.h"

namespace xenpath::vif_rig {
namespace {

class NetCtl : public NetVifDevice {
 protected:
  void SetUp() override { ctl_socket_ = dir_ / "netback.sock"; }
  std::pair<int, std::string> ctl(std::vector<std::string> args) { return test::run_ctl(ctl_socket_, std::move(args)); }
  test::TempDir dir_;
};

TEST_F(NetCtl, SetRateAppliesThroughTheRateKey) {
  start();
  ASSERT_TRUE(connect_waiting_for_credit(13));  // the second frame waits 100 s for credit

  auto [show_rc, shown] = ctl({"show", "vif/7/13"});
  ASSERT_EQ(show_rc, 0) << shown;
  EXPECT_NE(shown.find("1000 bytes / 100000000 us"), std::string::npos) << shown;
  EXPECT_NE(shown.find("settings"), std::string::npos) << shown;

  // Malformed values are refused and change nothing.
  for (const char* bad : {"rate=fast", "rate=10,0", "rate=", "speed=1,1"}) {
    auto [rc, text] = ctl({"set", "7/13", bad});
    EXPECT_EQ(rc, ctl::kExitRpcError) << bad << ": " << text;
  }
  EXPECT_EQ(key(13, "rate"), "1000,100000000");

  // Raised: the waiting frame goes now, not at the end of the window.
  auto [rc, text] = ctl({"set", "vif/7/13", "rate=10000000,1000"});
  ASSERT_EQ(rc, 0) << text;
  EXPECT_NE(text.find("rate 10000000 bytes / 1000 us"), std::string::npos) << text;
  EXPECT_EQ(key(13, "rate"), "10000000,1000");
  auto got = wire_receive(wire(13, 0), 1, 3000ms);
  EXPECT_EQ(got.size(), 1u);
  pkt::free_bulk(got);
  EXPECT_TRUE(eventually([&] { return device(13)->rate() == (RateSpec{10000000, 1000}); }));

  // unlimited removes the key, as a toolstack without a rate.
  ASSERT_EQ(ctl({"set", "vif/7/13", "rate=unlimited"}).first, 0);
  EXPECT_TRUE(eventually([&] { return device(13)->rate().unlimited(); }));
  EXPECT_EQ(key(13, "rate"), "<No such file or directory>");  // the key is gone

  // list and stats see the VIF with its port and per-queue counters.
  auto [lrc, list] = ctl({"list"});
  EXPECT_EQ(lrc, 0);
  EXPECT_NE(list.find("vif/7/13"), std::string::npos) << list;
  EXPECT_NE(list.find("vif7.13"), std::string::npos) << list;
  auto [src, stats] = ctl({"stats"});
  EXPECT_EQ(src, 0);
  EXPECT_NE(stats.find("tx_packets"), std::string::npos) << stats;
}

}  // namespace
}  // namespace xenpath::vif_rig
