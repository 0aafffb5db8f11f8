// dom0's side of a VIF against the real kernel, each test in a fresh network
// namespace: RtnlVifLink puts taps into a Linux bridge, and a VIF whose
// toolstack keys name a bridge ends up in it once its net_tap port opens.
// iproute2 is the oracle: it makes the bridge and reads the result back
// (`ip -d -j link show`). Skipped without CAP_NET_ADMIN/CAP_SYS_ADMIN, tun
// or iproute2.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "netback/link_netlink.h"
#include "tests/fixtures/netns.h"
#include "tests/integration/net_device_rig.h"

namespace xenpath {
namespace {

using test::in_netns;
using test::new_netns;
using vif_rig::GuestVif;

// Why this machine cannot run the test, or empty.
std::string missing_prerequisite(int ns) {
  if (ns < 0) return "no network namespaces here (needs CAP_SYS_ADMIN)";
  struct stat st {};
  if (::stat("/dev/net/tun", &st) != 0) return "no /dev/net/tun";
  if (std::system("ip -V >/dev/null 2>&1") != 0) return "no iproute2";
  return {};
}

// A shell command run inside `ns`: its exit status.
int sh(int ns, const std::string& cmd) {
  int rc = -1;
  if (!in_netns(ns, [&] { rc = std::system((cmd + " >/dev/null 2>&1").c_str()); })) return -1;
  return rc;
}

// iproute2's view of one link in `ns` (null when there is no such link).
nlohmann::json ip_link(int ns, const std::string& ifname) {
  std::string out;
  in_netns(ns, [&] {
    FILE* p = ::popen(("ip -d -j link show dev " + ifname + " 2>/dev/null").c_str(), "r");
    if (p == nullptr) return;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
    ::pclose(p);
  });
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (!j.is_array() || j.empty()) return nullptr;
  return j[0];
}

bool flag_up(const nlohmann::json& l) {
  for (const auto& f : l.value("flags", nlohmann::json::array())) {
    if (f == "UP") return true;
  }
  return false;
}

class VifLinkNetns : public ::testing::Test {
 protected:
  void SetUp() override {
    ns_ = new_netns();
    if (const std::string why = missing_prerequisite(ns_); !why.empty()) GTEST_SKIP() << why;
    // The link's socket lives in the namespace it was opened in.
    Result<std::unique_ptr<RtnlChannel>> ch = unexpected(EIO);
    ASSERT_TRUE(in_netns(ns_, [&] { ch = open_rtnl_channel(); }));
    ASSERT_TRUE(ch) << error_string(ch.error());
    link_ = std::make_unique<RtnlVifLink>(std::move(*ch));
    ASSERT_EQ(sh(ns_, "ip link add xbr0 mtu 1400 type bridge && ip link set xbr0 up"), 0);
  }
  void TearDown() override {
    if (ns_ >= 0) ::close(ns_);  // the namespace and everything in it go
  }
  static VifLinkRequest req(const std::string& ifname, const std::string& bridge, uint32_t mtu = 0) {
    VifLinkRequest r;
    r.ifname = ifname;
    r.keys.bridge = bridge;
    r.keys.mtu = mtu;
    r.domid = 7;
    return r;
  }
  int ns_ = -1;
  std::unique_ptr<RtnlVifLink> link_;
};

TEST_F(VifLinkNetns, TapJoinsTheBridgeUpWithItsMtu) {
  ASSERT_EQ(sh(ns_, "ip tuntap add dev vif7.0 mode tap"), 0);
  ASSERT_TRUE(link_->attach(req("vif7.0", "xbr0")));
  EXPECT_EQ(link_->stats().requests, 2u);
  auto l = ip_link(ns_, "vif7.0");
  ASSERT_FALSE(l.is_null());
  EXPECT_EQ(l.value("master", ""), "xbr0");
  EXPECT_TRUE(flag_up(l)) << l.dump();
  EXPECT_EQ(l.value("mtu", 0), 1400);
  EXPECT_EQ(l["linkinfo"].value("info_slave_kind", ""), "bridge");
  // Again (a reconnect that kept the interface): the same state, no error.
  ASSERT_TRUE(link_->attach(req("vif7.0", "xbr0")));
  l = ip_link(ns_, "vif7.0");
  EXPECT_EQ(l.value("master", ""), "xbr0");
  EXPECT_EQ(link_->stats().attached, 2u);
  EXPECT_EQ(link_->stats().requests, 4u);
  // The toolstack's mtu key wins over the bridge's.
  ASSERT_EQ(sh(ns_, "ip tuntap add dev vif7.1 mode tap"), 0);
  ASSERT_TRUE(link_->attach(req("vif7.1", "xbr0", 1300)));
  l = ip_link(ns_, "vif7.1");
  EXPECT_EQ(l.value("master", ""), "xbr0");
  EXPECT_EQ(l.value("mtu", 0), 1300);
}

TEST_F(VifLinkNetns, NoBridgeOrNotABridgeMeansUpAlone) {
  // A tap stands for "not a Linux bridge" (an Open vSwitch bridge's
  // interface would be kind openvswitch).
  ASSERT_EQ(sh(ns_, "ip tuntap add dev vif7.0 mode tap && ip tuntap add dev nb0 mode tap"), 0);
  for (const char* br : {"nobr", "nb0", ""}) {
    ASSERT_TRUE(link_->attach(req("vif7.0", br))) << br;
    auto l = ip_link(ns_, "vif7.0");
    EXPECT_FALSE(l.contains("master")) << br << ": " << l.dump();
    EXPECT_TRUE(flag_up(l)) << br;
    EXPECT_EQ(l.value("mtu", 0), 1500) << br;
  }
  EXPECT_EQ(link_->stats().unattached, 3u);
  // The interface is gone: an error, counted.
  EXPECT_EQ(link_->attach(req("vif9.0", "xbr0")).error(), ENODEV);
  EXPECT_EQ(link_->stats().failures, 1u);
}

// ---- end to end on the simulated host ----

class VifBridgeSim : public vif_rig::NetVifDevice {
 protected:
  void SetUp() override {
    ns_ = new_netns();
    if (const std::string why = missing_prerequisite(ns_); !why.empty()) GTEST_SKIP() << why;
    ASSERT_EQ(sh(ns_, "ip link add xbr0 mtu 1400 type bridge && ip link set xbr0 up"), 0);
    Result<std::unique_ptr<RtnlChannel>> ch = unexpected(EIO);
    ASSERT_TRUE(in_netns(ns_, [&] { ch = open_rtnl_channel(); }));
    ASSERT_TRUE(ch) << error_string(ch.error());
    link_ = std::make_unique<RtnlVifLink>(std::move(*ch));
    // Each VIF's port: a net_tap vif<domid>.<devid>, made in the namespace.
    ports_ = [this](const DeviceAddress& a, uint16_t queues) -> Result<std::unique_ptr<PacketPort>> {
      DpdkPortConfig c;
      c.devargs = "net_tap_xpvl" + std::to_string(getpid() % 100000) + "_" + std::to_string(opened_++) + ",iface=vif" +
                  std::to_string(a.frontend_id) + "." + std::to_string(a.devid);
      c.rx_queues = c.tx_queues = queues;
      Result<std::unique_ptr<PacketPort>> p = unexpected(EIO);
      if (!in_netns(ns_, [&] { p = test::test_dpdk()->open_port(service().pool(), c); })) return unexpected(EIO);
      return p;
    };
  }
  void TearDown() override {
    if (ns_ < 0) return;
    NetVifDevice::TearDown();
    ::close(ns_);
  }
  int ns_ = -1;
  int opened_ = 0;
  std::unique_ptr<RtnlVifLink> link_;
};

TEST_F(VifBridgeSim, ToolstackBridgeKeyPlugsThePort) {
  VifOptions vo;
  vo.link = link_.get();
  start(vo);
  // libxl's keys: bridge always, mtu only when not 1500.
  GuestVif* v = nullptr;
  const VifDevice* d = connect_one_queue(0, v, {{"bridge", "xbr0"}});
  ASSERT_NE(d, nullptr);
  ASSERT_TRUE(d->connected());
  EXPECT_EQ(d->port()->kernel_interface(), "vif7.0");
  auto l = ip_link(ns_, "vif7.0");
  ASSERT_FALSE(l.is_null());
  EXPECT_EQ(l.value("master", ""), "xbr0");
  EXPECT_TRUE(flag_up(l)) << l.dump();
  EXPECT_EQ(l.value("mtu", 0), 1400);
  EXPECT_EQ(link_->stats().attached, 1u);
  EXPECT_EQ(link_->stats().requests, 2u);  // GETLINK of the bridge, NEWLINK of the tap
  // An mtu key, on a second VIF.
  GuestVif* v1 = nullptr;
  ASSERT_NE(connect_one_queue(1, v1, {{"bridge", "xbr0"}, {"mtu", "1280"}}), nullptr);
  l = ip_link(ns_, "vif7.1");
  EXPECT_EQ(l.value("master", ""), "xbr0");
  EXPECT_EQ(l.value("mtu", 0), 1280);
  // The guest goes: the port and its interface with it, out of the bridge.
  ASSERT_NO_FATAL_FAILURE(close_vif(*v, 0));
  EXPECT_TRUE(ip_link(ns_, "vif7.0").is_null());
  EXPECT_FALSE(ip_link(ns_, "vif7.1").is_null());
}

}  // namespace
}  // namespace xenpath
